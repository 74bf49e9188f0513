"""The sliced Wasserstein distance: the weights-free metric a CPU smoke run can move."""

import torch

from sagan.config import build_config
from sagan.data.synthetic import make_synthetic
from sagan.metrics import evaluate_generator
from sagan.metrics.evaluate import planned_protocol
from sagan.metrics.protocol import protocol_id
from sagan.metrics.swd import Descriptors, laplacian_pyramid, levels, sliced_wasserstein, swd
from tests.test_metrics import TinyG


def _desc(images: torch.Tensor, seed: int = 0) -> Descriptors:
    d = Descriptors(images.shape[-1], seed)
    for i in range(0, len(images), 50):
        d.add(images[i : i + 50])
    return d


def test_the_pyramid_goes_down_to_16_and_its_levels_add_back_up_to_the_image():
    assert levels(32) == [32, 16] and levels(128) == [128, 64, 32, 16]
    x = torch.rand(2, 3, 32, 32)
    fine, coarse = laplacian_pyramid(x, 2)
    assert fine.shape == (2, 3, 32, 32) and coarse.shape == (2, 3, 16, 16)
    # The band-pass level is what the blurred, re-expanded coarse level misses.
    from sagan.metrics.swd import _blur

    up = torch.zeros_like(x)
    up[:, :, ::2, ::2] = coarse
    assert torch.allclose(fine + 4 * _blur(up), x, atol=1e-5)


def test_swd_is_zero_on_a_set_against_itself_and_orders_distances():
    real, _ = make_synthetic(100, 32, 4, 0)
    other, _ = make_synthetic(100, 32, 4, 1)
    noise = torch.randint(0, 256, (100, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    noise = noise.to(torch.uint8)
    assert swd(_desc(real), _desc(real), 0) == 0.0
    same_kind = swd(_desc(real), _desc(other, 1), 0)
    far = swd(_desc(real), _desc(noise, 1), 0)
    assert 0 < same_kind < far / 5
    assert swd(_desc(real), _desc(other, 1), 0) == same_kind  # seeded: the same number again


def test_the_1d_distance_along_one_direction_is_the_sorted_difference():
    a = torch.tensor([[0.0], [1.0], [2.0]])
    b = torch.tensor([[3.0], [1.0], [2.0]])  # sorted 1, 2, 3: every point one further
    assert abs(sliced_wasserstein(a, b, torch.Generator().manual_seed(0)) - 1.0) < 1e-6


def _cfg(metrics, n=20):
    return build_config(
        {
            "data": {"name": "synthetic", "resolution": 32, "synthetic": {"n_images": 64, "n_classes": 3}},
            "train": {"batch_size": 8},
            "eval": {"n_samples": n, "batch_size": 10, "metrics": metrics},
        }
    )  # fmt: skip


def test_an_evaluation_records_the_swd_and_its_protocol():
    cfg = _cfg(["swd", "consistency"])
    G = TinyG().eval()
    rng = torch.get_rng_state()
    record = evaluate_generator(G, cfg, step=3, device="cpu", ema=False)
    assert record["metrics"]["swd"] > 0 and "consistency" in record["metrics"]
    p = record["protocol"]["swd"]
    assert p["levels"] == [32, 16] and p["patch"] == 7 and p["directions"] == "4 x 128"
    assert p["n_images"] == 20 and p["reference"]["subset"] == "random, seed 0, of 64"
    assert record["protocol_id"] == protocol_id(planned_protocol(cfg, ema=False))
    assert torch.equal(torch.get_rng_state(), rng)
    again = evaluate_generator(G, cfg, step=3, device="cpu", ema=False)
    assert again["metrics"]["swd"] == record["metrics"]["swd"]
    # More real and generated images is another protocol; no SWD leaves ids as they were.
    assert protocol_id(planned_protocol(_cfg(["swd"], 30), ema=False)) != record["protocol_id"]
    assert "swd" not in planned_protocol(_cfg(["consistency"]), ema=False)


def test_the_best_checkpoint_can_be_chosen_by_swd():
    cfg = build_config(
        {
            "data": {"name": "synthetic", "resolution": 32},
            "eval": {"metrics": ["swd"], "every": 10},
            "final": {"metrics": ["swd"], "checkpoint": "best", "best_by": "swd"},
        }
    )
    assert cfg.final.best_by == "swd"
