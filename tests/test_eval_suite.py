"""One sample set, one pass per extractor: every metric of an evaluation from shared
features, each value with its own protocol id; intra-FID per class; FD-DINOv2 from a
local file; a reference pass that streams and can be stopped. Real torch-fidelity on
random-valued weights (Inception, and DINOv2 ViT-S/14: see tests/fakeweights.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

from sagan.config import load_config
from sagan.metrics import evaluate_generator
from sagan.metrics.dinov2 import DinoV2Extractor, DinoV2ViT
from sagan.metrics.errors import EvaluationStopped, MetricsError
from sagan.metrics.evaluate import planned_protocol
from sagan.metrics.intra_fid import intra_fid
from sagan.metrics.protocol import metric_protocol_ids, protocol_id
from sagan.nets.models import build_models
from tests import fakeweights

fake_weights = fakeweights.fake_weights
fake_dinov2_weights = fakeweights.fake_dinov2_weights
other_fake_dinov2_weights = fakeweights.other_fake_dinov2_weights

TINY = Path(__file__).resolve().parents[1] / "sagan" / "configs" / "tiny.yaml"
ALL = ["fid", "is", "kid", "fid_inf", "is_inf", "fd_dinov2", "prc", "dc", "intra_fid"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cfg(tmp: Path, weights: Path, metrics: list[str], dinov2: Path | None = None):
    return load_config(
        TINY,
        {
            "eval.metrics": metrics,
            "eval.dinov2_model": "vit-s-14",
            "eval.dinov2_weights": str(dinov2) if dinov2 else None,
            "eval.n_samples": 20,
            "eval.batch_size": 10,
            "eval.reference.n": 20,
            "eval.inception_weights": str(weights),
            "eval.cache_dir": str(tmp / "cache"),
        },
    )


@pytest.fixture(scope="module")
def suite(fake_weights, fake_dinov2_weights, tmp_path_factory):
    """Two evaluations of the tiny G with every metric on features: a cold cache, then a
    warm one, counting G's forwards, Inception's and DINOv2's."""
    tmp = tmp_path_factory.mktemp("suite")
    cfg = _cfg(tmp, fake_weights, ALL, fake_dinov2_weights)
    torch.manual_seed(0)
    G = build_models(cfg.model, cfg.data.resolution, cfg.data.synthetic.n_classes)[0]
    calls = {"G": 0, "inception": 0, "dinov2": 0}

    def count(name):
        return lambda *a: calls.__setitem__(name, calls[name] + 1)

    G.register_forward_hook(count("G"))
    original = FeatureExtractorInceptionV3.forward

    def counting(self, x):
        count("inception")()
        return original(self, x)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FeatureExtractorInceptionV3, "forward", counting)
        mp.setattr(torch.hub, "load", _no_network)
        handle = torch.nn.modules.module.register_module_forward_hook(
            lambda m, *a: count("dinov2")() if isinstance(m, DinoV2ViT) else None
        )
        try:
            cold = evaluate_generator(G, cfg, step=1, device="cpu", ema=True)
            counts_cold = tuple(calls.values())
            warm = evaluate_generator(G, cfg, step=2, device="cpu", ema=True)
        finally:
            handle.remove()
        counts_warm = tuple(v - c for v, c in zip(calls.values(), counts_cold, strict=True))
    return dict(cfg=cfg, G=G, cold=cold, warm=warm, counts=(counts_cold, counts_warm))


def _no_network(*args, **kwargs):
    raise AssertionError("evaluation tried to load something through torch.hub")


def test_every_metric_from_one_generation_and_one_extraction_pass(suite):
    """20 samples in batches of 10: G runs twice, Inception and DINOv2 twice each on the
    samples, and (cold cache only) twice each on the 20 reference images, for all
    nine metrics."""
    cold, warm = suite["counts"]
    assert cold == (2, 4, 4)
    assert warm == (2, 2, 2)
    assert suite["cold"]["timing"]["reference_cache"] == "miss"
    assert suite["warm"]["timing"]["reference_cache"] == "hit"
    assert suite["cold"]["metrics"] == pytest.approx(suite["warm"]["metrics"], rel=1e-9)


def test_every_value_is_recorded_with_its_own_protocol_id(suite):
    r = suite["cold"]
    values = {"fid", "is_mean", "is_std", "kid_mean", "kid_std", "fid_inf", "precision",
              "recall", "density", "coverage", "intra_fid", "fd_dinov2", "is_inf"}  # fmt: skip
    assert set(r["metrics"]) == values and set(r["protocol_ids"]) == values
    assert all(np.isfinite(v) for v in r["metrics"].values())
    for block in ("fid_inf", "is_inf", "dc", "intra_fid", "fd_dinov2"):
        assert block in r["protocol"]
    assert r["protocol"]["dc"]["nearest_k"] == 5
    assert r["protocol"]["fid_inf"]["n"] == r["details"]["fid_inf"]["n"]
    assert len(r["details"]["fid_inf"]["fid"]) == len(r["details"]["fid_inf"]["n"])
    ids = r["protocol_ids"]
    assert (
        len({ids["fid_inf"], ids["density"], ids["intra_fid"], ids["fd_dinov2"], ids["fid"]}) == 5
    )
    assert ids["density"] == ids["coverage"] and ids["fid"] == ids["kid_mean"] == ids["is_mean"]
    assert r["protocol_id"] == protocol_id(r["protocol"])
    assert r["protocol"]["weights_canonical"] is False
    dino = r["protocol"]["fd_dinov2"]
    assert dino["extractor"] == "dinov2-vit-s-14" and dino["weights_canonical"] is False
    assert dino["reference"]["cache_key"] != r["protocol"]["reference"]["cache_key"]
    assert set(r["timing"]["extract_s"]) == {"inception", "dinov2"}
    assert set(r["timing"]["metric_s"]) == set(ALL)


def test_changing_only_the_dinov2_file_changes_only_fd_dinov2s_protocol_id(
    suite, fake_weights, other_fake_dinov2_weights, tmp_path
):
    r = suite["cold"]
    other = planned_protocol(_cfg(tmp_path, fake_weights, ALL, other_fake_dinov2_weights), ema=True)
    other_ids = metric_protocol_ids(other, list(r["metrics"]))
    changed = {k for k in other_ids if other_ids[k] != r["protocol_ids"][k]}
    assert changed == {"fd_dinov2"}


def test_a_missing_dinov2_file_is_one_clear_error_before_anything_runs(fake_weights, tmp_path):
    from sagan.train import preflight

    missing = tmp_path / "nowhere" / "dinov2_vits14_pretrain.pth"
    cfg = _cfg(tmp_path, fake_weights, ["fid", "fd_dinov2"], missing)
    G = build_models(cfg.model, cfg.data.resolution, cfg.data.synthetic.n_classes)[0]
    calls = []
    G.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(MetricsError) as err:
        evaluate_generator(G, cfg, step=1, device="cpu", ema=True)
    message = str(err.value)
    for part in ("fd_dinov2", str(missing), "python -m sagan.prefetch --dinov2 vit-s-14"):
        assert part in message
    assert not calls, "G ran before the missing file was found"
    scored_only = load_config(
        TINY, {"final.metrics": ["fd_dinov2"], "final.dinov2_weights": str(missing)}
    )
    with pytest.raises(MetricsError, match="fd_dinov2"):
        preflight(scored_only)


def test_dinov2_extractor_is_torch_fidelitys_with_the_official_architecture(
    fake_dinov2_weights,
):
    """The forward (resize to 224, normalisation) is torch-fidelity's own; the model has
    the official state-dict layout: ViT-L/14 built on the meta device has the official
    dinov2_vitl14's 343 tensors and 304,368,640 values (counted from
    facebookresearch/dinov2 at b8931f7, whose forward ours matched exactly on shared
    random weights)."""
    from torch_fidelity.feature_extractor_dinov2 import FeatureExtractorDinoV2

    assert DinoV2Extractor.forward is FeatureExtractorDinoV2.forward
    with torch.device("meta"):
        state = DinoV2ViT("vit-l-14").state_dict()
    assert len(state) == 343 and sum(t.numel() for t in state.values()) == 304_368_640
    fe = DinoV2Extractor("vit-s-14", fake_dinov2_weights)
    (out,) = fe(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert out.shape == (2, 384) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_new_metrics_have_directions_for_reports_and_best_by():
    from sagan.training.rundir import HIGHER_IS_BETTER

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


def test_a_reference_that_keeps_all_its_features_keeps_its_old_key_and_entry(
    fake_weights, tmp_path
):
    """The streaming pass left the key of a reference of up to 50,000 images as it was
    (so existing caches and protocol ids stay valid), and an entry written before it
    (a float32 mean) is read and scored; past 50,000 the key names the feature subset."""
    import torch_fidelity

    from sagan.metrics.fidelity import fid_from_statistics
    from sagan.metrics.moments import moments_of
    from sagan.metrics.reference import (
        _entry_name,
        cache_dir,
        cache_key,
        cache_key_parts,
        reference_statistics,
    )
    from sagan.metrics.weights import sha256_file

    base = dict(dataset="synthetic", split="train", resolution=32, n=12, fingerprint="fp")
    sha = sha256_file(fake_weights)
    parts = cache_key_parts(base, sha, 12)
    assert parts == {**base, "subset": "all", "weights_sha256": sha,
                     "extractor": "inception-v3-compat", "layer": "2048",
                     "torch_fidelity": torch_fidelity.__version__, "format": 1}  # fmt: skip
    big = cache_key_parts(base | {"n": 60_000}, sha, 1_281_167)
    assert big["features"] == "random, seed 1, 50000 of the 60000"

    g = torch.Generator().manual_seed(0)
    features = torch.randn(12, 2048, generator=g)
    old_stats = {"mu": features.numpy().mean(0), "sigma": np.cov(features.numpy(), rowvar=False)}
    assert old_stats["mu"].dtype == np.float32
    cfg = _cfg(tmp_path, fake_weights, ["fid"])
    folder = cache_dir(cfg) / _entry_name(parts, cache_key(parts))
    folder.mkdir(parents=True)
    torch.save({k: torch.from_numpy(v) for k, v in old_stats.items()}, folder / "fid_stats.pt")
    torch.save(features, folder / "features.pt")
    (folder / "meta.json").write_text(json.dumps({"parts": parts}))
    ref = reference_statistics(list(range(12)), key_parts=base, cfg=cfg, device="cpu")
    assert ref.hit and "features" not in ref.protocol()
    fake = torch.randn(12, 2048, generator=g)
    assert np.isfinite(fid_from_statistics(moments_of(fake), ref.fid_statistics()))
