"""Glue between images and torch-fidelity: the extractor, features, and the metric maths.

Every number comes from torch-fidelity's own functions: ``create_feature_extractor``
(``inception-v3-compat``, whose forward does the TF1-compatible bilinear resize to
299), ``fid_features_to_statistics`` / ``fid_statistics_to_metric``,
``isc_features_to_metric``, ``kid_features_to_metric`` and ``prc_features_to_metric``.
This module only moves uint8 batches to the extractor and features to those functions.

Why not ``calculate_metrics`` on a wrapped generator: torch-fidelity's generator path
(``utils.get_featuresdict_from_generative_model``) draws class labels with ``np.int``,
removed from NumPy, so it fails for conditional generators; it also draws noise from
NumPy's RNG in its own way. We sample the generator ourselves (``sagan.metrics.evaluate``)
and feed uint8 images straight to the extractor: that is the one workaround.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch_fidelity.metric_fid import (
    KEY_METRIC_FID,
    fid_features_to_statistics,
    fid_statistics_to_metric,
)
from torch_fidelity.metric_isc import (
    KEY_METRIC_ISC_MEAN,
    KEY_METRIC_ISC_STD,
    isc_features_to_metric,
)
from torch_fidelity.metric_kid import (
    KEY_METRIC_KID_MEAN,
    KEY_METRIC_KID_STD,
    kid_features_to_metric,
)
from torch_fidelity.metric_prc import (
    KEY_METRIC_PRECISION,
    KEY_METRIC_RECALL,
    prc_features_to_metric,
)
from torch_fidelity.utils import create_feature_extractor

from sagan.metrics.moments import moments_of
from sagan.metrics.protocol import FEATURE_LAYERS, fidelity_kwargs
from sagan.metrics.weights import EXTRACTOR, WeightsInfo

# One extractor serves every metric: pool features for FID/KID/PRC, logits for IS.
LAYERS = ("2048", "logits_unbiased")


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] to uint8 [0, 255] (round half up), the dtype torch-fidelity takes.

    uint8 input is returned unchanged.
    """
    if images.dtype == torch.uint8:
        return images
    return (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)


@lru_cache(maxsize=1)
def _extractor(path: str, sha256: str, device: str) -> torch.nn.Module:
    del sha256  # part of the cache key only: a replaced file at the same path reloads
    fe = create_feature_extractor(
        EXTRACTOR, list(LAYERS), cuda=False, feature_extractor_weights_path=path, verbose=False
    )
    return fe.to(device)


def feature_extractor(weights: WeightsInfo, device: torch.device | str) -> torch.nn.Module:
    """torch-fidelity's ``inception-v3-compat`` with the given weights, on ``device``.

    Always given an explicit weights path, so it never downloads. The last one built
    is kept, so periodic evaluation does not reload the weights each time.
    """
    return _extractor(str(weights.path), weights.sha256, str(torch.device(device)))


@contextlib.contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """Full float32 matmuls and convolutions (no TF32, no autocast) inside the block.

    PyTorch lets cuDNN convolutions run in TF32 by default on Ampere and later, and a
    training script may enable it for matmuls too. TF32 keeps 10 mantissa bits, so
    features (and FID) would depend on the GPU generation. Restored on exit.
    """
    if device.type != "cuda":
        with torch.autocast(device.type, enabled=False):
            yield
        return
    from sagan.training.precision import exact_fp32

    # Through sagan.training.precision: after train.tf32 set the flags with torch's current
    # API, reading the legacy allow_tf32 flags here would raise.
    with exact_fp32(), torch.autocast("cuda", enabled=False):
        yield


class FeatureAccumulator:
    """Collects the extractor's features batch by batch, on the CPU."""

    def __init__(self, extractor: torch.nn.Module, device: torch.device | str):
        self.extractor = extractor
        self.device = torch.device(device)
        self._parts: dict[str, list[torch.Tensor]] = {
            name: [] for name in extractor.get_requested_features_list()
        }

    def add(self, images: torch.Tensor) -> None:
        """Extract and keep the features of a uint8 batch ``[B, 3, H, W]``."""
        with torch.no_grad(), exact_float32(self.device):
            out = self.extractor(to_uint8(images).to(self.device))
        for name, value in self.extractor.convert_features_tuple_to_dict(out).items():
            self._parts[name].append(value.detach().cpu())

    def result(self) -> dict[str, torch.Tensor]:
        """``{layer: float32 [N, D]}``."""
        return {name: torch.cat(parts) for name, parts in self._parts.items()}


def extract_features(
    extractor: torch.nn.Module, batches: Iterable[torch.Tensor], device: torch.device | str
) -> dict[str, torch.Tensor]:
    """Features of every image in ``batches`` (uint8, or float in [-1, 1])."""
    acc = FeatureAccumulator(extractor, device)
    for batch in batches:
        acc.add(batch)
    return acc.result()


def fid_statistics(features: torch.Tensor) -> dict[str, np.ndarray]:
    """torch-fidelity's FID statistics (``mu``, ``sigma``) of ``[N, D]`` features."""
    return fid_features_to_statistics(features.cpu())


def fid_from_statistics(stats_1: dict[str, np.ndarray], stats_2: dict[str, np.ndarray]) -> float:
    """FID between two sets of statistics, by torch-fidelity (TTUR's formula)."""
    return float(fid_statistics_to_metric(stats_1, stats_2, verbose=False)[KEY_METRIC_FID])


def fid_from_features(features_1: torch.Tensor, features_2: torch.Tensor) -> float:
    """FID between two ``[N, D]`` feature sets, by torch-fidelity."""
    return fid_from_statistics(fid_statistics(features_1), fid_statistics(features_2))


def compute_metrics(
    metrics: Iterable[str],
    generated: dict[str, torch.Tensor],
    reference_stats: dict[str, np.ndarray] | None,
    reference_features: torch.Tensor | None,
) -> dict[str, float]:
    """FID, IS, KID and precision/recall from generated features and the reference's.

    Args:
        metrics: any of ``fid``, ``is``, ``kid``, ``prc`` (others are ignored).
        generated: the extractor's features of the generated images, by layer.
        reference_stats: the reference's FID statistics, float64 ``mu`` and ``sigma``
            (needed for ``fid``).
        reference_features: the reference's 2048-d features (needed for ``kid``, ``prc``).

    Returns:
        ``fid``, ``is_mean``/``is_std``, ``kid_mean``/``kid_std``, ``precision``/``recall``,
        for the metrics asked for.
    """
    metrics = set(metrics)
    n_gen = len(generated[FEATURE_LAYERS["fid"]])
    n_ref = len(reference_features) if reference_features is not None else n_gen
    kw = fidelity_kwargs(n_gen, n_ref)
    out: dict[str, Any] = {}
    if "fid" in metrics:
        # Moments in float64, as the reference's are streamed (sagan.metrics.moments);
        # the distance is torch-fidelity's (TTUR's formula).
        out["fid"] = fid_from_statistics(
            moments_of(generated[FEATURE_LAYERS["fid"]]), reference_stats
        )
    if "is" in metrics:
        r = isc_features_to_metric(
            generated[FEATURE_LAYERS["is"]], kw["isc_splits"], kw["samples_shuffle"], kw["rng_seed"]
        )
        out["is_mean"], out["is_std"] = r[KEY_METRIC_ISC_MEAN], r[KEY_METRIC_ISC_STD]
    if "kid" in metrics:
        r = kid_features_to_metric(generated[FEATURE_LAYERS["kid"]], reference_features, **kw)
        out["kid_mean"], out["kid_std"] = r[KEY_METRIC_KID_MEAN], r[KEY_METRIC_KID_STD]
    if "prc" in metrics:
        # torch-fidelity's convention: input 1 generated, input 2 real.
        r = prc_features_to_metric(generated[FEATURE_LAYERS["prc"]], reference_features, **kw)
        out["precision"], out["recall"] = r[KEY_METRIC_PRECISION], r[KEY_METRIC_RECALL]
    return {k: float(v) for k, v in out.items()}


__all__ = [
    "FeatureAccumulator",
    "LAYERS",
    "compute_metrics",
    "exact_float32",
    "extract_features",
    "feature_extractor",
    "fid_from_features",
    "fid_from_statistics",
    "fid_statistics",
    "to_uint8",
]
