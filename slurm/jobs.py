"""Which SLURM job owns a run, and what state that job is in.

The submitter writes ``RUN_DIR/job.json`` when it submits a run (job id, array
index, submission time, log path; see :func:`ablations.store.write_job`), so the
store always knows which job owns a run, whoever asks and from wherever. States come from ``sacct`` (accounting), parsed by
submitit's own reader. ``sacct`` is called here with a timeout rather than through
submitit's watcher because the watcher waits forever on a job sacct does not know,
and every command that reads states must end.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from ablations.executors import JobView
from ablations.store import is_locked, read_job
from sagan.training import rundir
from sagan.training.checkpoint import list_checkpoints
from sagan.training.outcome import record_failure, record_interruption

# What uses up the profile's max_requeues, as submitit 1.5 decides it
# (submitit/core/job_environment.py, SignalHandler.has_timed_out): shown by
# ablations.status and said in docs/slurm.md.
REQUEUE_RULE = (
    "max_requeues counts timeouts only: submitit calls a signal a timeout when the job "
    "(since it or its requeue started) has run at least min(0.8 x time, time - 10 min), "
    "which is every signal when time <= 10 min; any earlier signal (a preemption, scancel "
    "--signal) requeues without counting. A timeout with none left is not requeued: the "
    "job ends FAILED and its run is recorded as failed."
)

# SLURM's states, as this suite names them. Only queued, running and requeued jobs
# (requeue-held included) are followed. PREEMPTED is an end: with PreemptMode=CANCEL
# nothing runs the job again, and a job SLURM does requeue shows PENDING or REQUEUED
# again (in squeue at once, see views). Its run is interrupted, not failed.
STATES = {
    "PENDING": "queued",
    "CONFIGURING": "queued",
    "RUNNING": "running",
    "COMPLETING": "running",
    "SUSPENDED": "running",
    "STOPPED": "running",
    "SIGNALING": "running",
    "STAGE_OUT": "running",
    "RESIZING": "running",
    "REQUEUED": "requeued",
    "REQUEUE_FED": "requeued",
    "REQUEUE_HOLD": "requeued",
    "PREEMPTED": "preempted",
    "COMPLETED": "completed",
    "CANCELLED": "cancelled",
    "TIMEOUT": "timeout",
    "FAILED": "failed",
    "NODE_FAIL": "failed",
    "OUT_OF_MEMORY": "failed",
    "BOOT_FAIL": "failed",
    "DEADLINE": "failed",
    "REVOKED": "failed",
}


def sacct(job_ids: list[str], timeout_s: float = 30.0) -> dict[str, dict[str, str]]:
    """sacct's row for each job (``123_4`` for array tasks); a job sacct lacks is absent.

    Raises:
        RuntimeError: sacct is missing, failed, or did not answer within ``timeout_s``.
    """
    from submitit.slurm.slurm import SlurmInfoWatcher

    if not job_ids:
        return {}
    cmd = ["sacct", "--parsable2", "-o", "JobID,State,ExitCode,Reason"]
    for base in sorted({j.split("_")[0] for j in job_ids}):
        cmd += ["-j", base]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=True)
    except FileNotFoundError:
        raise RuntimeError("sacct not found: is this a SLURM cluster's login node?") from None
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"sacct did not answer within {timeout_s:.0f}s") from None
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"sacct failed: {e.stderr.strip() or e}") from None
    return SlurmInfoWatcher().read_info(out.stdout)


def squeue(job_ids: list[str], timeout_s: float = 30.0) -> dict[str, str]:
    """The controller's state of each of these jobs it still holds (``123_4`` for
    array tasks); a job squeue does not list is absent.

    Raises:
        RuntimeError: squeue is missing, failed, or did not answer within ``timeout_s``.
    """
    if not job_ids:
        return {}
    bases = sorted({j.split("_")[0] for j in job_ids})
    # -r: one line per array task, not the compressed 123_[4-7] of pending ones.
    cmd = ["squeue", "--noheader", "-r", "-o", "%i|%T", "-j", ",".join(bases)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise RuntimeError("squeue not found: is this a SLURM cluster's login node?") from None
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"squeue did not answer within {timeout_s:.0f}s") from None
    if out.returncode != 0:
        if "Invalid job id" in out.stderr:
            return {}  # none of them is held any more: the one answer that says so
        raise RuntimeError(f"squeue failed: {out.stderr.strip() or out.returncode}")
    found = {}
    for line in out.stdout.splitlines():
        job_id, sep, state = line.strip().partition("|")
        if sep:
            found[job_id] = state
    return found


def views(
    run_dirs: list[Path], grace_s: float = 120.0, timeout_s: float = 30.0
) -> dict[Path, JobView]:
    """The job of each run that has a job record, with its state now.

    A job sacct does not know, or knows as preempted, is looked up in squeue
    (accounting lags the controller, and slurmdbd restarts): one squeue holds is as
    squeue says. A job neither knows is ``queued`` for ``grace_s`` after its
    submission and ``vanished`` after that.

    Raises:
        RuntimeError: sacct or squeue did not answer; no state is guessed.
    """
    records = {Path(d): r for d in run_dirs if (r := read_job(d)) and r.get("executor") == "slurm"}
    rows = sacct([r["job_id"] for r in records.values()], timeout_s)
    unsure = [
        r["job_id"]
        for r in records.values()
        if (row := rows.get(r["job_id"])) is None or _state(row.get("State", "")) == "preempted"
    ]
    held = squeue(unsure, timeout_s)
    out = {}
    for d, r in records.items():
        row = rows.get(r["job_id"])
        if r["job_id"] in held:
            raw, code = held[r["job_id"]], row.get("ExitCode", "") if row else ""
            state = _state(raw)
        elif row is None:
            young = time.time() - r.get("submitted_at", 0) < grace_s
            state, raw, code = ("queued" if young else "vanished"), "", ""
        else:
            raw, code = row.get("State", ""), row.get("ExitCode", "")
            state = _state(raw)
        out[d] = JobView(r["job_id"], state, raw, code, Path(r["log"]))
    return out


def _state(raw: str) -> str:
    """This suite's name for a state as sacct or squeue prints it (``CANCELLED by 0``)."""
    return STATES.get(raw.split(" ")[0], "failed")


def settle(run_dir: Path, job: JobView) -> str:
    """Bring a run's status in line with its ended job; returns the run's state.

    A job SLURM preempted or timed out (killed before it could stop at a checkpoint)
    leaves its run interrupted: resumable from its newest checkpoint, and the next
    invocation submits it again; but a second such end with the same newest
    checkpoint is a failure (:func:`sagan.training.outcome.record_interruption`). A job that
    ended otherwise while its run was neither done nor diverged nor stopped at a
    checkpoint (killed, cancelled, out of memory, given up after ``max_requeues``) is
    a failure: it is recorded in ``status.json`` with the job's state, exit code and
    log, once. A run whose job completed keeps what the run itself wrote.
    """
    if is_locked(run_dir):
        return "running"  # trained by another process now, whatever this job did
    status = rundir.read_status(run_dir)
    state = status.get("state", "pending")
    if job.live or state in rundir.FINAL_STATES or state == "failed":
        return state
    if job.state == "completed" and state == "interrupted":
        return state  # stopped at a checkpoint; resumable
    if job.state in ("preempted", "timeout"):
        # Not requeued by SLURM: resumable from its newest checkpoint. A run the loop
        # stopped itself ("interrupted") has recorded that interruption already.
        if state == "running":
            found = list_checkpoints(run_dir)
            state = record_interruption(
                status,
                found[0][0] if found else 0,
                slurm_state=job.slurm_state or job.state,
                settled_job=job.job_id,
            )
            if state == "failed":
                status["error"] += f" ({job.reason()}; log: {job.log})"
            rundir.write_status(run_dir, status)
        return state
    if status.get("settled_job") == job.job_id:
        return state
    # A DDP rank that failed first (srun then ended its peers before they could say).
    first = rundir.first_rank_error(run_dir, status.get("attempt_started", float("inf")))
    record_failure(
        status,
        f"{first + '; ' if first else ''}{job.reason()}; log: {job.log}",
        slurm_state=job.slurm_state or job.state,
        settled_job=job.job_id,
    )
    rundir.write_status(run_dir, status)
    return "failed"
