"""What a process sets up before it trains or samples: its device, its seeds, and the
fixed inputs of a run's sample grids."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from sagan.config import Config
from sagan.training import distributed


def pick_device(name: str) -> torch.device:
    """``train.device`` for this process (its own GPU under DDP):
    :func:`sagan.training.distributed.local_device` with this process's environment."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return distributed.local_device(name, os.environ, count)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def sample_inputs(
    cfg: Config, num_classes: int, n: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed z and labels of a run's sample grids, on the CPU.

    Drawn from a generator of their own, seeded by ``train.seed``, so that they never
    move the training noise. Returns ``n`` (default ``train.n_samples``) rows; the
    first ``min(n, train.n_samples)`` are those of the sample grids whatever ``n`` is.
    """
    tc = cfg.train
    n = tc.n_samples if n is None else n
    g = torch.Generator().manual_seed(tc.seed + 7919)
    z = torch.randn(max(n, tc.n_samples), cfg.model.z_dim, generator=g)[:n]
    return z, torch.arange(n) % max(num_classes, 1)
