"""Every requested metric from one set of features: each extractor has run once per
image, and FID, IS, KID, precision/recall, density/coverage, FID∞ and intra-FID all
read the same generated and reference features.

:func:`metric_blocks` says what protocol block each block metric records (known
before any work, for :func:`sagan.metrics.evaluate.planned_protocol`);
:func:`score_features` computes the values, their details and the time each took.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from sagan.metrics import dc, fid_inf, intra_fid
from sagan.metrics.fidelity import compute_metrics
from sagan.metrics.moments import FrechetReference
from sagan.metrics.protocol import FEATURE_LAYERS
from sagan.metrics.reference import ReferenceStats

# Computed by sagan.metrics.fidelity.compute_metrics, through torch-fidelity.
FIDELITY_METRICS = ("fid", "is", "kid", "prc")


def metric_blocks(wanted: list[str], n_generated: int, n_reference_features: int) -> dict:
    """The protocol block of each of ``fid_inf``, ``is_inf``, ``dc``, ``intra_fid`` in ``wanted``."""
    blocks: dict[str, Any] = {}
    if "fid_inf" in wanted:
        blocks["fid_inf"] = fid_inf.protocol(n_generated)
    if "is_inf" in wanted:
        blocks["is_inf"] = fid_inf.is_inf_protocol(n_generated)
    if "dc" in wanted:
        blocks["dc"] = dc.protocol(n_generated, n_reference_features)
    if "intra_fid" in wanted:
        blocks["intra_fid"] = intra_fid.protocol()
    return blocks


def score_features(
    wanted: list[str],
    generated: dict[str, torch.Tensor],
    labels: torch.Tensor,
    ref: ReferenceStats | None,
) -> tuple[dict[str, float], dict[str, Any], dict[str, float]]:
    """The values of the Inception metrics in ``wanted`` from features already extracted.

    Args:
        wanted: metric names (``fid``, ``is``, ``kid``, ``prc``, ``fid_inf``, ``dc``, ``intra_fid``).
        generated: the generated images' features by layer (``2048``, ``logits_unbiased``).
        labels: the class each generated image was made with ``[n]``.
        ref: the reference statistics and features (None when only ``is`` is wanted).

    Returns:
        ``(metrics, details, seconds)``: the values (``fid``, ``is_mean``, ...,
        ``fid_inf``, ``density``, ``coverage``, ``intra_fid``); each block metric's
        extra output (FID∞'s per-N FIDs and fit, intra-FID's per-class values); the
        seconds each metric took.
    """
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    pool = generated[FEATURE_LAYERS["fid"]]
    ref_features = (
        ref.features() if ref is not None and {"kid", "prc", "dc"} & set(wanted) else None
    )
    ref_stats = ref.fid_statistics() if ref is not None else None
    for name in FIDELITY_METRICS:
        if name in wanted:
            t = time.perf_counter()
            metrics.update(compute_metrics([name], generated, ref_stats, ref_features))
            seconds[name] = time.perf_counter() - t
    if "fid_inf" in wanted:
        t = time.perf_counter()
        r = fid_inf.fid_inf(pool, FrechetReference(ref_stats), fid_inf.fid_inf_sizes(len(pool)))
        metrics["fid_inf"] = r.pop("fid_inf")
        details["fid_inf"] = r
        seconds["fid_inf"] = time.perf_counter() - t
    if "is_inf" in wanted:
        t = time.perf_counter()
        logits = generated[FEATURE_LAYERS["is"]]
        r = fid_inf.is_inf(logits, fid_inf.fid_inf_sizes(len(logits)))
        metrics["is_inf"] = r.pop("is_inf")
        details["is_inf"] = r
        seconds["is_inf"] = time.perf_counter() - t
    if "dc" in wanted:
        t = time.perf_counter()
        metrics.update(dc.density_coverage(ref_features, pool, dc.DC_NEAREST_K))
        seconds["dc"] = time.perf_counter() - t
    if "intra_fid" in wanted:
        t = time.perf_counter()
        r = intra_fid.intra_fid(pool, labels, ref.class_statistics())
        metrics["intra_fid"] = r.pop("intra_fid")
        details["intra_fid"] = {
            "per_class": {str(c): v for c, v in r["per_class"].items()},
            "n_generated": {str(c): v for c, v in r["n_generated"].items()},
        }
        seconds["intra_fid"] = time.perf_counter() - t
    return metrics, details, {k: round(v, 3) for k, v in seconds.items()}


__all__ = ["FIDELITY_METRICS", "metric_blocks", "score_features"]
