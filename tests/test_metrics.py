"""sagan.metrics: the real torch-fidelity path, run on random-valued Inception weights.

The weights (tests/fakeweights.py) make every number meaningless but every step real:
torch-fidelity builds and loads its extractor, resizes, extracts, and computes the
metrics. Inception on a 2-core CPU costs ~0.1-0.4 s per image and torch-fidelity's FID
(a general 2048x2048 eigen-decomposition) ~10 s, so one module-scoped evaluation is
shared by the tests that read its record, and only it computes a 2048-d FID.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from sagan.config import build_config
from sagan.metrics import (
    WEIGHTS_FILE,
    MetricsError,
    evaluate_generator,
    fid_from_features,
    inception_weights_path,
    reference_statistics,
    sample_batches,
    sampling_mode,
    sha256_file,
    to_uint8,
)
from sagan.metrics.reference import cache_dir, cache_key, cache_key_parts
from tests import fakeweights

# Session fixtures: random-valued Inception weights files.
fake_weights = fakeweights.fake_weights
other_fake_weights = fakeweights.other_fake_weights

RES = 32
PROTOCOL_FIELDS = {
    "extractor", "weights_file", "weights_sha256", "weights_canonical", "resize", "reference",
    "n_generated", "g", "g_mode", "step_unit", "eval_seed", "torch_fidelity", "isc_splits",
    "kid_subsets", "kid_subset_size",
}  # fmt: skip
REFERENCE_FIELDS = {"dataset", "split", "n", "resolution", "fingerprint"}
# The reference set of the shared evaluation, as sagan.metrics keys it.
MAIN_REF = dict(dataset="cifar10", split="train", resolution=RES, n=10, fingerprint="fp-0")


class Images(Dataset):
    """Items ``(uint8 [3,R,R], label)``, as sagan.data.datasets yields them."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 3, RES, RES), generator=g, dtype=torch.uint8)
        self.num_classes = 3

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], i % 3


class ReplayG(nn.Module):
    """A 'generator' that returns the given images in order: FID against them must be 0.

    Like a G with StyleGAN-style noise inputs, it draws per-pixel noise from the global
    RNG on every call (in eval mode too), scaled by a strength that starts at 0, so the
    images are unchanged but evaluation moves the global RNG unless it isolates it.
    """

    def __init__(self, images: torch.Tensor):
        super().__init__()
        self.z_dim, self.num_classes, self.resolution = 4, 3, images.shape[-1]
        self.images = images
        self.pos = 0
        self.noise_draws = 0
        self.noise_strength = nn.Parameter(torch.zeros(()))
        # Submodules whose train/eval flags must come back.
        self.head = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert y.dtype == torch.int64 and y.shape == (len(z),) and int(y.max()) < self.num_classes
        out = self.images[self.pos : self.pos + len(z)].float() / 127.5 - 1
        self.pos += len(z)
        noise = torch.randn(out.shape)  # the global RNG
        self.noise_draws += 1
        return out + self.noise_strength * noise


class TinyG(nn.Module):
    """A small G with batch norm (buffers move in train mode) and dropout (global RNG in train mode)."""

    def __init__(self, z_dim: int = 8, num_classes: int = 3):
        super().__init__()
        self.z_dim, self.num_classes, self.resolution = z_dim, num_classes, RES
        self.embed = nn.Embedding(num_classes, z_dim)
        self.fc = nn.Linear(z_dim, 3 * 8 * 8)
        self.bn = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.1)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.fc(z + self.embed(y))).view(-1, 3, 8, 8)
        return torch.tanh(nn.functional.interpolate(self.bn(h), size=RES))


def make_cfg(tmp: Path, weights: Path | None, **eval_overrides):
    ev = {
        "n_samples": 10,
        "batch_size": 5,
        "metrics": ["fid", "is", "kid", "prc", "consistency"],
        "cache_dir": str(tmp / "cache"),
        "inception_weights": str(weights) if weights else None,
        **eval_overrides,
    }
    return build_config({"data": {"name": "cifar10", "resolution": RES}, "eval": ev})


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run Inception on one thread here.

    The test machines have 2 cores shared with other jobs; when another process holds a
    core, torch's two OpenMP threads spin at every barrier and Inception runs ~4x
    slower than on one thread (measured: 74 s vs 17 s for this file under load 3).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def count_forward(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts Inception forward calls (batches) from here on."""
    calls = [0]
    original = FeatureExtractorInceptionV3.forward

    def counting(self, x):
        calls[0] += 1
        return original(self, x)

    monkeypatch.setattr(FeatureExtractorInceptionV3, "forward", counting)
    return calls


def _no_network(*args, **kwargs):
    raise AssertionError("evaluation tried to download something")


@pytest.fixture(scope="module")
def evaluated(fake_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    """One full evaluation: all metrics, a replayed reference set, cold cache, no network."""
    tmp = tmp_path_factory.mktemp("eval")
    dataset = Images(10, seed=0)
    G = ReplayG(dataset.images)
    G.train()  # the config asks for eval mode: train must come back
    cfg = make_cfg(tmp, fake_weights)
    rng_before = torch.get_rng_state()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.hub, "download_url_to_file", _no_network)
        mp.setattr(torch.hub, "load_state_dict_from_url", _no_network)
        mp.setattr(
            "torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", _no_network
        )
        record = evaluate_generator(
            G, cfg, step=7, device="cpu", ema=True, reference=(dataset, MAIN_REF["fingerprint"])
        )
    return {
        "record": record,
        "cfg": cfg,
        "dataset": dataset,
        "G": G,
        "rng_before": rng_before,
        "rng_after": torch.get_rng_state(),
    }


def test_record_carries_every_protocol_field(evaluated, fake_weights):
    record = evaluated["record"]
    assert record["kind"] == "eval" and record["step"] == 7 and record["wall_s"] > 0
    assert "T" in record["time"] and record["time"].endswith("+00:00")
    protocol = record["protocol"]
    assert PROTOCOL_FIELDS <= set(protocol)
    assert REFERENCE_FIELDS <= set(protocol["reference"])
    assert protocol["extractor"] == "inception-v3-compat"
    assert protocol["weights_file"] == WEIGHTS_FILE
    assert protocol["weights_sha256"] == sha256_file(fake_weights)
    assert protocol["resize"] == "tf-compat bilinear (torch-fidelity)"
    expected_ref = {"dataset": "cifar10", "split": "train", "n": 10, "resolution": RES}
    assert expected_ref.items() <= protocol["reference"].items()
    assert protocol["reference"]["fingerprint"] == "fp-0"
    assert (protocol["n_generated"], protocol["g"], protocol["g_mode"]) == (10, "ema", "eval")
    assert protocol["step_unit"] == "G steps" and protocol["eval_seed"] == 0
    assert protocol["isc_splits"] == 10
    assert protocol["kid_subset_size"] == 10  # capped by the sample sizes
    json.dumps(record)  # JSON-serialisable as it is


def test_record_made_with_random_weights_is_not_canonical(evaluated):
    assert evaluated["record"]["protocol"]["weights_canonical"] is False


def test_record_has_every_metric_and_skips_consistency_off_synthetic_data(evaluated):
    metrics = evaluated["record"]["metrics"]
    names = {"fid", "is_mean", "is_std", "kid_mean", "kid_std", "precision", "recall"}
    assert set(metrics) == names
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    assert "consistency" in evaluated["record"]["skipped"]


def test_fid_of_a_set_against_itself_is_zero(evaluated):
    # G replays the reference images (through float and back to uint8) in the same
    # batches, so both sides have the same statistics; what is left is the round-off of
    # torch-fidelity's sqrtm route, relative to the features' scale.
    ref = reference_statistics(
        evaluated["dataset"], key_parts=MAIN_REF, cfg=evaluated["cfg"], device="cpu"
    )
    scale = float(np.trace(ref.fid_statistics()["sigma"]))
    assert scale > 0
    assert abs(evaluated["record"]["metrics"]["fid"]) <= 1e-5 * scale


def test_evaluation_leaves_global_rng_alone(evaluated):
    assert evaluated["G"].noise_draws > 0  # G did draw from the global RNG
    assert torch.equal(evaluated["rng_before"], evaluated["rng_after"])


def test_g_mode_is_restored_after_evaluation(evaluated):
    assert all(m.training for m in evaluated["G"].modules())


def test_first_evaluation_extracts_the_reference_and_caches_it(evaluated):
    assert evaluated["record"]["timing"]["reference_cache"] == "miss"
    entries = list(Path(evaluated["cfg"].eval.cache_dir).iterdir())
    assert len(entries) == 1 and entries[0].name.startswith("cifar10-train-32px-n10-")
    assert {p.name for p in entries[0].iterdir()} == {"meta.json", "fid_stats.pt", "features.pt"}


def test_cache_hit_does_not_reextract(evaluated, count_forward):
    cfg, dataset = evaluated["cfg"], evaluated["dataset"]
    ref = reference_statistics(dataset, key_parts=MAIN_REF, cfg=cfg, device="cpu")
    assert ref.hit and count_forward[0] == 0
    assert ref.features().shape == (10, 2048)
    assert ref.fid_statistics()["sigma"].shape == (2048, 2048)


def test_changed_weights_hash_misses_the_cache(
    fake_weights, other_fake_weights, tmp_path, count_forward
):
    dataset = Images(2, seed=1)
    parts = MAIN_REF | {"split": "test", "n": 2, "fingerprint": "fp-1"}
    cfg_a, cfg_b = make_cfg(tmp_path, fake_weights), make_cfg(tmp_path, other_fake_weights)
    assert cfg_a.eval.cache_dir == cfg_b.eval.cache_dir

    first = reference_statistics(dataset, key_parts=parts, cfg=cfg_a, device="cpu")
    calls_a = count_forward[0]
    other = reference_statistics(dataset, key_parts=parts, cfg=cfg_b, device="cpu")
    assert not first.hit and not other.hit and count_forward[0] > calls_a > 0
    assert other.key != first.key and other.path != first.path
    changed = {k for k in first.parts if first.parts[k] != other.parts[k]}
    assert changed == {"weights_sha256"}

    calls = count_forward[0]
    again = reference_statistics(dataset, key_parts=parts, cfg=cfg_a, device="cpu")
    assert again.hit and again.key == first.key and count_forward[0] == calls


def test_changed_dataset_fingerprint_or_size_changes_the_key():
    base = MAIN_REF | {"n": 100, "fingerprint": "a"}
    key = cache_key(cache_key_parts(base, "0" * 64, 100))
    assert cache_key(cache_key_parts(base | {"fingerprint": "b"}, "0" * 64, 100)) != key
    assert cache_key(cache_key_parts(base | {"n": 50}, "0" * 64, 100)) != key
    assert cache_key(cache_key_parts(base, "1" * 64, 100)) != key
    assert cache_key(cache_key_parts(dict(base), "0" * 64, 100)) == key


def _with_exact_diagonal_covariance(rng, n, mean, var):
    """n samples whose empirical mean is ``mean`` and empirical covariance exactly diag(var)."""
    x = rng.standard_normal((n, len(mean)))
    x -= x.mean(0)
    q, _ = np.linalg.qr(x)  # orthonormal columns that still sum to 0
    return mean + q * np.sqrt(var * (n - 1))


def test_fid_matches_the_closed_form_on_gaussian_features():
    rng = np.random.default_rng(0)
    d, n = 16, 300
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.2, 3.0, d), rng.uniform(0.2, 3.0, d)
    x1 = _with_exact_diagonal_covariance(rng, n, mu1, s1)
    x2 = _with_exact_diagonal_covariance(rng, n, mu2, s2)

    def closed_form(a, b):
        # Frechet distance of Gaussians with commuting (here diagonal) covariances,
        # from the samples' own mean and per-dimension variance.
        m1, m2 = a.mean(0), b.mean(0)
        v1, v2 = a.var(0, ddof=1), b.var(0, ddof=1)
        return float(np.sum((m1 - m2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2)))

    expected = closed_form(x1, x2)
    got = fid_from_features(torch.from_numpy(x1), torch.from_numpy(x2))
    assert got == pytest.approx(expected, rel=1e-6)

    # FID is invariant to rotating both sets: covariances no longer diagonal, same value.
    rot, _ = np.linalg.qr(rng.normal(size=(d, d)))
    got_rotated = fid_from_features(torch.from_numpy(x1 @ rot), torch.from_numpy(x2 @ rot))
    assert got_rotated == pytest.approx(expected, rel=1e-6)


def test_missing_weights_error_says_what_where_and_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MetricsError) as err:
        inception_weights_path(None)
    msg = str(err.value)
    expected_path = tmp_path / "torch" / "hub" / "checkpoints" / WEIGHTS_FILE
    for part in (WEIGHTS_FILE, str(expected_path), "6726825d", "sagan.prefetch --weights"):
        assert part in msg

    missing = tmp_path / "elsewhere.pth"
    with pytest.raises(MetricsError, match=r"eval\.inception_weights") as err:
        inception_weights_path(str(missing))
    assert str(missing) in str(err.value) and "python -m sagan.prefetch --weights" in str(err.value)


def test_missing_weights_fail_before_sampling(tmp_path):
    G = TinyG()
    calls = []
    G.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(MetricsError, match="python -m sagan.prefetch --weights"):
        cfg = make_cfg(tmp_path, tmp_path / "no-such-weights.pth")
        evaluate_generator(G, cfg, step=0, device="cpu", ema=False, reference=(Images(10, 0), "fp"))
    assert not calls


def test_configured_weights_path_wins_and_hash_is_sha256(fake_weights):
    import hashlib

    assert inception_weights_path(str(fake_weights)) == fake_weights
    assert sha256_file(fake_weights) == hashlib.sha256(fake_weights.read_bytes()).hexdigest()


def test_too_few_samples_for_is_or_too_many_reference_images_are_clear(fake_weights, tmp_path):
    with pytest.raises(MetricsError, match=r"eval\.n_samples = 5.*10"):
        cfg = make_cfg(tmp_path, fake_weights, n_samples=5, metrics=["is"])
        evaluate_generator(TinyG(), cfg, step=0, device="cpu", ema=False)
    parts = MAIN_REF | {"n": 50}
    with pytest.raises(MetricsError, match=r"eval\.reference\.n = 50.*has 10 images"):
        reference_statistics(
            Images(10, 0), key_parts=parts, cfg=make_cfg(tmp_path, fake_weights), device="cpu"
        )


def test_cache_dir_is_config_then_env_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGAN_BENCH_CACHE", str(tmp_path / "env"))
    assert cache_dir(make_cfg(tmp_path, None)) == tmp_path / "cache"
    assert cache_dir(make_cfg(tmp_path, None, cache_dir=None)) == tmp_path / "env"
    monkeypatch.delenv("SAGAN_BENCH_CACHE")
    assert cache_dir(None) == Path.home() / ".cache" / "sagan-bench" / "reference"


def test_samples_depend_on_the_eval_seed_only():
    G = TinyG().eval()

    def sample(seed: int, global_seed: int) -> torch.Tensor:
        torch.manual_seed(global_seed)
        with torch.no_grad():
            return torch.cat(list(sample_batches(G, 7, batch_size=3, seed=seed, device="cpu")))

    a = sample(0, global_seed=1)
    assert a.shape == (7, 3, RES, RES)
    assert torch.equal(a, sample(0, global_seed=2))
    assert not torch.equal(a, sample(1, global_seed=1))


def test_train_mode_sampling_restores_flags_and_buffers():
    G = TinyG().eval()
    before = {k: v.clone() for k, v in G.state_dict().items()}
    with sampling_mode(G, "train"), torch.no_grad():
        assert G.training and G.bn.training
        for _ in sample_batches(G, 6, batch_size=3, seed=0, device="cpu"):
            pass
        assert not torch.equal(G.bn.running_mean, before["bn.running_mean"])  # it did move
    assert not any(m.training for m in G.modules())
    assert all(torch.equal(v, before[k]) for k, v in G.state_dict().items())


def test_to_uint8_round_trips_uint8_images():
    u = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    assert torch.equal(to_uint8(u.float() / 127.5 - 1), u)
    assert to_uint8(torch.tensor([-1.5, -1.0, 1.0, 2.0])).tolist() == [0, 0, 255, 255]


def test_with_sagan_data_and_synthetic_consistency(fake_weights, tmp_path, count_forward):
    pytest.importorskip("sagan.data.datasets")
    pytest.importorskip("sagan.data.synthetic")
    cfg = build_config(
        {
            "data": {"name": "synthetic", "resolution": RES, "synthetic": {"n_images": 16, "n_classes": 3}},
            "train": {"batch_size": 4},
            "eval": {
                "n_samples": 2, "batch_size": 2, "metrics": ["kid", "consistency"], "g_mode": "train",
                "reference": {"split": "test", "n": 2}, "cache_dir": str(tmp_path / "cache"),
                "inception_weights": str(fake_weights),
            },
        }
    )  # fmt: skip
    G = TinyG().eval()
    state = {k: v.clone() for k, v in G.state_dict().items()}
    rng = torch.get_rng_state()
    record = evaluate_generator(G, cfg, step=1, device="cpu", ema=False)
    assert set(record["metrics"]) == {"kid_mean", "kid_std", "consistency"}
    assert 0.0 <= record["metrics"]["consistency"] <= 1.0
    reference = record["protocol"]["reference"]
    assert (reference["dataset"], reference["split"], reference["n"]) == ("synthetic", "test", 2)
    assert reference["fingerprint"].startswith("synthetic-")
    assert record["protocol"]["g_mode"] == "train" and record["protocol"]["g"] == "raw"
    assert count_forward[0] == 2  # one batch of 2 reference images, one of 2 generated
    # Train mode advanced batch norm and drew dropout masks; none of it stays.
    assert not any(m.training for m in G.modules())
    assert all(torch.equal(v, state[k]) for k, v in G.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_protocol_ids_change_with_what_changes_the_number_only():
    from sagan.metrics.protocol import build_protocol, protocol_id

    base = dict(
        weights=None,
        reference=None,
        n_generated=1000,
        ema=True,
        g_mode="eval",
        eval_seed=0,
        batch_size=100,
        device="cpu",
    )
    pid = protocol_id(build_protocol(**base))
    assert protocol_id(build_protocol(**{**base, "device": "cuda:3"})) == pid
    for change in (
        {"n_generated": 2000},
        {"ema": False},
        {"g_mode": "train"},
        {"batch_size": 50},
        {"eval_seed": 1},
        {"bn_momentum": 0.1},
    ):
        assert protocol_id(build_protocol(**{**base, **change})) != pid, change


def test_an_image_folder_reference_is_listed_only_on_a_cache_miss(
    fake_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A cached reference on an image folder is scored without listing or stat-ing the
    folder again: its size and fingerprint come from the folder's cached identity."""
    import sagan.data.datasets
    import sagan.data.identity
    import sagan.metrics.refset as refset_mod
    from tests.datafiles import write_tiny_imagefolder

    write_tiny_imagefolder(tmp_path / "imgs", n_classes=2, n_per_class=6, size=(40, 40))
    cfg = build_config(
        {
            "data": {"name": "imagefolder", "root": str(tmp_path / "imgs"), "resolution": RES},
            "eval": {
                "n_samples": 10,
                "batch_size": 5,
                "metrics": ["fid"],
                "cache_dir": str(tmp_path / "cache"),
                "inception_weights": str(fake_weights),
            },
        }
    )
    builds, walks = [0], [0]
    real_build, real_list = sagan.data.datasets.build_dataset, sagan.data.identity.list_image_files

    def counting_build(*a, **k):
        builds[0] += 1
        return real_build(*a, **k)

    def counting_list(*a, **k):
        walks[0] += 1
        return real_list(*a, **k)

    monkeypatch.setattr(sagan.data.datasets, "build_dataset", counting_build)
    monkeypatch.setattr(sagan.data.identity, "list_image_files", counting_list)
    monkeypatch.setattr(refset_mod, "_folder_splits", {})
    G = TinyG()
    first = evaluate_generator(G, cfg, step=1, device="cpu", ema=False)
    assert builds[0] == 1 and first["timing"]["reference_cache"] == "miss"
    second = evaluate_generator(G, cfg, step=2, device="cpu", ema=False)
    assert second["timing"]["reference_cache"] == "hit"
    assert builds[0] == 1, "the folder was listed again for a cached reference"
    assert walks[0] <= 1, "every file was stat-ed again"
    assert second["protocol_id"] == first["protocol_id"]
    assert second["protocol"]["reference"]["n"] == 12
