"""Attention maps of a generator, as in Figure 1 of Zhang et al. (2019): the
explicit-weights path that reads G's self-attention blocks.

For a few query positions of a generated image, where each of G's self-attention
layers looks: row ``i`` of the attention matrix (:meth:`SelfAttention.weights`),
reshaped to the grid of keys (the feature map, 2x2 max-pooled in the ``official``
variant). :func:`attention_maps` computes them and :func:`to_arrays` lays them out as
the npz that :func:`sagan.training.samples.write_attention_maps` stores (the trainer, for
the final G) and ``python -m sagan.attnmaps RUN_DIR`` writes for a saved checkpoint.
The npz holds plain arrays only (``np.load(path, allow_pickle=False)`` reads it), for
K images, Q query points and L attention layers:

* ``step`` int64 []: the G step of the weights.
* ``images`` uint8 [K, 3, R, R]: the generated images, G's [-1, 1] mapped to [0, 255].
* ``labels`` int64 [K]: the class labels G was given (-1: none).
* ``queries`` float32 [Q, 2]: the query points asked for, (row, col) as fractions of
  the image in [0, 1).
* ``layers`` str [L]: the attention modules' names in G (``blocks.2``), in forward order.
* ``variants`` str [L]: each layer's ``model.attention_variant``.
* ``sizes`` int64 [L]: each layer's feature-map size H (= W).
* ``key_sizes`` int64 [L]: the size of its key grid, H/2 (``official``) or H (``paper``).
* ``query_pos`` int64 [L, Q, 2]: each query point's (row, col) in the layer's feature
  map, the position whose cell holds the point.
* ``query_frac`` float32 [L, Q, 2]: the centres of those positions, as image fractions.
* ``weights_<l>`` float32 [K, Q, Hk, Hk], one per layer ``l`` in 0..L-1: the attention
  weights of each query over the key grid (each [Hk, Hk] map sums to 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from sagan.nets.attention import SelfAttention

# (row, col) fractions of the image, spread out like the paper's Figure 1 points.
DEFAULT_QUERIES: tuple[tuple[float, float], ...] = (
    (0.25, 0.25),
    (0.25, 0.75),
    (0.55, 0.45),
    (0.8, 0.8),
)
# How many of the fixed sample images the trainer stores maps for.
N_IMAGES = 4


def attention_layers(G: nn.Module) -> list[tuple[str, SelfAttention]]:
    """``(name, module)`` of every self-attention block in ``G``, in forward order."""
    return [(name, m) for name, m in G.named_modules() if isinstance(m, SelfAttention)]


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    return images.float().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def attention_maps(
    G: nn.Module,
    z: torch.Tensor,
    y: torch.Tensor | None,
    queries: Sequence[tuple[float, float]] = DEFAULT_QUERIES,
) -> dict[str, Any]:
    """Generate ``G(z, y)`` and capture, at every attention layer, the weights of the
    query positions over the keys (the paper's Figure 1).

    G runs in eval mode (BN running statistics, spectral norm not stepping) under
    ``no_grad`` with autocast off; every module's mode is restored afterwards and no
    parameter, buffer or RNG state changes.

    Args:
        G: a generator (any module whose self-attention blocks are :class:`SelfAttention`).
        z: [K, z_dim] noise; moved to G's device.
        y: [K] class labels, or ``None``.
        queries: (row, col) points as fractions of the image, each in [0, 1); each maps
            to the feature-map position whose cell holds it.

    Returns:
        ``{"images": uint8 [K, 3, R, R], "labels": int64 [K] (-1: none),
        "queries": float32 [Q, 2], "layers": {name: layer}}`` with, per layer in
        forward order, ``{"variant", "size" (H), "key_size" (Hk), "query_pos": int64
        [Q, 2] (row, col in the H x H map), "query_frac": float32 [Q, 2] (their
        centres as image fractions), "weights": float32 [K, Q, Hk, Hk]}``; numpy arrays.

    Raises:
        ValueError: a query point outside [0, 1)^2.
    """
    q = np.asarray(queries, dtype=np.float64).reshape(-1, 2)
    if len(q) == 0 or ((q < 0) | (q >= 1)).any():
        raise ValueError(f"query points must be (row, col) fractions in [0, 1), got {queries}")
    found: dict[str, dict[str, Any]] = {}

    def capture(name: str):
        def hook(module: SelfAttention, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].float()
            h, w = x.shape[-2:]
            pos = np.minimum((q * (h, w)).astype(np.int64), (h - 1, w - 1))
            idx = torch.as_tensor(pos[:, 0] * w + pos[:, 1], device=x.device)
            hk, wk = (h // 2, w // 2) if module.pool else (h, w)
            # One image at a time: the full N x M matrix of a 64x64 map is 64 MB each.
            beta = torch.stack([module.weights(x[i : i + 1])[0, idx] for i in range(len(x))])
            found[name] = {
                "variant": module.variant,
                "size": int(h),
                "key_size": int(hk),
                "query_pos": pos,
                "query_frac": ((pos + 0.5) / (h, w)).astype(np.float32),
                "weights": beta.reshape(len(x), len(q), hk, wk).cpu().numpy(),
            }

        return hook

    modes = {m: m.training for m in G.modules()}
    device = next(G.parameters()).device
    handles = [m.register_forward_pre_hook(capture(n)) for n, m in attention_layers(G)]
    try:
        G.eval()
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            images = G(z.to(device), None if y is None else y.to(device))
    finally:
        for handle in handles:
            handle.remove()
        for m, mode in modes.items():
            m.training = mode
    labels = np.full(len(z), -1, np.int64) if y is None else y.cpu().numpy().astype(np.int64)
    return {
        "images": _to_uint8(images),
        "labels": labels,
        "queries": q.astype(np.float32),
        "layers": found,
    }


def to_arrays(maps: dict[str, Any], step: int) -> dict[str, np.ndarray]:
    """:func:`attention_maps`' result as the npz's flat arrays (see the module docstring)."""
    layers = list(maps["layers"].values())
    shape = (len(layers), len(maps["queries"]), 2)
    arrays = {
        "step": np.asarray(step, np.int64),
        "images": maps["images"],
        "labels": maps["labels"],
        "queries": maps["queries"],
        "layers": np.asarray(list(maps["layers"]), dtype=str),
        "variants": np.asarray([la["variant"] for la in layers], dtype=str),
        "sizes": np.asarray([la["size"] for la in layers], np.int64),
        "key_sizes": np.asarray([la["key_size"] for la in layers], np.int64),
        "query_pos": np.asarray([la["query_pos"] for la in layers], np.int64).reshape(shape),
        "query_frac": np.asarray([la["query_frac"] for la in layers], np.float32).reshape(shape),
    }
    for i, la in enumerate(layers):
        arrays[f"weights_{i}"] = la["weights"].astype(np.float32)
    return arrays
