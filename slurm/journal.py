"""The submission journal: no job that no ``job.json`` names, even after a crash.

Between sbatch accepting an array and every run directory's ``job.json`` naming its
job there is a window (a crash, a kill -9, a lost login node) after which the store
would show the cells without a job and the next invocation would submit them a
second time beside the first. So each array is first written down in
``STORE/.slurm/journal/TOKEN.json``: its run directories in array order, the job
name it is submitted under (which carries TOKEN, so the job can be found by name if
the crash came before its id was written down), and, the moment sbatch returns, its
job id. The entry is removed once every run's ``job.json`` names the job and the job
is released (arrays are submitted held, see :mod:`slurm.executor`).

The next invocation, under the store's submission lock, calls :func:`reconcile`
before it plans anything: an entry whose job exists gets its ``job.json`` records
written and its job released, so the cells are followed; an entry whose job neither
squeue nor sacct knows never reached the scheduler (or was cancelled while held) and
is dropped, and its cells are planned as usual.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ablations.store import read_job, write_job
from sagan.training import rundir
from sagan.training.checkpoint import atomic_write_text


@dataclass
class Entry:
    """One array on its way to the scheduler."""

    path: Path
    job_name: str
    run_dirs: list[str]
    record: dict[str, Any]  # what each run's job.json says, less the job's own fields
    started_at: float = field(default_factory=time.time)
    job_id: str | None = None  # the array's (base) id once sbatch has returned

    def save(self) -> None:
        data = {k: v for k, v in asdict(self).items() if k != "path"}
        atomic_write_text(self.path, json.dumps(data, indent=2) + "\n")


def journal_dir(folder: Path) -> Path:
    return Path(folder) / "journal"


def begin(folder: Path, job_name: str, run_dirs: list[Path], record: dict[str, Any]) -> Entry:
    """Write down an array before it is submitted; its job name gets a unique suffix
    (``NAME.TOKEN``), the name to submit it under."""
    token = uuid.uuid4().hex[:12]
    path = journal_dir(folder) / f"{token}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = Entry(path, f"{job_name}.{token}", [str(d) for d in run_dirs], record)
    entry.save()
    return entry


def entries(folder: Path) -> list[Entry]:
    """The arrays written down and not yet settled, oldest first; an unreadable entry
    (torn by a crash mid-write: atomic writes make that a leftover temporary) is skipped."""
    out = []
    for p in sorted(journal_dir(folder).glob("*.json")):
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        out.append(Entry(p, **data))
    return sorted(out, key=lambda e: e.started_at)


def job_ids(entry: Entry) -> list[str]:
    """Each run's job id, in array order: ``BASE_I``, or ``BASE`` for a single job
    (submitit submits one task as a plain job)."""
    n = len(entry.run_dirs)
    return [entry.job_id] if n == 1 else [f"{entry.job_id}_{i}" for i in range(n)]


def record_runs(entry: Entry) -> None:
    """Write each run's ``job.json`` naming this entry's job, except where a record
    already names it or a later submission's."""
    from submitit.core.utils import JobPaths

    folder = Path(entry.record["folder"])
    for i, (d, job_id) in enumerate(zip(entry.run_dirs, job_ids(entry), strict=True)):
        old = read_job(Path(d))
        if old and (old.get("job_id") == job_id or old.get("submitted_at", 0) > entry.started_at):
            continue
        write_job(
            Path(d),
            entry.record
            | {
                "executor": "slurm",
                "job_id": job_id,
                "array_job_id": entry.job_id,
                "array_index": i if len(entry.run_dirs) > 1 else None,
                "submitted": rundir.now(),
                "submitted_at": entry.started_at,
                "log": str(JobPaths(folder, job_id=job_id, task_id=0).stdout),
            },
        )


def release(job_ids_: list[str], timeout_s: float = 30.0) -> None:
    """Let held arrays run (``scontrol release``); a job that is no longer held, or
    no longer exists, is left as it is.

    Raises:
        RuntimeError: scontrol is missing or did not answer.
    """
    if not job_ids_:
        return
    try:
        subprocess.run(
            ["scontrol", "release", *job_ids_], capture_output=True, text=True, timeout=timeout_s
        )
    except FileNotFoundError:
        raise RuntimeError("scontrol not found: is this a SLURM cluster's login node?") from None
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"scontrol release did not answer within {timeout_s:.0f}s") from None


def find_job(entry: Entry, timeout_s: float = 30.0) -> str | None:
    """The id of the job submitted under this entry's name: squeue first (the
    controller knows a job the moment sbatch returns), then sacct from the entry's
    time on; None when neither knows it.

    Raises:
        RuntimeError: squeue or sacct failed or did not answer; nothing is guessed.
    """
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(entry.started_at - 60))
    for cmd in (
        ["squeue", "--noheader", "-r", "--name", entry.job_name, "-o", "%F"],
        ["sacct", "-X", "-n", "-P", "--name", entry.job_name, "-S", since, "-o", "JobID"],
    ):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except FileNotFoundError:
            raise RuntimeError(
                f"{cmd[0]} not found: is this a SLURM cluster's login node?"
            ) from None
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{cmd[0]} did not answer within {timeout_s:.0f}s") from None
        if out.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {out.stderr.strip() or out.returncode}")
        ids = {line.strip().split("_")[0] for line in out.stdout.splitlines() if line.strip()}
        if ids:
            return max(ids, key=int)
    return None


def reconcile(folder: Path, timeout_s: float = 30.0) -> list[str]:
    """Settle every entry a crashed (or failed) invocation left: record and release
    the jobs that exist, drop the rest. Returns one line per entry, for people.

    Raises:
        RuntimeError: the scheduler did not answer; the entries stay for next time.
    """
    lines = []
    for entry in entries(folder):
        if entry.job_id is None:
            entry.job_id = find_job(entry, timeout_s)
        if entry.job_id is None:
            entry.path.unlink(missing_ok=True)
            lines.append(f"submission {entry.job_name} never reached the scheduler; dropped")
            continue
        record_runs(entry)
        release([entry.job_id], timeout_s)
        entry.path.unlink(missing_ok=True)
        lines.append(
            f"job {entry.job_id} ({entry.job_name}, {len(entry.run_dirs)} cell(s)) was "
            "submitted by an invocation that did not record it; recorded now"
        )
    return lines
