"""FID∞ and IS∞: FID and IS extrapolated to infinitely many samples (Chong & Forsyth,
"Effectively Unbiased FID and Inception Score and where to find them", CVPR 2020).

FID computed from N samples is biased upwards by a term that is, to first order,
linear in 1/N, with a slope that depends on the generator; so comparing two models
at one fixed N compares their biases too. Chong & Forsyth compute FID at several N
(15 values from 5,000 to 50,000), fit ``FID_N = FID∞ + slope / N`` by least squares
and report the intercept. Here the subsets are nested (the first N of one seeded
permutation of the generated features), the reference side is the full reference
statistics, and the smallest N is a tenth of the sample, as 5k is of 50k.

IS∞ is the same fit of IS against 1/N on the same nested subsets, with IS of each
subset taken over the whole subset (one split; the value torch-fidelity's
``isc_features_to_metric`` gives with ``splits=1``, from running sums): its bias comes from estimating the marginal p(y) from N
samples, so the 10-split IS of record, whose splits hold N/10 samples each, would
mix two sizes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sagan.metrics.moments import FrechetReference, RunningMoments

FID_INF_POINTS = 15
FID_INF_MIN_FRACTION = 0.1
FID_INF_SEED = 0


def fid_inf_sizes(n: int, points: int = FID_INF_POINTS) -> list[int]:
    """The subset sizes FID∞ is fitted on: ``points`` values evenly spaced from ``n / 10`` to ``n``.

    Raises:
        ValueError: fewer than three distinct sizes of at least 2 samples each.
    """
    lo = max(2, round(n * FID_INF_MIN_FRACTION))
    sizes = sorted({int(round(v)) for v in np.linspace(lo, n, points)})
    if len(sizes) < 3:
        raise ValueError(f"FID∞ needs at least 3 distinct subset sizes; {n} samples give {sizes}")
    return sizes


def fid_inf(
    features: torch.Tensor,
    reference: FrechetReference,
    sizes: list[int],
    seed: int = FID_INF_SEED,
) -> dict[str, Any]:
    """FID at each nested subset size and its linear extrapolation in 1/N.

    Args:
        features: the generated features ``[n, D]``.
        reference: the reference statistics.
        sizes: increasing subset sizes, at most ``n`` (:func:`fid_inf_sizes`).
        seed: seeds the permutation whose prefixes are the subsets.

    Returns:
        ``{"fid_inf": intercept, "slope": b, "n": sizes, "fid": [FID at each size],
        "residual_rms": root-mean-square residual of the fit}``.
    """
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(features), generator=gen)
    dim = features.shape[1]
    moments = RunningMoments()
    done = 0
    values = []
    for n in sizes:
        if n <= dim:  # a D x D decomposition would cost more than an n x n one
            values.append(reference.distance_to_features(features[order[:n]]))
            continue
        moments.add(features[order[done:n]])
        done = n
        values.append(reference.distance(moments.statistics()))
    fit = _fit(sizes, values)
    return {"fid_inf": fit.pop("intercept"), **fit, "fid": [float(v) for v in values]}


def _fit(sizes: list[int], values: list[float]) -> dict[str, Any]:
    x = 1.0 / np.asarray(sizes, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (intercept + slope * x)
    return {
        "intercept": float(intercept),
        "slope": float(slope),
        "n": list(sizes),
        "residual_rms": float(np.sqrt(np.mean(residual**2))),
    }


def is_inf(logits: torch.Tensor, sizes: list[int], seed: int = FID_INF_SEED) -> dict[str, Any]:
    """IS at each nested subset size (one split each) and its linear extrapolation in 1/N.

    Args:
        logits: the generated images' unbiased Inception logits ``[n, 1008]``.
        sizes: increasing subset sizes (:func:`fid_inf_sizes`); ``seed``: the permutation's.

    Returns:
        ``{"is_inf": intercept, "slope", "n": sizes, "is": [IS at each size], "residual_rms"}``.
    """
    gen = torch.Generator().manual_seed(seed)
    x = logits[torch.randperm(len(logits), generator=gen)].double()
    # One pass instead of one per size: for a prefix of N rows with q = mean p_i,
    # IS = exp(mean_i sum_y p_iy log p_iy - sum_y q_y log q_y), torch-fidelity's
    # one-split value (isc_features_to_metric), from running sums.
    p, log_p = x.softmax(dim=1), x.log_softmax(dim=1)
    neg_entropy = (p * log_p).sum(1).cumsum(0)
    mass = p.cumsum(0)
    values = []
    for n in sizes:
        q = mass[n - 1] / n
        values.append(float(torch.exp(neg_entropy[n - 1] / n - (q * q.log()).sum())))
    fit = _fit(sizes, values)
    return {"is_inf": fit.pop("intercept"), **fit, "is": values}


def is_inf_protocol(n_generated: int) -> dict[str, Any]:
    """The ``is_inf`` protocol block."""
    return {
        "metric": "IS extrapolated to N -> infinity (Chong & Forsyth 2020)",
        "n": fid_inf_sizes(n_generated),
        "subsets": f"nested prefixes of a permutation, seed {FID_INF_SEED}",
        "splits": "1 per subset (as torch-fidelity isc_features_to_metric, splits=1)",
        "fit": "least squares IS_N = IS_inf + slope / N",
    }


def protocol(n_generated: int) -> dict[str, Any]:
    """The ``fid_inf`` protocol block: the sizes, the subset rule and the fit."""
    return {
        "metric": "FID extrapolated to N -> infinity (Chong & Forsyth 2020)",
        "n": fid_inf_sizes(n_generated),
        "subsets": f"nested prefixes of a permutation, seed {FID_INF_SEED}",
        "fit": "least squares FID_N = FID_inf + slope / N",
        "reference": "full reference statistics",
        "frechet": "float64, trace via eigvalsh(sqrt(S_ref) S_gen sqrt(S_ref))",
    }


__all__ = ["FID_INF_POINTS", "fid_inf", "fid_inf_sizes", "is_inf", "is_inf_protocol", "protocol"]
