"""One sample set, one pass per extractor: every metric of an evaluation from shared
features, each value with its own protocol id; intra-FID per class; a reference pass
that streams and can be stopped. Real torch-fidelity on random-valued weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

from sagan.config import load_config
from sagan.metrics import evaluate_generator
from sagan.metrics.errors import EvaluationStopped
from sagan.metrics.evaluate import planned_protocol
from sagan.metrics.intra_fid import intra_fid
from sagan.metrics.protocol import protocol_id
from sagan.models import build_models
from tests import fakeweights

fake_weights = fakeweights.fake_weights

TINY = Path(__file__).resolve().parents[1] / "sagan" / "configs" / "tiny.yaml"
ALL = ["fid", "is", "kid", "fid_inf", "prc", "dc", "intra_fid"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cfg(tmp: Path, weights: Path, metrics: list[str]):
    return load_config(
        TINY,
        {
            "eval.metrics": metrics,
            "eval.n_samples": 20,
            "eval.batch_size": 10,
            "eval.reference.n": 20,
            "eval.inception_weights": str(weights),
            "eval.cache_dir": str(tmp / "cache"),
        },
    )


@pytest.fixture(scope="module")
def suite(fake_weights, tmp_path_factory):
    """Two evaluations of the tiny G with every Inception metric: a cold cache, then a warm one,
    counting G's forwards and Inception's."""
    tmp = tmp_path_factory.mktemp("suite")
    cfg = _cfg(tmp, fake_weights, ALL)
    torch.manual_seed(0)
    G = build_models(cfg.model, cfg.data.resolution, cfg.data.synthetic.n_classes)[0]
    g_calls, fe_calls = [0], [0]
    G.register_forward_hook(lambda *a: g_calls.__setitem__(0, g_calls[0] + 1))
    original = FeatureExtractorInceptionV3.forward

    def counting(self, x):
        fe_calls[0] += 1
        return original(self, x)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FeatureExtractorInceptionV3, "forward", counting)
        cold = evaluate_generator(G, cfg, step=1, device="cpu", ema=True)
        counts_cold = (g_calls[0], fe_calls[0])
        warm = evaluate_generator(G, cfg, step=2, device="cpu", ema=True)
        counts_warm = (g_calls[0] - counts_cold[0], fe_calls[0] - counts_cold[1])
    return dict(cfg=cfg, G=G, cold=cold, warm=warm, counts=(counts_cold, counts_warm))


def test_every_metric_from_one_generation_and_one_extraction_pass(suite):
    """20 samples in batches of 10: G runs twice, Inception twice on the samples, and
    (cold cache only) twice on the 20 reference images, for all seven metrics."""
    cold, warm = suite["counts"]
    assert cold == (2, 4)
    assert warm == (2, 2)
    assert suite["cold"]["timing"]["reference_cache"] == "miss"
    assert suite["warm"]["timing"]["reference_cache"] == "hit"
    assert suite["cold"]["metrics"] == pytest.approx(suite["warm"]["metrics"], rel=1e-9)


def test_every_value_is_recorded_with_its_own_protocol_id(suite):
    r = suite["cold"]
    values = {"fid", "is_mean", "is_std", "kid_mean", "kid_std", "fid_inf", "precision",
              "recall", "density", "coverage", "intra_fid"}  # fmt: skip
    assert set(r["metrics"]) == values and set(r["protocol_ids"]) == values
    assert all(np.isfinite(v) for v in r["metrics"].values())
    for block in ("fid_inf", "dc", "intra_fid"):
        assert block in r["protocol"]
    assert r["protocol"]["dc"]["nearest_k"] == 5
    assert r["protocol"]["fid_inf"]["n"] == r["details"]["fid_inf"]["n"]
    assert len(r["details"]["fid_inf"]["fid"]) == len(r["details"]["fid_inf"]["n"])
    ids = r["protocol_ids"]
    assert len({ids["fid_inf"], ids["density"], ids["intra_fid"], ids["fid"]}) == 4
    assert ids["density"] == ids["coverage"] and ids["fid"] == ids["kid_mean"] == ids["is_mean"]
    assert r["protocol_id"] == protocol_id(r["protocol"])
    assert r["protocol"]["weights_canonical"] is False


def test_new_metrics_have_directions_for_reports_and_best_by():
    from sagan.rundir import HIGHER_IS_BETTER

    assert [HIGHER_IS_BETTER[m] for m in ("fid_inf", "intra_fid", "density", "coverage")] == [
        False, False, True, True,
    ]  # fmt: skip


def test_adding_new_metrics_leaves_fids_protocol_id_alone(suite, fake_weights, tmp_path):
    """FID's id is that of an evaluation asking for FID, IS, KID and PR only; the plan
    of the full evaluation is the record's protocol."""
    plain = planned_protocol(_cfg(tmp_path, fake_weights, ["fid", "is", "kid", "prc"]), ema=True)
    r = suite["cold"]
    assert r["protocol_ids"]["fid"] == protocol_id(plain)
    assert planned_protocol(suite["cfg"], ema=True) == {**r["protocol"], "device": "cpu"}


def test_intra_fid_is_the_mean_of_the_per_class_values(suite):
    d = suite["cold"]["details"]["intra_fid"]
    assert set(d["per_class"]) == {"0", "1", "2", "3"}
    assert sum(d["n_generated"].values()) == 20
    assert suite["cold"]["metrics"]["intra_fid"] == pytest.approx(
        np.mean(list(d["per_class"].values()))
    )


def test_intra_fid_equals_the_mean_of_per_class_fids_computed_by_hand():
    """A synthetic conditional set in 12-d: three classes, real and generated Gaussians
    whose means differ by class; per-class FIDs by numpy's cov and torch-fidelity."""
    g = torch.Generator().manual_seed(0)
    d, classes = 12, 3
    real = {c: torch.randn(40, d, generator=g, dtype=torch.float64) + c for c in range(classes)}
    labels = torch.arange(60) % classes
    fake = torch.randn(60, d, generator=g, dtype=torch.float64) * 1.1 + labels[:, None] * 0.8
    stats = {c: {**fid_features_to_statistics(x), "n": 40} for c, x in real.items()}
    by_hand = [
        fid_statistics_to_metric(
            fid_features_to_statistics(fake[labels == c]), stats[c], verbose=False
        )["frechet_inception_distance"]
        for c in range(classes)
    ]
    r = intra_fid(fake, labels, stats)
    assert r["per_class"] == pytest.approx(dict(enumerate(by_hand)), rel=1e-8)
    assert r["intra_fid"] == pytest.approx(np.mean(by_hand), rel=1e-8)
    assert r["n_generated"] == {0: 20, 1: 20, 2: 20}


def test_a_stop_request_during_reference_extraction_abandons_it_and_caches_nothing(
    fake_weights, tmp_path
):
    cfg = _cfg(tmp_path, fake_weights, ["fid"])
    torch.manual_seed(0)
    G = build_models(cfg.model, cfg.data.resolution, cfg.data.synthetic.n_classes)[0]
    asked = [0]

    def stop():
        asked[0] += 1
        return asked[0] > 1  # after the first reference batch

    with pytest.raises(EvaluationStopped, match="reference statistics: .* after 10 of 20 images"):
        evaluate_generator(G, cfg, step=1, device="cpu", ema=True, stop=stop)
    cache = tmp_path / "cache"
    assert not cache.exists() or not [p for p in cache.iterdir() if not p.name.startswith(".")]
