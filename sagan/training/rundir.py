"""The files of one run directory and how they are written.

``RUN_DIR/`` holds ``config.yaml`` (the resolved config), ``data.json`` (the
identity of the training data), ``status.json`` (state, step, attempts, failures,
best and final metrics), ``metrics.jsonl`` (one line per logged
step), ``eval.jsonl`` (one record per evaluation, with its protocol), ``samples/``
and ``checkpoints/``. This is the contract the ablation store and the reports read.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

from sagan.training.checkpoint import atomic_write_text

STATES = ("pending", "running", "interrupted", "done", "failed", "diverged")
FINAL_STATES = ("done", "diverged")

log = logging.getLogger(__name__)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """The run's status; ``{'state': 'pending', ...}`` for a run never started."""
    path = os.path.join(run_dir, "status.json")
    try:
        with open(path) as f:
            text = f.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return {"state": "pending", "step": 0, "attempts": 0}
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        # Written atomically, so this only happens if someone edited it by hand.
        return {"state": "failed", "step": 0, "attempts": 0, "error": f"{path} is not valid JSON"}


def write_status(run_dir: Path, status: dict[str, Any]) -> None:
    status = dict(status, updated=now(), host=socket.gethostname())
    atomic_write_text(Path(run_dir) / "status.json", json.dumps(status, indent=2) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file, in order.

    A line that is not JSON (a torn write no append has cut yet, a hand edit) is
    skipped with a warning naming the file and line, so one bad line never costs the
    records around it.
    """
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    lines = [line for line in text.split("\n") if line.strip()]
    # One parse for the whole file when every line is one whole record (the common
    # case: a report of 10,000 runs reads 150,000 lines); line by line otherwise.
    try:
        records = json.loads("[" + ",".join(lines) + "]")
    except json.JSONDecodeError:
        records = None
    if (
        records is not None
        and len(records) == len(lines)
        and all(isinstance(r, dict) for r in records)
        and all(line.lstrip().startswith("{") for line in lines)
    ):
        return records
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if line.strip():
                log.warning("%s:%d: not a JSON record (a torn write?); skipped", path, i)
    return out


def _terminate_tail(fd: int) -> None:
    """Make the file end at a line boundary before an append.

    A crash mid-write (full disk, quota, node crash) leaves a last line without its
    newline; an append would glue the next record onto it and both would be lost. A
    tail that is a whole record (only the newline missing) is kept; any other is cut.
    """
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    # Look backwards for the last newline: the tail is one record, so a few reads.
    end, chunk = size, 4096
    start = 0
    while end > 0:
        lo = max(0, end - chunk)
        nl = os.pread(fd, end - lo, lo).rfind(b"\n")
        if nl >= 0:
            start = lo + nl + 1
            break
        end = lo
    tail = os.pread(fd, size - start, start)
    try:
        whole = isinstance(json.loads(tail), dict)
    except ValueError:  # JSONDecodeError, and UnicodeDecodeError of a cut character
        whole = False
    if whole:
        os.write(fd, b"\n")
    else:
        os.ftruncate(fd, start)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one line; the only way any JSON-lines file is appended to.

    A torn last line left by a crash is first cut (see :func:`_terminate_tail`), so the
    new record always starts a line of its own.
    """
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _terminate_tail(fd)
        data = (json.dumps(record) + "\n").encode()
        while data:  # a short write is rare on a regular file, but not impossible
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Drop records past ``max_step``: they are recomputed after a resume."""
    path = Path(path)
    if path.is_file():
        keep = [r for r in read_jsonl(path) if r.get("step", 0) <= max_step]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


# Direction of each metric: True when larger is better.
HIGHER_IS_BETTER = {
    "fid": False,
    "kid_mean": False,
    "is_mean": True,
    "precision": True,
    "recall": True,
    "consistency": True,
    "mirror": True,
    "swd": False,
    "fid_inf": False,
    "is_inf": True,
    "density": True,
    "coverage": True,
    "intra_fid": False,
    "fd_dinov2": False,
}


def update_best(status: dict[str, Any], record: dict[str, Any]) -> None:
    """Track, in ``status``, the best value of each metric over training, per protocol
    id (``status["best"][protocol_id][metric]``), and the latest record.

    Numbers made under different protocols are never compared. A non-finite value (a
    NaN FID of a collapsed G) is never best, and a best that is not finite (written by
    an older version) gives way to any finite value. A ``best`` written before protocol
    ids existed is kept under ``"unknown"``.
    """
    pid = record.get("protocol_id", "unknown")
    best_all = status.setdefault("best", {})
    if any(isinstance(v, dict) and "value" in v for v in best_all.values()):
        status["best"] = best_all = {"unknown": best_all}
    best = best_all.setdefault(pid, {})
    for name, value in record["metrics"].items():
        if name not in HIGHER_IS_BETTER or value is None or not math.isfinite(value):
            continue
        old = best.get(name)
        higher = HIGHER_IS_BETTER[name]
        if (
            old is None
            or not math.isfinite(old["value"])
            or (value > old["value"] if higher else value < old["value"])
        ):
            best[name] = {"value": value, "step": record["step"]}
    status["latest"] = {"step": record["step"], "metrics": record["metrics"], "protocol_id": pid}


def write_rank_error(run_dir: Path, rank: int, error: str) -> None:
    """``RUN_DIR/rank-R-error.json``: the error that ended rank R of a DDP run, with
    its time, written by that rank before it exits (so before its peers see it gone
    and fail on their own, with a collective's error)."""
    record = {"rank": rank, "error": error, "time": time.time(), "host": socket.gethostname()}
    atomic_write_text(Path(run_dir) / f"rank-{rank}-error.json", json.dumps(record) + "\n")


def first_rank_error(run_dir: str | Path, since: float) -> str | None:
    """The error of the rank that failed first at or after ``since`` (the attempt's
    start), as ``rank R: ERROR``; None if no rank recorded one."""
    found = []
    for path in Path(run_dir).glob("rank-*-error.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if record.get("time", 0) >= since:
            found.append(record)
    if not found:
        return None
    first = min(found, key=lambda r: r["time"])
    return f"rank {first['rank']}: {first['error']}"


def track_best_checkpoint(
    final: Any, status: dict[str, Any], record: dict[str, Any], kept: int | None = None
) -> int | None:
    """After ``record`` entered ``status["best"]``: if it is the best by ``final.best_by``,
    name its checkpoint in ``status["best_checkpoint"]`` (final scoring's ``best``).

    Returns the step whose checkpoint must stay out of rotation: ``record``'s when it
    is the new best, ``kept`` (the one before) otherwise. ``final`` is the config's
    ``final`` section; with none, or ``final.checkpoint: last``, nothing is kept.
    """
    if final is None or final.checkpoint == "last":
        return kept
    pid = record.get("protocol_id", "unknown")
    best = status["best"].get(pid, {}).get(final.best_by)
    if best is not None and best["step"] == record["step"]:
        status["best_checkpoint"] = {
            "step": record["step"],
            "metric": final.best_by,
            "value": best["value"],
            "protocol_id": pid,
        }
        return record["step"]
    return kept


def replay_evaluations(final: Any, run_dir: Path, status: dict[str, Any]) -> None:
    """Bring ``best``, ``latest`` and ``best_checkpoint`` in ``status`` up to date with
    the monitoring records of ``RUN_DIR/eval.jsonl``.

    A kill between an evaluation's record and the status update leaves the status
    without that step; evaluations are never redone, so without this the best
    checkpoint could be rotated away and ``final.checkpoint: best`` score another.
    Replaying every record in order gives what an unbroken run would have written.
    """
    for record in read_jsonl(Path(run_dir) / "eval.jsonl"):
        if record.get("origin", "train") == "train" and "metrics" in record:
            update_best(status, record)
            track_best_checkpoint(final, status, record)
