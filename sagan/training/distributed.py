"""The process group of a run trained on several devices (DDP), seen from one rank.

A run trains as one process (world size 1) unless ``torch.distributed`` was
initialized before it started (the SLURM executor does that for a job with several
tasks). The config's batch size is the global batch: each rank takes its slice of
every global batch of data and of noise, so the stream of examples does not depend
on the world size.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist

from sagan.config import ConfigError

# The process group's timeout when this module did not start it (torch's default for gloo).
DEFAULT_TIMEOUT_S = 1800.0
_timeout_s: float | None = None


def join(backend: str, timeout_s: float, **kwargs: Any) -> None:
    """``init_process_group`` (``env://``) with a collective timeout of ``timeout_s``
    seconds, which the groups made here (:class:`StopVote`, :class:`OnMain`) share."""
    global _timeout_s
    dist.init_process_group(
        backend=backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs
    )
    _timeout_s = float(timeout_s)


def timeout_s() -> float:
    """Seconds a collective waits for a peer before it fails: what :func:`join` was
    given, else torch's default."""
    return _timeout_s if _timeout_s is not None else DEFAULT_TIMEOUT_S


def _gloo_group(seconds: float | None = None):
    seconds = timeout_s() if seconds is None else seconds
    return dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=seconds))


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


class DeviceError(ConfigError):
    """This process cannot tell which GPU is its own; the message says what it saw."""


def local_device(name: str, env: Mapping[str, str], device_count: int) -> torch.device:
    """The device of this process: ``train.device`` resolved against what it can see.

    ``env`` is the process's environment and ``device_count`` the GPUs torch sees in
    it (after ``CUDA_VISIBLE_DEVICES``). Both launch layouts are right: one GPU
    visible per task (SLURM's ``--gpus-per-task``, or submitit's export, which sets
    ``CUDA_VISIBLE_DEVICES`` to the local rank) gives ``cuda:0``; every GPU of the
    node visible to every task gives ``cuda:LOCAL_RANK``. The local rank is
    ``LOCAL_RANK`` (torchrun, submitit), else ``SLURM_LOCALID``, else 0.

    Raises:
        DeviceError: ``cuda`` asked for with no GPU visible, or several GPUs visible
            but fewer than this node's tasks (each task would not get its own).
    """
    if name == "cpu":
        return torch.device("cpu")
    visible = env.get("CUDA_VISIBLE_DEVICES")
    seen = (
        f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "CUDA_VISIBLE_DEVICES unset"
    )
    if device_count == 0:
        if name == "auto":
            return torch.device("cpu")
        raise DeviceError(
            f"train.device: cuda was asked for but no CUDA device is visible ({seen})"
        )
    local_rank = int(env.get("LOCAL_RANK", env.get("SLURM_LOCALID", "0")))
    local_world = int(env.get("LOCAL_WORLD_SIZE", str(local_rank + 1)))
    if device_count == 1:
        return torch.device("cuda", 0)
    if device_count >= local_world and local_rank < device_count:
        return torch.device("cuda", local_rank)
    raise DeviceError(
        f"local rank {local_rank} of {local_world} tasks on this node sees {device_count} GPUs "
        f"({seen}): give each task one GPU, or every task all of them, with at least as "
        "many GPUs as tasks per node (slurm profile: tasks_per_node = gpus_per_node)"
    )


def backend_for(gpus_per_node: int, device: str = "auto") -> str:
    """The process group's backend from what the job was given, the same on every rank:
    NCCL when the job has GPUs and the run may use them, gloo otherwise. Never from a
    rank's own ``torch.cuda.is_available()``: a rank whose CUDA failed to start would
    pick gloo while the others pick NCCL, and every rank would wait for ever."""
    return "nccl" if gpus_per_node > 0 and device != "cpu" else "gloo"


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over the ranks (a new tensor; gloo has no AVG)."""
    if not active():
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / world_size()


def first_step(step: torch.Tensor) -> torch.Tensor:
    """The smallest non-negative ``step`` over the ranks (-1 when none is), in place."""
    if active():
        big = torch.iinfo(step.dtype).max
        step.copy_(torch.where(step < 0, big, step))
        dist.all_reduce(step, op=dist.ReduceOp.MIN)
        step.copy_(torch.where(step == big, -1, step))
    return step


class StopVote:
    """Whether any rank was asked to stop, agreed by every rank one step later, without
    making any rank wait for it within a step.

    Each call starts an all-reduce (MAX) of this rank's flag without waiting for it
    (``async_op``) and returns the result of the one started at the previous call, which
    every rank has started too by then (the step's gradient all-reduce lies between
    them). Every rank therefore stops at the same step, at most one step after the
    first rank was asked. The flags travel on a gloo group of their own, on the CPU: no
    device sync, and no place in the order of the step's NCCL collectives. Call it at
    the same steps on every rank; call :meth:`close` when done with it.
    """

    def __init__(self) -> None:
        self.group = _gloo_group() if active() else None
        self.pending: tuple[Any, torch.Tensor] | None = None

    def __call__(self, flag: bool) -> bool:
        """Whether the ranks agreed to stop (one process: ``flag`` itself)."""
        if not active():
            return flag
        agreed = self.close()
        if not agreed:
            t = torch.tensor([int(flag)], dtype=torch.int32)
            work = dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
            self.pending = (work, t)
        return agreed

    def close(self) -> bool:
        """Wait for the vote in flight, if any; whether it said stop."""
        if self.pending is None:
            return False
        work, t = self.pending
        self.pending = None
        work.wait()
        return bool(t.item())


class PeerFailed(RuntimeError):
    """Rank 0 failed in work the other ranks were waiting for; its own error is
    recorded by rank 0 (``rank-0-error.json``), this is only the others' reason to end."""


class OnMain:
    """Work that rank 0 does alone (an evaluation, a checkpoint write, samples) while
    the other ranks wait for it, however long it takes, with no wait longer than the
    collective timeout.

    A single collective would make the others fail once rank 0's work outlasts the
    timeout (a 50k-sample FID does). Instead rank 0 sends a heartbeat from a thread
    every quarter of the timeout while it works, then its result, on a gloo group of
    its own; the others wait for one message at a time. So a healthy rank 0 is waited
    for without end, and one that is gone or hung (no heartbeat) ends the others
    within the timeout: a dead process at once (its sockets close), a failure in the
    work as soon as it raises (:class:`PeerFailed`). Call :meth:`run` at the same
    points on every rank.
    """

    def __init__(self, wait_s: float | None = None) -> None:
        """``wait_s``: the timeout of one message (default :func:`timeout_s`)."""
        wait_s = timeout_s() if wait_s is None else wait_s
        self.group = _gloo_group(wait_s) if active() else None
        self.beat_s = wait_s / 4
        self._lost: list[BaseException] = []

    @property
    def lost(self) -> bool:
        """Whether a heartbeat failed (a peer is gone); rank 0's work may stop early."""
        return bool(self._lost)

    def _send(self, message: tuple[str, Any]) -> tuple[str, Any]:
        box = [message]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def run(self, work: Callable[[], Any]) -> Any:
        """``work()`` on rank 0, its (picklable) result on every rank.

        Raises:
            PeerFailed: on the other ranks, when ``work`` raised on rank 0 (which
                re-raises its own error); on rank 0, the error of a lost heartbeat.
        """
        if self.group is None:
            return work()
        if rank() != 0:
            while True:
                kind, value = self._send(("", None))
                if kind == "failed":
                    raise PeerFailed(f"rank 0 failed in work the others waited for: {value}")
                if kind == "done":
                    return value
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.beat_s):
                try:
                    self._send(("busy", None))
                except Exception as e:  # a peer is gone: the work may stop, then raise
                    self._lost.append(e)
                    return

        thread = threading.Thread(target=beat, name="sagan-onmain-heartbeat", daemon=True)
        thread.start()
        try:
            result = work()
        except BaseException as e:
            done.set()
            thread.join()
            if not self._lost:
                try:
                    self._send(("failed", f"{type(e).__name__}: {e}"))
                except Exception:
                    pass  # the peers are gone too; rank 0's own error is what counts
            raise
        done.set()
        thread.join()
        if self._lost:
            raise self._lost[0]
        self._send(("done", result))
        return result
