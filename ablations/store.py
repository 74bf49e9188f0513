"""The run store: ``OUT/<run_id>/`` per run, ``OUT/grid-<name>.json`` per grid.

A run directory is exactly what ``sagan.train`` writes. A run is *claimed* by
holding an exclusive lock on ``OUT/<run_id>/.lock`` for as long as it trains, so two
invocations on the same OUT never train the same run twice, and a crashed holder
releases its claim with its process. The lock file holds ``HOST PID`` of the holder,
for messages.

The lock is an open-file-description lock (``F_OFD_SETLK``, Linux 3.15+) rather than
``flock``: it can be *probed* (``F_OFD_GETLK``) without being taken, so planning a
grid never makes a worker that starts at that moment find its run busy, and on NFS
it is a real byte-range lock on the server. Lustre and GPFS need their usual
``flock`` mount option for any lock. Elsewhere (macOS) it falls back to ``flock``,
probed by taking it for an instant.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablations.grid import Cell, Grid
from sagan.config import to_yaml
from sagan.training import rundir
from sagan.training.checkpoint import atomic_write_text, list_checkpoints

# Exit status of a worker whose run is claimed by another process.
EXIT_BUSY = 3
# Exit status of a worker stopped on request at a step boundary, checkpointed.
EXIT_STOPPED = 4

_OFD = hasattr(fcntl, "F_OFD_SETLK")


class RunBusy(Exception):
    """The run is claimed by another process; the message names it and the holder."""


@dataclass
class RunState:
    state: str  # pending, running, interrupted, done, failed, diverged
    step: int
    steps: int
    attempts: int  # every start, preemptions and requeues included
    failures: int  # starts that ended failed: what --max-attempts limits
    status: dict[str, Any]


def _flock_struct(kind: int) -> bytes:
    # struct flock {short l_type; short l_whence; off_t l_start; off_t l_len; pid_t l_pid;}
    # over the whole file (l_len 0), padded as the C struct is.
    return struct.pack("@hhqqi4x", kind, os.SEEK_SET, 0, 0, 0)


def _try_lock(fd: int) -> bool:
    try:
        if _OFD:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock_struct(fcntl.F_WRLCK))
        else:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):
        return False
    return True


def _unlock(fd: int) -> None:
    if _OFD:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock_struct(fcntl.F_UNLCK))
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)


class RunLock:
    """An exclusive, non-blocking claim on one run directory."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.fd: int | None = None

    def acquire(self, tries: int = 10) -> bool:
        """Take the claim if no other process holds it; whether it was taken."""
        for _ in range(tries):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                os.close(fd)
                return False
            if _same_file(fd, self.path):
                break
            # The run was moved aside (--force) between our open and our lock: the
            # lock is on the moved file and claims nothing. Claim what is there now.
            _unlock(fd)
            os.close(fd)
        else:
            raise RuntimeError(
                f"{self.path}: replaced {tries} times while being locked; "
                "is something moving this run directory in a loop?"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.uname().nodename} {os.getpid()}\n".encode(), 0)
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            _unlock(self.fd)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        if not self.acquire():
            raise RunBusy(f"{self.path.parent} is being trained by {holder(self.path.parent)}")
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (not moved or replaced since opened)."""
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)


def is_locked(run_dir: Path) -> bool:
    """Whether another process holds the run's claim; never takes it (with OFD locks)."""
    path = Path(run_dir) / ".lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        if _OFD:
            got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock_struct(fcntl.F_WRLCK))
            return struct.unpack("@hhqqi4x", got)[0] != fcntl.F_UNLCK
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def holder(run_dir: Path) -> str:
    """``host HOST, pid PID``: who holds (or last held) the run's claim."""
    try:
        host, pid = (Path(run_dir) / ".lock").read_text().split()
    except (OSError, ValueError):
        return "another process"
    return f"host {host}, pid {pid}"


JOB_FILE = "job.json"


def write_job(run_dir: Path, record: dict[str, Any]) -> None:
    """Record which job (of which executor) owns a run: ``RUN_DIR/job.json``.

    Written by the executor when it starts or submits the run; at least
    ``executor``, ``job_id`` and ``log``.
    """
    atomic_write_text(Path(run_dir) / JOB_FILE, json.dumps(record, indent=2) + "\n")


def read_job(run_dir: Path) -> dict[str, Any] | None:
    """The run's job record, or None if no executor recorded one."""
    try:
        return json.loads((Path(run_dir) / JOB_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


class RunStore:
    def __init__(self, out: str | Path):
        self.out = Path(out)

    def run_dir(self, run_id: str) -> Path:
        return self.out / run_id

    def state(self, cell: Cell) -> RunState:
        """The run's state as this store sees it now.

        A run whose claim is held is ``running``, whatever its status says (a done run
        being extended, a failed one being retried elsewhere); a ``running`` run whose
        claim is not held was interrupted.
        """
        d = self.run_dir(cell.run_id)
        status = rundir.read_status(d)
        state = status.get("state", "pending")
        steps = cell.config.train.steps
        if is_locked(d):
            state = "running"
        elif state == "running" or (state == "pending" and list_checkpoints(d)):
            state = "interrupted"
        elif state == "done" and status.get("step", 0) < steps:
            state = "interrupted"  # done at fewer steps than this config asks for
        attempts = int(status.get("attempts", 0))
        # Statuses written before the two counters were split counted every start.
        failed = status.get("state") == "failed"
        failures = int(status.get("failures", attempts if failed else 0))
        return RunState(state, int(status.get("step", 0)), steps, attempts, failures, status)

    def prepare(self, cell: Cell) -> Path:
        """Create the run directory with its resolved config, ready for any executor.

        ``config.yaml`` is written under the run's lock, so a run being trained
        never has its config rewritten under it. Same run id, same computation: only
        cadence and evaluation keys can differ, and this invocation's choice wins.

        Raises:
            RunBusy: another process is training the run.
        """
        d = self.run_dir(cell.run_id)
        with RunLock(d):
            atomic_write_text(d / "config.yaml", to_yaml(cell.config))
        return d

    def discard(self, run_id: str) -> Path | None:
        """Move a run aside (``--force``): nothing is deleted.

        Raises:
            RunBusy: the run is being trained; it is left where it is.
        """
        d = self.run_dir(run_id)
        if not d.exists():
            return None
        trash = self.out / ".trash" / f"{run_id}-{time.strftime('%Y%m%d-%H%M%S')}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        # Held while moving: a worker starting now finds the run busy, or starts after
        # the move on a fresh directory.
        with RunLock(d):
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
            "report": grid.spec.report.model_dump(exclude_defaults=True),
        }
        path = self.out / f"grid-{grid.name}.json"
        atomic_write_text(path, json.dumps(index, indent=2) + "\n")
        return path

    def latest_metrics(self, run_id: str) -> dict[str, Any]:
        """The newest evaluation record's metrics ({} if none yet)."""
        records = rundir.read_jsonl(self.run_dir(run_id) / "eval.jsonl")
        return records[-1]["metrics"] if records else {}
