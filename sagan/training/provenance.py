"""What code and machine made a run: one ``env.jsonl`` line per attempt.

A run may be trained over several attempts on different machines (a SLURM requeue
lands wherever the scheduler puts it), so each attempt appends what it ran with: the
project's git commit (and whether the tree had uncommitted changes), the versions of
the packages that change numbers, the host, the device and the world size. Reports
read it for their provenance section.
"""

from __future__ import annotations

import platform
import socket
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]


@cache
def code_version() -> dict[str, Any]:
    """``{"commit", "dirty"}`` of the checkout this package runs from; ``commit`` is
    ``"unknown"`` outside a git checkout (an installed wheel)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "--short=12", "HEAD")
    if commit is None:
        return {"commit": "unknown", "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def versions() -> dict[str, str]:
    """Versions of Python and of the packages a number depends on."""
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("torchvision", "torch_fidelity", "numpy"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "not installed"
    return out


def environment(device: torch.device | str, world_size: int = 1) -> dict[str, Any]:
    """The record an attempt appends to ``env.jsonl``."""
    from sagan.training.machine import cpu_model

    device = torch.device(device)
    info: dict[str, Any] = {
        **code_version(),
        **versions(),
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "device": str(device),
        "world_size": world_size,
    }
    if world_size > 1:
        from sagan.training import distributed

        # How long a collective waits for a peer (the SLURM profile's collective_timeout_s).
        info["collective_timeout_s"] = distributed.timeout_s()
    if device.type == "cuda":
        from sagan.training.precision import tf32_state

        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        # What training runs under (train.tf32, train.cudnn_benchmark), as set now.
        info["tf32"] = tf32_state()
        info["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return info


__all__ = ["code_version", "environment", "versions"]
