"""What a SLURM job runs: :class:`TrainCell`, one prepared run directory.

submitit pickles a ``TrainCell`` and runs it in the job. Before a time limit or a
preemption SLURM sends the profile's signal (USR2 by default), and submitit's
handler would checkpoint and requeue at once, mid-step. This is the one place that
works around it: the cell puts its own handler in front, which only asks the
training loop to stop; the loop writes a checkpoint at the next step boundary and
returns, and only then is submitit's handler called, which requeues the job with the
same pickled call (:class:`submitit.helpers.Checkpointable`). The requeued job finds
the newest checkpoint in the run directory when it starts, never a path fixed at
submission.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path

import submitit

from ablations import worker
from ablations.store import EXIT_BUSY, EXIT_STOPPED

log = logging.getLogger("slurm.job")


class JobFailed(RuntimeError):
    """The run did not end done or diverged; its status.json says why."""


def _log_to_stdout() -> None:
    """The suite's loggers to the job's log, once (submitit's logger has its own handler)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    for name in ("sagan", "ablations", "slurm"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)


class TrainCell(submitit.helpers.Checkpointable):
    """Train one run directory in a SLURM job; requeue it when SLURM warns of the end."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = str(run_dir)

    def __call__(self) -> str:
        _log_to_stdout()
        env = submitit.JobEnvironment()
        sig = signal.Signals["SIG" + env.USR_SIG]
        requeue = signal.getsignal(sig)  # submitit's: checkpoint(), scontrol requeue, exit
        stop = threading.Event()

        def ask_to_stop(signum, frame):
            log.info("got %s: checkpointing at the next step boundary", sig.name)
            stop.set()

        signal.signal(sig, ask_to_stop)
        log.info(
            "job %s (restart %s) on %s: %s",
            env.job_id,
            os.environ.get("SLURM_RESTART_COUNT", "0"),
            env.hostname,
            self.run_dir,
        )
        rc = worker.run(Path(self.run_dir), stop=stop)
        if rc == EXIT_STOPPED:
            log.info("checkpointed; handing over to submitit to requeue")
            requeue(sig, None)  # exits the process once the job is requeued
            raise JobFailed("submitit did not requeue the job")  # pragma: no cover
        if rc == EXIT_BUSY:
            return "busy"
        if rc != 0:
            raise JobFailed(f"{self.run_dir}: the worker exited {rc}; see its status.json")
        return "done"
