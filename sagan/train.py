"""Train one SAGAN: ``python -m sagan.train CONFIG.yaml [key=value ...] --out RUN_DIR``.

:func:`train` is what every caller uses (this CLI, the ablation worker): it checks
that the data and weights are there, that a run being resumed was computed from the
same config and data, records the run's config and data identity, and hands the run
to :class:`sagan.training.loop.Trainer`, which owns the loop. A run directory that already
has checkpoints is resumed from the newest readable one; a resumed run ends with the
same weights as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any

from sagan.config import (
    Config,
    ConfigError,
    flatten,
    load_config,
    resume_conflicts,
    to_dict,
    to_yaml,
)
from sagan.data.folders import DataError
from sagan.data.identity import data_identity, describe
from sagan.metrics.errors import MetricsError
from sagan.training import distributed, rundir
from sagan.training.checkpoint import CheckpointError, atomic_write_text, load_latest
from sagan.training.loop import Trainer
from sagan.training.outcome import Diverged, Stopped, record_failure
from sagan.training.setup import pick_device

log = logging.getLogger("sagan.train")

__all__ = [
    "Diverged",
    "Stopped",
    "Trainer",
    "check_resume",
    "main",
    "pick_device",
    "preflight",
    "train",
]


def preflight(cfg: Config) -> None:
    """Fail now, not after hours of training, on what is missing at the start.

    Checks that the training data (and the evaluation's reference split) is on disk
    and that the Inception weights exist when the config will evaluate with them.

    Raises:
        DataError, MetricsError: the one clear message of the first problem found.
    """
    from sagan.data.datasets import check_available
    from sagan.metrics.protocol import INCEPTION_METRICS, REFERENCE_METRICS
    from sagan.metrics.weights import inception_weights_path

    check_available(cfg.data, "train")
    ev = cfg.eval
    will_eval = ev.metrics and (ev.every is not None or ev.at_end)
    if will_eval and any(m in INCEPTION_METRICS for m in ev.metrics):
        inception_weights_path(ev.inception_weights)
        if any(m in REFERENCE_METRICS for m in ev.metrics):
            check_available(cfg.data, ev.reference.split)
    # The DINOv2 file (1.2 GB) is the one most likely missing on a compute node: look
    # for it before training, for monitoring and for the scoring of record alike.
    for section in (ev if will_eval else None, cfg.final):
        if section is not None and "fd_dinov2" in section.metrics:
            from sagan.metrics.dinov2 import resolve_dinov2_weights

            resolve_dinov2_weights(section.dinov2_weights, section.dinov2_model)


def check_resume(run_dir: Path, cfg: Config, data_id: dict[str, Any]) -> None:
    """Refuse to continue a run whose computation-relevant settings or data changed.

    Compares with what the newest readable checkpoint was computed from (its config
    and data identity), not with ``config.yaml``, which the caller may have just
    rewritten. A run without a readable checkpoint has computed nothing to contradict;
    one whose checkpoints are all unreadable fails in :meth:`Trainer.restore`, where
    the failure is recorded.

    Raises:
        ConfigError: naming every differing key, or both data identities.
    """
    try:
        found = load_latest(run_dir, mmap=True)
    except CheckpointError:
        return
    if found is None:
        return
    state, path = found
    saved, new = state["config"], to_dict(cfg)
    diff = resume_conflicts(saved, new)
    if diff:
        a, b = flatten(saved), flatten(new)
        lines = "\n".join(f"  {k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff)
        raise ConfigError(
            f"{run_dir} holds a run with a different config (in {path.name}); refusing to "
            f"resume it.\n{lines}\nUse a new --out directory, or change only keys that do not "
            "alter what was computed (train.steps, logging, sampling, checkpoint and evaluation "
            "cadence)."
        )
    saved_id = state.get("data")
    if saved_id is None:
        log.warning("%s has no data identity; cannot check that the data is unchanged", path)
    elif saved_id["digest"] != data_id["digest"]:
        raise ConfigError(
            f"{run_dir} was trained on other data; refusing to resume it.\n"
            f"  {path.name} was computed on: {describe(saved_id)}\n"
            f"  data.root {cfg.data.root} holds: {describe(data_id)}\n"
            "Point data.root at the data the run started on, or use a new --out directory."
        )


def train(
    cfg: Config,
    run_dir: str | Path,
    progress: bool | None = None,
    stop: threading.Event | None = None,
) -> str:
    """Train (or resume) the run in ``run_dir``; returns its final state.

    A run already ``done`` at ``train.steps``, or ``diverged``, is left as it is. The
    caller owns ``run_dir`` for the duration (the ablation worker holds its lock).
    Setting ``stop`` (from a signal handler, say) makes the run checkpoint at the next
    step boundary (or abandon the evaluation in progress, owed still) and return
    ``interrupted``.

    Raises:
        ConfigError: the run's checkpoint was computed from another config or other
            data (nothing is written then); DataError, MetricsError: missing data or
            weights (before anything starts).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    status = rundir.read_status(run_dir)
    if status["state"] == "diverged" or (
        status["state"] == "done" and status.get("step", 0) >= cfg.train.steps
    ):
        return status["state"]
    preflight(cfg)
    data_id = data_identity(cfg.data)
    check_resume(run_dir, cfg, data_id)
    main = distributed.is_main()  # under DDP only rank 0 writes to the run directory
    if main:
        atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
        atomic_write_text(run_dir / "data.json", json.dumps(data_id, indent=2) + "\n")
    try:
        trainer = Trainer(cfg, run_dir, progress=progress, data_id=data_id, stop=stop)
    except BaseException as e:
        # Failed before its loop (data, device, models): say so on disk.
        if main:
            status["attempts"] = status.get("attempts", 0) + 1
            record_failure(status, e)
            rundir.write_status(run_dir, status)
        raise
    return trainer.run()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sagan.train", description=__doc__.splitlines()[0])
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=100")
    p.add_argument("--out", required=True, help="run directory (resumed if it has checkpoints)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        if args.dry_run:
            print(to_yaml(cfg), end="")
            return 0
        state = train(cfg, args.out)
    except (ConfigError, DataError, MetricsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:  # recorded in status.json as a failure
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.out}: {state}")
    return 0 if state in rundir.FINAL_STATES else 1


if __name__ == "__main__":
    sys.exit(main())
