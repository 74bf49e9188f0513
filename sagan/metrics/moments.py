"""Streaming feature moments, a bounded feature subset, and the Fréchet distance in torch.

:class:`RunningMoments` accumulates a feature set's mean and covariance batch by batch
in float64 (sums shifted by the first batch's mean, so that large means do not cancel
the covariance away), so that reference statistics of a 1.28M-image split never hold
an ``N x D`` matrix. :class:`FeatureSubset` keeps the features of a seeded random
subset of positions, for the metrics that need features rather than moments (KID,
precision/recall, density/coverage). :func:`frechet_distance` is the TTUR formula
(Heusel et al. 2017) with the trace of the matrix square root taken from the
eigenvalues of ``sqrt(S1) S2 sqrt(S1)``, which are real and non-negative, so that the
many FIDs of FID∞ and intra-FID each cost one symmetric eigendecomposition.
"""

from __future__ import annotations

import numpy as np
import torch


class RunningMoments:
    """Mean and covariance of rows added batch by batch, in float64.

    ``sigma`` is the unbiased covariance (divided by ``n - 1``), as ``np.cov`` and
    torch-fidelity's ``fid_features_to_statistics`` compute it.
    """

    def __init__(self) -> None:
        self.n = 0
        self._shift: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None
        self._outer: torch.Tensor | None = None

    def add(self, features: torch.Tensor) -> None:
        """Add ``[B, D]`` rows (any float dtype, any device; summed in float64 on the CPU)."""
        x = features.detach().to("cpu", torch.float64)
        if x.dim() != 2:
            raise ValueError(
                f"RunningMoments.add: expected [B, D] features, got shape {tuple(x.shape)}"
            )
        if len(x) == 0:
            return
        if self._shift is None:
            self._shift = x.mean(0)
            d = x.shape[1]
            self._sum = torch.zeros(d, dtype=torch.float64)
            self._outer = torch.zeros(d, d, dtype=torch.float64)
        x = x - self._shift
        self._sum += x.sum(0)
        self._outer += x.T @ x
        self.n += len(x)

    def statistics(self) -> dict[str, np.ndarray]:
        """``{"mu": float64 [D], "sigma": float64 [D, D]}``, torch-fidelity's FID statistics layout.

        Raises:
            ValueError: fewer than two rows were added.
        """
        if self.n < 2:
            raise ValueError(f"RunningMoments: a covariance needs at least 2 rows, got {self.n}")
        mean_shifted = self._sum / self.n
        sigma = (self._outer - self.n * torch.outer(mean_shifted, mean_shifted)) / (self.n - 1)
        sigma = (sigma + sigma.T) / 2
        return {"mu": (self._shift + mean_shifted).numpy(), "sigma": sigma.numpy()}


def moments_of(features: torch.Tensor) -> dict[str, np.ndarray]:
    """:meth:`RunningMoments.statistics` of one ``[N, D]`` matrix."""
    m = RunningMoments()
    m.add(features)
    return m.statistics()


def kept_positions(n: int, keep: int, seed: int) -> torch.Tensor:
    """The sorted positions (of ``0..n-1``) whose features a :class:`FeatureSubset` keeps:
    all of them when ``keep >= n``, else the first ``keep`` of a permutation seeded with ``seed``."""
    if keep >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:keep].sort().values


class FeatureSubset:
    """Keeps the rows at :func:`kept_positions` of a stream of ``n`` rows, on the CPU, in float32."""

    def __init__(self, n: int, keep: int, seed: int):
        self.positions = kept_positions(n, keep, seed)
        self._mask = torch.zeros(n, dtype=torch.bool)
        self._mask[self.positions] = True
        self._seen = 0
        self._parts: list[torch.Tensor] = []

    def add(self, features: torch.Tensor) -> None:
        """Add the next ``[B, D]`` rows of the stream."""
        mask = self._mask[self._seen : self._seen + len(features)]
        self._parts.append(features.detach().cpu().float()[mask])
        self._seen += len(features)

    def result(self) -> torch.Tensor:
        """float32 ``[len(positions), D]``, in stream order."""
        return torch.cat(self._parts)


def _sqrt_psd(sigma: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(sigma)
    return (v * w.clamp(min=0).sqrt()) @ v.T


class FrechetReference:
    """One side of many Fréchet distances (the reference), with ``sqrt(sigma)`` computed once."""

    def __init__(self, stats: dict[str, np.ndarray]):
        self.mu = torch.as_tensor(np.asarray(stats["mu"]), dtype=torch.float64)
        self.sigma = torch.as_tensor(np.asarray(stats["sigma"]), dtype=torch.float64)
        self._root: torch.Tensor | None = None
        self._trace = float(torch.trace(self.sigma))

    def _check(self, dim: int) -> None:
        if dim != len(self.mu):
            raise ValueError(
                f"Fréchet distance: features of dimension {dim} against a reference of dimension {len(self.mu)}"
            )

    def distance(self, stats: dict[str, np.ndarray]) -> float:
        """The Fréchet distance ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`` to ``stats``."""
        mu = torch.as_tensor(np.asarray(stats["mu"]), dtype=torch.float64)
        sigma = torch.as_tensor(np.asarray(stats["sigma"]), dtype=torch.float64)
        self._check(len(mu))
        if self._root is None:
            self._root = _sqrt_psd(self.sigma)
        inner = self._root @ sigma @ self._root
        eig = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0)
        return self._value(mu, float(torch.trace(sigma)), eig)

    def distance_to_features(self, features: torch.Tensor) -> float:
        """:meth:`distance` to the moments of ``features`` [N, D], N >= 2.

        With N <= D the sample covariance is ``A A^T`` with ``A = X_c^T / sqrt(N - 1)``
        of rank below N, and the non-zero eigenvalues of ``sqrt(S) A A^T sqrt(S)`` are
        those of the N x N matrix ``A^T S A``: the same number, from an N x N
        eigendecomposition (intra-FID's classes and FID∞'s small subsets).
        """
        x = features.detach().to("cpu", torch.float64)
        n, d = x.shape
        self._check(d)
        if n < 2:
            raise ValueError(f"Fréchet distance: a covariance needs at least 2 rows, got {n}")
        if n > d:
            return self.distance(moments_of(x))
        mu = x.mean(0)
        a = (x - mu).T / (n - 1) ** 0.5
        gram = a.T @ self.sigma @ a
        eig = torch.linalg.eigvalsh((gram + gram.T) / 2).clamp(min=0)
        return self._value(mu, float((a * a).sum()), eig)

    def _value(self, mu: torch.Tensor, trace: float, eig: torch.Tensor) -> float:
        diff = mu - self.mu
        return float(diff @ diff + self._trace + trace - 2 * eig.sqrt().sum())


def frechet_distance(stats_1: dict[str, np.ndarray], stats_2: dict[str, np.ndarray]) -> float:
    """The Fréchet distance between two ``{"mu", "sigma"}`` statistics (TTUR's formula), in float64."""
    return FrechetReference(stats_2).distance(stats_1)


__all__ = [
    "FeatureSubset",
    "FrechetReference",
    "RunningMoments",
    "frechet_distance",
    "kept_positions",
    "moments_of",
]
