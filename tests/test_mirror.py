"""The synthetic mirror mode (a fine texture tied across the image) and its score."""

import pytest
import torch
from torchvision.transforms.functional import gaussian_blur

from sagan.config import build_config
from sagan.data.datasets import build_dataset, dataset_fingerprint
from sagan.data.identity import data_identity
from sagan.data.mirror import BAND, CELLS, make_mirror, mirror, realistic
from sagan.data.synthetic import BACKGROUND, PALETTE


@pytest.fixture(scope="module")
def real32():
    return make_mirror(4096, 32, 4, seed=0)


def _cells(images):
    """bool [B, 8, 8]: which cells are not background (the texture's 'on' cells)."""
    c = images.shape[-1] // CELLS
    bg = torch.tensor(BACKGROUND, dtype=torch.uint8).view(1, 3, 1, 1)
    return (images != bg).any(1)[:, ::c, ::c]


def test_same_seed_gives_same_images_and_other_seed_differs():
    a, la = make_mirror(64, 32, 4, seed=3)
    b, lb = make_mirror(64, 32, 4, seed=3)
    c, _ = make_mirror(64, 32, 4, seed=4)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("R", [32, 64, 128])
def test_right_band_is_the_pixel_mirror_of_the_left_and_the_middle_is_plain(R):
    images, labels = make_mirror(32, R, 8, seed=1)
    assert images.shape == (32, 3, R, R) and images.dtype == torch.uint8
    band = BAND * R // CELLS
    assert torch.equal(images[..., R - band :], images[..., :band].flip(-1))
    bg = torch.tensor(BACKGROUND, dtype=torch.uint8).view(1, 3, 1, 1)
    assert (images[..., band : R - band] == bg).all()
    on = (images != bg).any(1, keepdim=True)
    assert (images == torch.where(on, PALETTE[labels].view(-1, 3, 1, 1), bg)).all()


def test_texture_is_random_cells_independent_of_the_class(real32):
    images, labels = real32
    left = _cells(images)[..., :BAND].float()
    assert abs(left.mean().item() - 0.5) < 0.01
    # No cell predicts its neighbour, and the class does not predict the texture.
    a, b = left[..., :-1].flatten(), left[..., 1:].flatten()
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 0.02
    per_class = torch.stack([left[labels == k].mean(0) for k in range(4)])
    assert (per_class - 0.5).abs().max() < 0.1


@pytest.mark.parametrize("R", [32, 128])
def test_real_images_score_exactly_one(R):
    images, _ = make_mirror(4096 if R == 32 else 256, R, 8, seed=5)
    assert realistic(images).all()
    assert mirror(images).min().item() == 1.0


def test_halves_of_unrelated_images_score_chance(real32):
    """Right bands taken from other images of the same colour: realistic, and their
    cell pairs match half the time, so the score is 0 up to sampling (std 0.25 an
    image, 0.004 over 4096)."""
    images, labels = real32
    g = torch.Generator().manual_seed(1)
    mixed = images.clone()
    for k in range(4):
        idx = (labels == k).nonzero().squeeze(1)
        other = idx[torch.randperm(len(idx), generator=g)]
        mixed[idx, ..., 16:] = images[other, ..., 16:]
    assert realistic(mixed).float().mean() > 0.99
    scores = mirror(mixed)
    assert abs(scores.mean().item()) < 0.02
    assert 0.2 < scores.std().item() < 0.3


def test_halves_of_unrelated_colours_are_not_realistic(real32):
    images, labels = real32
    swapped = torch.cat([images[:8, ..., :16], images[8:16, ..., 16:]], -1)
    differ = labels[:8] != labels[8:16]
    assert differ.any()
    assert not realistic(swapped)[differ].any()


def test_noise_scores_zero():
    g = torch.Generator().manual_seed(0)
    uniform = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, generator=g)
    gaussian = torch.randn(256, 3, 32, 32, generator=g).clamp(-1, 1)
    untrained = 0.05 * torch.randn(256, 3, 32, 32, generator=g)  # a fresh G's near-grey output
    for noise in (uniform, gaussian, untrained):
        assert not realistic(noise).any()
        assert mirror(noise).abs().max().item() == 0.0


def test_blank_constant_and_coarse_symmetric_images_fail_the_realism_check():
    """Symmetric all the same: none looks like random texture, so none scores."""
    bg = torch.tensor(BACKGROUND, dtype=torch.uint8).view(1, 3, 1, 1)
    red = PALETTE[0].view(1, 3, 1, 1)
    blank = bg.expand(1, 3, 32, 32)
    full_bands = blank.clone()
    full_bands[..., :8] = red
    full_bands[..., 24:] = red
    top_half = blank.clone()  # smooth: one block on, one off, mirrored
    top_half[..., :16, :8] = red
    top_half[..., :16, 24:] = red
    stripes = blank.clone()  # vertical stripes of cells: every vertical pair agrees
    stripes[..., :4] = red  # cell column 0 of the left band and its mirror
    stripes[..., 28:] = red
    assert 0.45 < _cells(stripes)[..., :BAND].float().mean() < 0.55
    flat = [torch.zeros(1, 3, 32, 32), torch.full((1, 3, 32, 32), -1.0), torch.ones(1, 3, 32, 32)]
    for image in [blank, full_bands, top_half, stripes, *flat]:
        symmetric = torch.equal(image, image.flip(-1))
        assert symmetric
        assert not realistic(image).any()
        assert mirror(image).item() == 0.0


def test_one_flipped_cell_costs_two_sixteenths(real32):
    images, labels = real32
    image = images[:1].clone()
    cell = images.shape[-1] // CELLS
    was_on = _cells(image)[0, 0, 0]
    flipped = BACKGROUND if was_on else PALETTE[labels[0]].tolist()
    image[0, :, :cell, :cell] = torch.tensor(flipped, dtype=torch.uint8).view(3, 1, 1)
    assert realistic(image).all()
    assert mirror(image).item() == pytest.approx(2 * 15 / 16 - 1)


def test_what_lies_between_the_bands_is_not_scored(real32):
    """The score reads the two bands only: texture painted into the plain middle
    changes neither realism nor score (version 1 required a plain middle)."""
    images, _ = real32
    painted = images[:256].clone()
    band = BAND * images.shape[-1] // CELLS
    painted[..., band:-band] = images[256:512, ..., :band].repeat(1, 1, 1, 2)
    assert not torch.equal(painted, images[:256])
    assert torch.equal(realistic(painted), realistic(images[:256]))
    assert torch.equal(mirror(painted), mirror(images[:256]))


def test_float_input_and_slight_blur_score_like_uint8(real32):
    images, _ = real32
    as_float = images[:512].float() / 127.5 - 1.0
    assert torch.equal(mirror(as_float), mirror(images[:512]))
    blurred = gaussian_blur(as_float, [3, 3], [0.4, 0.4])
    assert mirror(blurred).mean() > 0.9


def test_mode_enters_the_data_identity_and_fingerprint_and_objects_keeps_its_own():
    objects = build_config({"data": {"name": "synthetic", "resolution": 32}}).data
    named = build_config(
        {"data": {"name": "synthetic", "resolution": 32, "synthetic": {"mode": "objects"}}}
    ).data
    mirrored = build_config(
        {"data": {"name": "synthetic", "resolution": 32, "synthetic": {"mode": "mirror"}}}
    ).data
    assert "mode" not in data_identity(objects)  # identities written before modes stand
    assert data_identity(named) == data_identity(objects)
    assert data_identity(mirrored)["digest"] != data_identity(objects)["digest"]
    assert dataset_fingerprint(mirrored, "train") != dataset_fingerprint(objects, "train")
    assert dataset_fingerprint(named, "test") == dataset_fingerprint(objects, "test")
    mirrored.synthetic.n_images = 64
    ds = build_dataset(mirrored, "train")
    assert realistic(torch.stack([ds[i][0] for i in range(64)])).all()


class _MirrorG(torch.nn.Module):
    """A 'generator' that draws real mirror images (``right_from_other``: the right
    bands of other images of its batch), so that the metric's value is known."""

    z_dim, num_classes = 4, 2

    def __init__(self, right_from_other=False):
        super().__init__()
        self.right_from_other = right_from_other
        self.calls = 0

    def forward(self, z, y):
        self.calls += 1
        images, _ = make_mirror(len(z), 32, 1, seed=self.calls)
        if self.right_from_other:
            images[..., 16:] = images.roll(1, 0)[..., 16:]
        return images.float() / 127.5 - 1.0


def _mirror_cfg(metrics):
    return build_config(
        {
            "data": {"name": "synthetic", "resolution": 32, "synthetic": {"mode": "mirror", "n_images": 16}},
            "train": {"batch_size": 4},
            "eval": {"n_samples": 64, "batch_size": 32, "metrics": metrics},
        }
    )  # fmt: skip


def test_evaluation_records_the_mirror_score_and_its_protocol():
    from sagan.metrics.evaluate import evaluate_generator, planned_protocol
    from sagan.metrics.protocol import protocol_id

    cfg = _mirror_cfg(["mirror", "consistency"])
    record = evaluate_generator(_MirrorG(), cfg, step=1, device="cpu", ema=False)
    assert record["metrics"] == {"mirror": 1.0}
    assert "mode: objects" in record["skipped"]["consistency"]
    assert record["protocol"]["mirror"]["score_version"] == 2
    planned = planned_protocol(cfg, ema=False)
    assert protocol_id(planned) == record["protocol_id"] == protocol_id(record["protocol"])
    shuffled = evaluate_generator(_MirrorG(True), cfg, step=1, device="cpu", ema=False)
    assert abs(shuffled["metrics"]["mirror"]) < 0.1


def test_mirror_is_skipped_on_the_objects_mode_and_leaves_its_protocol_alone():
    from sagan.metrics.evaluate import planned_protocol

    cfg = _mirror_cfg(["consistency"])
    cfg.data.synthetic.mode = "objects"
    assert "mirror" not in planned_protocol(cfg, ema=False)
    cfg.eval.metrics = ["mirror"]
    assert planned_protocol(cfg, ema=False)["n_generated"] == 0


def test_the_mirror_value_has_an_id_of_its_own_and_leaves_the_others_ids_alone():
    from sagan.metrics.protocol import metric_protocol_ids

    shared = {"n_generated": 64, "eval_seed": 0, "swd": {"n_projections": 4}}
    with_mirror = {**shared, "mirror": {"score_version": 1}}
    other_version = {**shared, "mirror": {"score_version": 2}}
    ids = metric_protocol_ids(with_mirror, ["mirror", "consistency", "swd"])
    before = metric_protocol_ids(shared, ["consistency", "swd"])
    assert ids["consistency"] == before["consistency"] and ids["swd"] == before["swd"]
    assert ids["mirror"] != ids["consistency"], "its own block enters its id"
    assert metric_protocol_ids(other_version, ["mirror"])["mirror"] != ids["mirror"]
