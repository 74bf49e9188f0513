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
from slurm.profile import COLLECTIVE_TIMEOUT_S

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


def _run_device(run_dir: Path) -> str:
    """The run's ``train.device``; ``auto`` when its config cannot be read (the worker
    then reports why, under the run's lock)."""
    from sagan.config import ConfigError, load_config

    try:
        return load_config(run_dir / "config.yaml").train.device
    except ConfigError:
        return "auto"


def _gpus_on_node(gpus_per_node: int | None) -> int:
    """The GPUs the job was given per node: the profile's, or for a cell pickled before
    it carried them, what SLURM says it allocated."""
    if gpus_per_node is not None:
        return gpus_per_node
    return int(os.environ.get("SLURM_GPUS_ON_NODE", "0") or 0)


def _join_process_group(gpus_per_node: int, device: str, timeout_s: float) -> None:
    """One process per task: NCCL between GPUs, gloo on CPUs, chosen from the job's
    resources so that every rank chooses the same. A collective waits ``timeout_s``
    (the profile's ``collective_timeout_s``) for a peer before it fails; rank 0's long
    lone work (an evaluation) is waited for with a heartbeat, which that bounds only
    when rank 0 is gone (:class:`sagan.training.distributed.OnMain`)."""
    import inspect

    import torch
    import torch.distributed as dist

    from sagan.training import distributed

    # Every GPU of the node stays visible (submitit's default would set
    # CUDA_VISIBLE_DEVICES to the local rank, a wrong GPU where SLURM had already
    # narrowed the list); sagan.training.distributed.local_device picks this task's.
    dist_env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    backend = distributed.backend_for(gpus_per_node, device)
    kwargs = {}
    where = "cpu"
    if backend == "nccl":
        count = torch.cuda.device_count()
        dev = distributed.local_device("cuda", os.environ, count)
        # Before the group exists: NCCL's communicator is bound to this device, and
        # never to cuda:0 on every rank.
        torch.cuda.set_device(dev)
        if "device_id" in inspect.signature(dist.init_process_group).parameters:
            kwargs["device_id"] = dev
        where = str(dev)
    distributed.join(backend, timeout_s, **kwargs)
    log.info(
        "rank %d of %d (local rank %d) via %s on %s at %s:%s, collective timeout %g s",
        dist_env.rank,
        dist_env.world_size,
        dist_env.local_rank,
        backend,
        where,
        dist_env.master_addr,
        dist_env.master_port,
        timeout_s,
    )


class TrainCell(submitit.helpers.Checkpointable):
    """Train one run directory in a SLURM job; requeue it when SLURM warns of the end."""

    def __init__(
        self,
        run_dir: str | Path,
        rescore: bool = False,
        gpus_per_node: int = 0,
        collective_timeout_s: float = COLLECTIVE_TIMEOUT_S,
    ):
        self.run_dir = str(run_dir)
        self.rescore = rescore
        self.gpus_per_node = gpus_per_node
        self.collective_timeout_s = collective_timeout_s

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
        if env.num_tasks > 1:
            gpus = _gpus_on_node(self.__dict__.get("gpus_per_node"))
            # A cell pickled before it carried a timeout gets the profile's default.
            timeout_s = self.__dict__.get("collective_timeout_s", COLLECTIVE_TIMEOUT_S)
            _join_process_group(gpus, _run_device(Path(self.run_dir)), timeout_s)
        try:
            rc = worker.run(Path(self.run_dir), stop=stop, rescore=self.rescore)
        finally:
            if env.num_tasks > 1:
                import torch.distributed as dist

                dist.destroy_process_group()
        if rc == EXIT_STOPPED:
            log.info("checkpointed; handing over to submitit to requeue")
            # Rank 0 requeues the job and exits; submitit leaves the other ranks alone.
            requeue(sig, None)
            if env.global_rank == 0:
                raise JobFailed("submitit did not requeue the job")  # pragma: no cover
            return "stopped"
        if rc == EXIT_BUSY:
            return "busy"
        if rc != 0:
            raise JobFailed(f"{self.run_dir}: the worker exited {rc}; see its status.json")
        return "done"
