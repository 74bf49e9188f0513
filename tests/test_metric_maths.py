"""The maths under FID∞, density/coverage and intra-FID, on feature sets made here:
streaming moments, the Fréchet distance, the 1/N extrapolation, the k-NN metrics."""

from __future__ import annotations

import numpy as np
import prdc
import pytest
import torch
from torch_fidelity.metric_fid import fid_features_to_statistics
from torch_fidelity.metric_isc import isc_features_to_metric

from sagan.metrics.dc import density_coverage
from sagan.metrics.fid_inf import fid_inf, fid_inf_sizes, is_inf
from sagan.metrics.fidelity import fid_from_statistics
from sagan.metrics.moments import (
    FeatureSubset,
    FrechetReference,
    RunningMoments,
    kept_positions,
    moments_of,
)


def _gaussian(n, d, seed, mean=0.0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale + mean


def test_streamed_moments_equal_numpy_cov_of_the_whole_matrix_even_far_from_zero():
    # A large mean would cancel a naive sum of squares; float32 rows, as features are.
    x = _gaussian(300, 16, 0, mean=1e4).float()
    m = RunningMoments()
    for start in range(0, 300, 7):
        m.add(x[start : start + 7])
    s = m.statistics()
    ref = fid_features_to_statistics(x.double())
    assert m.n == 300 and s["mu"].dtype == np.float64 and s["sigma"].dtype == np.float64
    np.testing.assert_allclose(s["mu"], ref["mu"], rtol=1e-12)
    np.testing.assert_allclose(s["sigma"], ref["sigma"], rtol=1e-9, atol=1e-9)


def test_running_moments_refuse_a_covariance_of_one_row():
    m = RunningMoments()
    m.add(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="at least 2 rows, got 1"):
        m.statistics()


def test_feature_subset_keeps_the_seeded_positions_across_batches():
    x = torch.arange(50.0).repeat(3, 1).T  # row i is (i, i, i)
    keep = FeatureSubset(50, 12, seed=1)
    for start in range(0, 50, 9):
        keep.add(x[start : start + 9])
    pos = kept_positions(50, 12, seed=1)
    assert len(pos) == 12 and torch.equal(keep.result()[:, 0], pos.float())
    assert torch.equal(kept_positions(10, 12, seed=1), torch.arange(10))


@pytest.mark.parametrize("n", [5, 40, 200])
def test_frechet_distance_matches_torch_fidelity_in_both_paths(n):
    """Moments path (n > D) and Gram path (n <= D) against torch-fidelity's TTUR formula."""
    ref = moments_of(_gaussian(400, 32, 1))
    x = _gaussian(n, 32, 2, mean=0.2, scale=1.3)
    expected = fid_from_statistics(moments_of(x), ref)
    r = FrechetReference(ref)
    assert r.distance(moments_of(x)) == pytest.approx(expected, rel=1e-7)
    assert r.distance_to_features(x) == pytest.approx(expected, rel=1e-7)


def test_fid_inf_recovers_a_known_distance_that_plain_fid_misses():
    """Chong & Forsyth's extrapolation on Gaussians with a known Fréchet distance.

    Reference N(0, I) given exactly; generated N(m, diag(v)) in 64-d, 2000 samples.
    The true distance is |m|^2 + sum(1 + v - 2 sqrt(v)) = 3.537. Tolerance: 10% of it.
    Plain FID overshoots by its 1/N bias, at every N including all 2000 samples.
    """
    d = 64
    var = torch.linspace(0.5, 2.0, d, dtype=torch.float64)
    mean = torch.zeros(d, dtype=torch.float64)
    mean[:4] = 0.25
    true = float(mean @ mean + (1 + var - 2 * var.sqrt()).sum())
    reference = FrechetReference({"mu": np.zeros(d), "sigma": np.eye(d)})
    tolerance = 0.1 * true
    for seed in range(3):
        x = _gaussian(2000, d, seed) * var.sqrt() + mean
        r = fid_inf(x, reference, fid_inf_sizes(2000))
        assert r["n"] == fid_inf_sizes(2000) and r["n"][0] == 200 and r["n"][-1] == 2000
        assert abs(r["fid_inf"] - true) < tolerance, (seed, r["fid_inf"], true)
        assert min(r["fid"]) - true > tolerance, (seed, r["fid"], true)
        assert r["slope"] > 0 and r["residual_rms"] < tolerance


def test_fid_inf_sizes_refuse_too_few_samples():
    assert fid_inf_sizes(50_000)[:2] == [5000, 8214] and len(fid_inf_sizes(50_000)) == 15
    with pytest.raises(ValueError, match="at least 3 distinct subset sizes"):
        fid_inf_sizes(3)


@pytest.mark.parametrize("k", [3, 5])
def test_density_and_coverage_agree_with_prdc(k, capsys):
    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 32, generator=g)
    fake = torch.randn(250, 32, generator=g) * 1.2 + 0.3
    ours = density_coverage(real, fake, k)
    theirs = prdc.compute_prdc(real.numpy(), fake.numpy(), nearest_k=k)
    assert ours["density"] == pytest.approx(float(theirs["density"]), abs=1e-12)
    assert ours["coverage"] == pytest.approx(float(theirs["coverage"]), abs=1e-12)
    assert 0 < ours["coverage"] < 1


def test_density_coverage_of_a_set_against_itself_and_bad_k():
    real = _gaussian(100, 8, 3).float()
    same = density_coverage(real, real, 5)
    assert same["coverage"] == 1.0
    with pytest.raises(ValueError, match="k = 100 needs more than k real features, got 100"):
        density_coverage(real, real, 100)


def test_is_inf_recovers_a_known_inception_score_that_plain_is_at_small_n_misses():
    """Logits of 1000 classes: class c gets +8 on a standard normal vector, c uniform.
    By symmetry the marginal p(y) is uniform, so the true IS is exp(E[sum p log p] +
    log 1000), estimated on 50k independent samples (49.8, to about 2%). From 5000
    samples the extrapolation is within 6% of it; IS at the smallest N (500) is over
    20% low."""
    k = 1000

    def logits(n, seed):
        g = torch.Generator().manual_seed(seed)
        c = torch.randint(0, k, (n,), generator=g)
        x = torch.randn(n, k, generator=g, dtype=torch.float64)
        x[torch.arange(n), c] += 8.0
        return x

    neg_entropy = 0.0
    for i in range(5):  # 50k samples, 80 MB at a time
        x = logits(10_000, 99 + i).float()
        neg_entropy += float((x.softmax(1) * x.log_softmax(1)).sum(1).double().mean()) / 5
    true = float(np.exp(neg_entropy + np.log(k)))
    for seed in range(3):
        r = is_inf(logits(5000, seed), fid_inf_sizes(5000))
        assert abs(r["is_inf"] - true) < 0.06 * true, (seed, r["is_inf"], true)
        assert true - r["is"][0] > 0.2 * true, (seed, r["is"][0], true)
        assert r["n"][0] == 500 and len(r["is"]) == len(r["n"])


def test_is_inf_subset_scores_are_torch_fidelitys_one_split_inception_score():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 50, generator=g) * 3
    r = is_inf(x, [60, 300, 600], seed=4)
    order = torch.randperm(600, generator=torch.Generator().manual_seed(4))
    for n, value in zip(r["n"], r["is"], strict=True):
        ref = isc_features_to_metric(x[order[:n]], splits=1, shuffle=False)
        assert value == pytest.approx(ref["inception_score_mean"], rel=1e-10)
