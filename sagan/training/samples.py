"""What a run stores to show its G: the sample grids,
``RUN_DIR/samples/step-<step:09d>.png``, and the attention maps of the paper's
Figure 1, ``RUN_DIR/attention/step-<step:09d>.npz`` (laid out as
:mod:`sagan.nets.attnmaps` says). The trainer writes both; ``python -m
sagan.attnmaps`` writes the maps for any saved checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torchvision.utils import save_image

from sagan.nets.attnmaps import DEFAULT_QUERIES, attention_layers, attention_maps, to_arrays
from sagan.training.checkpoint import atomic_write_bytes


def write_attention_maps(
    run_dir: Path,
    G: nn.Module,
    z: torch.Tensor,
    y: torch.Tensor | None,
    step: int,
    queries: Sequence[tuple[float, float]] = DEFAULT_QUERIES,
) -> Path | None:
    """Write :func:`sagan.nets.attnmaps.attention_maps` of ``G(z, y)`` to
    ``RUN_DIR/attention/step-<step>.npz``.

    Written atomically (a temporary file in the same folder, renamed over the name).

    Returns:
        The path written, or ``None`` (nothing written) when G has no self-attention.
    """
    if not attention_layers(G):
        return None
    arrays = to_arrays(attention_maps(G, z, y, queries), step)
    out = Path(run_dir) / "attention"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"step-{step:09d}.npz"
    atomic_write_bytes(path, lambda f: np.savez_compressed(f, **arrays))
    return path


def write_sample_grid(run_dir: Path, images: torch.Tensor, step: int) -> Path:
    """Write G's ``[-1, 1]`` images as one square grid, ``RUN_DIR/samples/step-<step>.png``
    (a temporary file renamed over the name, so a reader never sees half a PNG)."""
    out = Path(run_dir) / "samples"
    out.mkdir(exist_ok=True)
    tmp = out / f".step-{step:09d}.png"
    save_image(images.add(1).div(2).clamp(0, 1), tmp, nrow=int(len(images) ** 0.5))
    path = out / f"step-{step:09d}.png"
    os.replace(tmp, path)
    return path
