"""The run store: ``OUT/<run_id>/`` per run, ``OUT/grid-<name>.json`` per grid.

A run directory is exactly what ``sagan.train`` writes. A run is *claimed* by
holding an exclusive ``flock`` on ``OUT/<run_id>/.lock`` for as long as it trains, so
two invocations on the same OUT never train the same run twice, and a crashed
holder releases its claim with its process. (flock works on local disks and on
Lustre/GPFS mounted with flock support; on plain NFS, mount with ``local_lock=none``.)
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablations.grid import Cell, Grid
from sagan import rundir
from sagan.checkpoint import atomic_write_text, list_checkpoints
from sagan.config import to_yaml

# Exit status of a worker whose run is claimed by another process.
EXIT_BUSY = 3


@dataclass
class RunState:
    state: str  # pending, running, interrupted, done, failed, diverged
    step: int
    steps: int
    attempts: int
    status: dict[str, Any]


class RunLock:
    """An exclusive, non-blocking claim on one run directory."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.uname().nodename} {os.getpid()}\n".encode())
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def is_locked(run_dir: Path) -> bool:
    lock = RunLock(run_dir)
    if not (Path(run_dir) / ".lock").exists():
        return False
    if lock.acquire():
        lock.release()
        return False
    return True


class RunStore:
    def __init__(self, out: str | Path):
        self.out = Path(out)

    def run_dir(self, run_id: str) -> Path:
        return self.out / run_id

    def state(self, cell: Cell) -> RunState:
        """The run's state; a ``running`` run whose claim is not held was interrupted."""
        d = self.run_dir(cell.run_id)
        status = rundir.read_status(d)
        state = status.get("state", "pending")
        steps = cell.config.train.steps
        if state in ("running", "interrupted", "pending"):
            if is_locked(d):
                state = "running"
            elif state == "running" or (state == "pending" and list_checkpoints(d)):
                state = "interrupted"
        if state == "done" and status.get("step", 0) < steps:
            state = "interrupted"  # done at fewer steps than this config asks for
        return RunState(
            state, int(status.get("step", 0)), steps, int(status.get("attempts", 0)), status
        )

    def prepare(self, cell: Cell) -> Path:
        """Create the run directory with its resolved config, ready for any executor."""
        d = self.run_dir(cell.run_id)
        d.mkdir(parents=True, exist_ok=True)
        # Same run id = same computation; only cadence and evaluation keys can differ,
        # and this invocation's choice of those wins.
        atomic_write_text(d / "config.yaml", to_yaml(cell.config))
        return d

    def discard(self, run_id: str) -> Path | None:
        """Move a run aside (``--force``): nothing is deleted."""
        d = self.run_dir(run_id)
        if not d.exists():
            return None
        trash = self.out / ".trash" / f"{run_id}-{time.strftime('%Y%m%d-%H%M%S')}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(d), str(trash))
        return trash

    def write_index(self, grid: Grid) -> Path:
        """``OUT/grid-<name>.json``: the cells of a grid, their levels and run ids."""
        self.out.mkdir(parents=True, exist_ok=True)
        index = {
            "name": grid.name,
            "grid_file": str(grid.path.resolve()),
            "written": rundir.now(),
            "axes": grid.axes,
            "cells": [{"run_id": c.run_id, "levels": c.levels} for c in grid.cells],
        }
        path = self.out / f"grid-{grid.name}.json"
        atomic_write_text(path, json.dumps(index, indent=2) + "\n")
        return path

    def latest_metrics(self, run_id: str) -> dict[str, Any]:
        """The newest evaluation record's metrics ({} if none yet)."""
        records = rundir.read_jsonl(self.run_dir(run_id) / "eval.jsonl")
        return records[-1]["metrics"] if records else {}
