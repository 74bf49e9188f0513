"""Density and coverage (Naeem et al., "Reliable Fidelity and Diversity Metrics for
Generative Models", ICML 2020), computed in torch on feature sets.

With ``r_i`` the distance from real feature ``R_i`` to its k-th nearest other real
feature, and M real, N fake features::

    density  = 1 / (k N) * sum_j sum_i [ |F_j - R_i| < r_i ]
    coverage = 1 / M     * sum_i       [ min_j |R_i - F_j| < r_i ]

This is the formula of the authors' ``prdc`` package (``compute_prdc``, strict ``<``,
the k-th neighbour excluding the point itself), which the tests compare against. It is
computed here rather than by ``prdc`` because ``prdc`` builds the full M x N distance
matrices in NumPy through scikit-learn (10 GB at 50k x 50k, CPU only); this works in
row blocks on the extractor's device and needs no scikit-learn at run time.
"""

from __future__ import annotations

from typing import Any

import torch

# Naeem et al. use k = 5 (and prdc's README example), with 10k real and fake samples.
DC_NEAREST_K = 5
_BLOCK = 2048


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``[len(a), len(b)]`` in float64."""
    d2 = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return d2.clamp(min=0).sqrt()


def knn_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row (float64 ``[M]``)."""
    x = features.double()
    out = []
    for start in range(0, len(x), _BLOCK):
        d = _distances(x[start : start + _BLOCK], x)
        # k + 1 smallest: the row itself (distance 0) and its k nearest others.
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, -1])
    return torch.cat(out)


def density_coverage(
    real: torch.Tensor, fake: torch.Tensor, k: int = DC_NEAREST_K
) -> dict[str, float]:
    """Naeem et al.'s density and coverage of ``fake`` [N, D] against ``real`` [M, D].

    Returns:
        ``{"density": float, "coverage": float}``; density can exceed 1, coverage is in [0, 1].

    Raises:
        ValueError: ``k`` not below the number of real features, or mismatched dimensions.
    """
    if not 1 <= k < len(real):
        raise ValueError(
            f"density/coverage: k = {k} needs more than k real features, got {len(real)}"
        )
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"density/coverage: features of shapes {tuple(real.shape)} and {tuple(fake.shape)}"
        )
    device = real.device
    real, fake = real.double(), fake.double().to(device)
    radii = knn_radii(real, k)
    inside = torch.zeros(len(fake), dtype=torch.float64, device=device)
    nearest_fake = torch.full((len(real),), float("inf"), dtype=torch.float64, device=device)
    for start in range(0, len(real), _BLOCK):
        d = _distances(real[start : start + _BLOCK], fake)  # [block, N]
        r = radii[start : start + _BLOCK, None]
        inside += (d < r).sum(0)
        nearest_fake[start : start + _BLOCK] = d.min(1).values
    return {
        "density": float(inside.sum() / (k * len(fake))),
        "coverage": float((nearest_fake < radii).double().mean()),
    }


def protocol(n_generated: int, n_reference_features: int, k: int = DC_NEAREST_K) -> dict[str, Any]:
    """The ``dc`` protocol block: k, the sample counts, the formula's source."""
    return {
        "metric": "density/coverage (Naeem et al. 2020, as prdc.compute_prdc)",
        "nearest_k": k,
        "n_generated": n_generated,
        "n_reference": n_reference_features,
        "distance": "euclidean, float64",
    }


__all__ = ["DC_NEAREST_K", "density_coverage", "knn_radii", "protocol"]
