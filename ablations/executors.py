"""Executors: how prepared run directories get trained.

The contract is small so that the SLURM executor can slot in beside the local one:
an executor receives :class:`Task` s (a prepared run directory each), trains them
with ``python -m ablations.worker RUN_DIR`` somewhere, and reports one
:class:`Outcome` per task. The run directory is the only channel: state comes back
through ``status.json``, never through the executor.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from ablations.store import EXIT_BUSY, EXIT_STOPPED, RunBusy, RunLock, write_job
from sagan.training import rundir
from sagan.training.outcome import record_failure


@dataclass
class Task:
    run_id: str
    run_dir: Path
    label: str  # the cell's levels, for people
    steps: int
    rescore: bool = False  # score under the final protocol even if the run says it was
    kind: str = "train"  # or "score": trained already, only its final scores are owed


@dataclass
class Outcome:
    task: Task
    state: str  # the run's status.json state after the attempt, or 'busy'
    returncode: int
    log: Path | None = None  # where the attempt's output went


LIVE = ("queued", "running", "requeued")


@dataclass
class JobView:
    """The job an executor recorded for a run (``RUN_DIR/job.json``), as it stands now."""

    job_id: str
    # queued, running, requeued (followed); completed, preempted, failed, cancelled,
    # timeout, vanished (ended)
    state: str
    slurm_state: str  # as the scheduler printed it ('CANCELLED by 0'), or ''
    exit_code: str  # 'EXIT:SIGNAL', or ''
    log: Path

    @property
    def live(self) -> bool:
        return self.state in LIVE

    def reason(self) -> str:
        """Why a job that is not live ended, in one line."""
        if self.state == "vanished":
            return f"job {self.job_id} is unknown to the scheduler (purged, or another cluster's)"
        return (
            f"job {self.job_id} ended {self.slurm_state or self.state} "
            f"(exit code {self.exit_code or '?'})"
        )


class SubmissionError(RuntimeError):
    """The scheduler refused the tasks; the message says what it said and which
    setting caused it. Nothing of the refused submission is left running."""


class Detached(Exception):
    """The executor stopped following its jobs (``--detach``, Ctrl-C); they go on."""


class Executor(ABC):
    name: str

    @abstractmethod
    def run(self, tasks: list[Task], follow: list[Task] = ()) -> list[Outcome]:
        """Train every task and follow the jobs already running ``follow``; return when
        all have finished (in any order).

        Raises:
            Detached: stopped following; the jobs run on (executors with a queue).
        """

    def settle(self, run_dirs: list[Path]) -> dict[Path, JobView]:
        """Record the end of each ended job of these runs in its status; return the
        live jobs, which own their runs. An executor without a queue has none."""
        return {}

    def jobs(self, run_dirs: list[Path]) -> dict[Path, JobView]:
        """The recorded job of each of these runs, with its state now."""
        return {}

    def close(self) -> None:
        """Release what the executor holds for this invocation (a submission lock)."""
        return None

    def preview(self, n_tasks: int) -> str:
        """What would be sent to start ``n_tasks`` tasks (a job script), for --dry-run."""
        return ""


class LocalExecutor(Executor):
    """Runs tasks as subprocesses on this machine, ``jobs`` at a time.

    Each subprocess gets ``cpu_count // jobs`` threads and writes its output to
    ``RUN_DIR/train.log``. One failing task does not stop the others.
    """

    name = "local"

    def __init__(self, jobs: int = 1, poll_s: float = 1.0, tty: bool | None = None):
        self.jobs = jobs
        self.poll_s = poll_s
        self.tty = sys.stderr.isatty() if tty is None else tty

    def _env(self) -> dict[str, str]:
        threads = str(max(1, (os.cpu_count() or 1) // self.jobs))
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("OMP_NUM_THREADS", threads)
        env.setdefault("MKL_NUM_THREADS", threads)
        return env

    def _launch(self, task: Task) -> subprocess.Popen:
        attempts = rundir.read_status(task.run_dir).get("attempts", 0)
        log = open(task.run_dir / "train.log", "a")  # noqa: SIM115 - closed when the process ends
        log.write(f"\n=== {rundir.now()} {task.label} ===\n")
        log.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "ablations.worker", str(task.run_dir)]
            + (["--rescore"] if task.rescore else []),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self._env(),
        )
        proc.log = log  # type: ignore[attr-defined]
        proc.attempts_before = attempts  # type: ignore[attr-defined]
        write_job(
            task.run_dir,
            {
                "executor": "local",
                "job_id": f"{os.uname().nodename}:{proc.pid}",
                "submitted": rundir.now(),
                "log": str(task.run_dir / "train.log"),
            },
        )
        return proc

    def run(self, tasks: list[Task], follow: list[Task] = ()) -> list[Outcome]:
        from ablations.display import Display

        pending = list(tasks)
        running: dict[int, tuple[Task, subprocess.Popen]] = {}
        outcomes: list[Outcome] = []
        display = Display(len(tasks), tty=self.tty)
        try:
            while pending or running:
                while pending and len(running) < self.jobs:
                    task = pending.pop(0)
                    proc = self._launch(task)
                    running[proc.pid] = (task, proc)
                    display.started(task)
                for pid, (task, proc) in list(running.items()):
                    rc = proc.poll()
                    if rc is None:
                        continue
                    proc.log.close()  # type: ignore[attr-defined]
                    del running[pid]
                    record_dead_worker(task.run_dir, rc, proc.attempts_before)  # type: ignore[attr-defined]
                    state = (
                        "busy"
                        if rc == EXIT_BUSY
                        else rundir.read_status(task.run_dir).get("state", "failed")
                    )
                    if rc not in (0, EXIT_BUSY) and state in ("running", "pending"):
                        state = "failed"  # died before it could say so
                    outcome = Outcome(task, state, rc, task.run_dir / "train.log")
                    outcomes.append(outcome)
                    display.finished(outcome)
                display.tick([t for t, _ in running.values()])
                if running:
                    time.sleep(self.poll_s)
        except KeyboardInterrupt:
            for _, proc in running.values():
                proc.terminate()
            for _, proc in running.values():
                proc.wait()
            raise
        finally:
            display.close()
        return outcomes


# Exit statuses of a worker that recorded its own end (or had none to record): done
# or diverged, a bad config or refused resume (the run left as it was), busy, stopped.
# A SIGINT is Ctrl-C of the whole command (the terminal sends it to every process of
# it), an interruption even when it catches a worker before its attempt began.
_WORKER_SAID = (0, 2, EXIT_BUSY, EXIT_STOPPED, -signal.SIGINT, 128 + signal.SIGINT)


def record_dead_worker(run_dir: Path, returncode: int, attempts_before: int) -> bool:
    """Record, under the run's lock, the failure of a worker that died without saying
    so (killed alone by a signal, the OOM killer, a segfault); whether one was recorded.

    Without this its status says ``running``, which reads as an interruption: the run
    would be resumed for ever, never counted against ``--max-attempts``. A worker that
    ended its own attempt (``failed``, ``interrupted``, ``done``) has said what happened,
    and a run claimed again since is another process's to record.
    """
    if returncode in _WORKER_SAID:
        return False
    try:
        with RunLock(run_dir):
            status = rundir.read_status(run_dir)
            started = status.get("attempts", 0) > attempts_before
            if started and status.get("state") not in ("running", "pending"):
                return False
            if not started:  # died before its attempt began: still an attempt
                status["attempts"] = attempts_before + 1
            log = Path(run_dir) / "train.log"
            how = _how_it_ended(returncode)
            record_failure(
                status,
                f"the worker {how} without recording its end; log: {log}",
                exit_code=returncode,
                log_tail=_tail(log),
            )
            rundir.write_status(run_dir, status)
            return True
    except RunBusy:
        return False


def _how_it_ended(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:  # a signal Python has no name for
        return f"killed by signal {-returncode}"


def _tail(path: Path, n: int = 10, max_bytes: int = 8192) -> list[str]:
    """The last ``n`` lines of a log, read from its end (logs of long runs are long)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-n:]
