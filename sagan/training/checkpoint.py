"""Crash-safe checkpoints: atomic writes, newest-valid loading, full RNG state.

A checkpoint is ``RUN_DIR/checkpoints/ckpt-<step:09d>.pt``. It is written to a
temporary file in the same directory, fsynced, then renamed over its final name, so a
kill at any moment leaves either the old set or the new set, never half a file
under a final name. Loading uses ``weights_only=True``: everything saved is tensors
and plain Python containers.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")


def ckpt_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` for every checkpoint file, newest first."""
    d = ckpt_dir(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, fsync, rename over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save_checkpoint(
    run_dir: Path,
    step: int,
    state: dict[str, Any],
    keep: int = 2,
    protect: Collection[int] = (),
) -> Path:
    """Write ``state`` as the checkpoint of ``step`` and delete the older ones but the
    ``keep - 1`` newest that load and those of the steps in ``protect`` (the best one,
    for final scoring). The checkpoint just written is always kept."""
    d = ckpt_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    for stale in d.glob(".ckpt-*.tmp*"):  # left by a kill during an earlier write
        stale.unlink(missing_ok=True)
    path = d / f"ckpt-{step:09d}.pt"
    atomic_write_bytes(path, lambda f: torch.save(state, f))
    # Counting by step alone, an unreadable file above this step (an earlier attempt's,
    # which is why the run resumed below it) would push out the one just written. Such
    # a file is left alone: training overwrites it when it reaches that step again.
    kept = 1
    for old_step, old in list_checkpoints(run_dir):
        if old_step >= step:
            continue
        if kept < keep and _loads(old):
            kept += 1
        elif old_step not in protect:
            old.unlink(missing_ok=True)
    return path


def _loads(path: Path) -> bool:
    """Whether a checkpoint loads; mapped, not read, so a rotation stays cheap."""
    try:
        load_checkpoint(path, mmap=True)
    except CheckpointError:
        return False
    return True


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing or cannot be read, phrased for a person."""


def load_checkpoint(path: Path, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint onto the CPU (``weights_only``); the caller moves tensors to a device.

    Loading to the CPU keeps RNG states loadable (``torch.set_rng_state`` takes only a
    CPU byte tensor) whatever device wrote or reads the file. ``mmap=True`` maps the
    file instead of reading it, for a cheap look at its plain entries (config, step).

    Raises:
        CheckpointError: the file is missing, truncated or not a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - any failure to load means "not a usable checkpoint"
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path}: not a sagan-bench checkpoint (no 'step' entry)")
    return state


def load_latest(run_dir: Path, mmap: bool = False) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint that loads (onto the CPU); a corrupt one is reported and skipped.

    Returns ``None`` when the run has no checkpoint at all.

    Raises:
        CheckpointError: when checkpoints exist but none of them loads.
    """
    found = list_checkpoints(run_dir)
    errors = []
    for _, path in found:
        try:
            state = load_checkpoint(path, mmap=mmap)
            return state, path
        except CheckpointError as e:
            log.warning("checkpoint %s is unreadable (%s); trying the previous one", path.name, e)
            errors.append(str(e))
    if found:
        raise CheckpointError(
            f"no readable checkpoint in {ckpt_dir(run_dir)}:\n  " + "\n  ".join(errors)
        )
    return None


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """The process-wide RNGs, in a form ``weights_only`` loading accepts.

    The training loop draws its noise from a generator of its own; these are saved
    too, for anything else that draws from them. On CUDA only ``device``'s state is
    saved, so a run can resume on a node with a different number of GPUs.
    """
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` saved (states loaded onto the CPU)."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    cuda = state.get("cuda")
    if isinstance(cuda, torch.Tensor) and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda.cpu(), device)
