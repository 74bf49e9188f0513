"""The process group of a run trained on several devices (DDP), seen from one rank.

A run trains as one process (world size 1) unless ``torch.distributed`` was
initialized before it started (the SLURM executor does that for a job with several
tasks). The config's batch size is the global batch: each rank takes its slice of
every global batch of data and of noise, so the stream of examples does not depend
on the world size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

from sagan.config import ConfigError


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
        self.group = dist.new_group(backend="gloo") if active() else None
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
