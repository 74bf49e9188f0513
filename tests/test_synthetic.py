"""The synthetic two-object dataset and its consistency score."""

import pytest
import torch
from torchvision.transforms.functional import gaussian_blur

from sagan.data import synthetic
from sagan.data.synthetic import BACKGROUND, PALETTE, consistency, make_synthetic

K = len(PALETTE)


@pytest.fixture(scope="module")
def real32():
    return make_synthetic(4096, 32, 8, seed=0)


def _swap_right_halves(images, seed=1):
    """Left half of image i with the right half of an unrelated image."""
    R = images.shape[-1]
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    mixed = images.clone()
    mixed[..., R // 2 :] = images[perm][..., R // 2 :]
    return mixed


def test_palette_has_eight_distinct_colours():
    assert PALETTE.dtype == torch.uint8 and PALETTE.shape == (8, 3)
    d = torch.cdist(PALETTE.float(), PALETTE.float())
    assert d[~torch.eye(8, dtype=torch.bool)].min() > 100


def test_same_seed_gives_same_images_and_other_seed_differs():
    a, la = make_synthetic(64, 32, 4, seed=3)
    b, lb = make_synthetic(64, 32, 4, seed=3)
    c, lc = make_synthetic(64, 32, 4, seed=4)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("R", [32, 64, 128])
def test_shapes_dtypes_and_label_range(R):
    images, labels = make_synthetic(40, R, 5, seed=0)
    assert images.shape == (40, 3, R, R) and images.dtype == torch.uint8
    assert labels.shape == (40,) and labels.dtype == torch.int64
    assert 0 <= labels.min() and labels.max() < 5
    assert consistency(images).all()


def test_each_half_holds_one_object_of_one_palette_colour(real32):
    images, _ = real32
    bg = torch.tensor(BACKGROUND, dtype=torch.uint8).view(3, 1)
    for img in images[:32]:
        for half in (img[..., :16], img[..., 16:]):
            pixels = half.reshape(3, -1)
            fg = pixels[:, (pixels != bg).any(0)]
            colours = fg.unique(dim=1)
            assert colours.shape[1] == 1
            assert (PALETTE == colours[:, 0]).all(1).any()


def test_colour_is_independent_of_class(real32):
    images, labels = real32
    colour = images[:, :, :, :16].reshape(len(images), 3, -1).amax(2)
    for k in range(8):
        seen = {tuple(c.tolist()) for c in colour[labels == k]}
        assert len(seen) == K


def test_objects_move_independently(real32):
    """No fixed offset between the two objects: a convolution cannot copy one onto the other."""
    images, _ = real32
    fg = (images != torch.tensor(BACKGROUND, dtype=torch.uint8).view(1, 3, 1, 1)).any(1).float()
    ys = torch.arange(32, dtype=torch.float32)
    row = lambda m: (m.sum(2) * ys).sum(1) / m.sum((1, 2))  # noqa: E731
    dy = row(fg[..., 16:]) - row(fg[..., :16])
    assert dy.std() > 4


@pytest.mark.parametrize("R", [32, 128])
def test_real_images_score_exactly_one(R):
    images, _ = make_synthetic(1024 if R == 32 else 128, R, 8, seed=5)
    assert consistency(images).float().mean().item() == 1.0


def test_shuffled_pairing_scores_about_one_over_k(real32):
    images, _ = real32
    score = consistency(_swap_right_halves(images)).float().mean().item()
    assert abs(score - 1 / K) < 0.03


def test_noise_and_blank_images_score_zero():
    g = torch.Generator().manual_seed(0)
    uniform = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, generator=g)
    gaussian = torch.randn(256, 3, 32, 32, generator=g).clamp(-1, 1)
    untrained = 0.05 * torch.randn(256, 3, 32, 32, generator=g)  # a fresh G's near-grey output
    assert consistency(uniform).float().mean() < 0.01
    assert consistency(gaussian).float().mean() < 0.01
    assert consistency(untrained).float().mean() < 0.01
    assert not consistency(torch.zeros(4, 3, 32, 32, dtype=torch.uint8)).any()
    assert not consistency(torch.full((4, 3, 32, 32), -1.0)).any()
    assert not consistency(torch.ones(4, 3, 32, 32)).any()


def test_float_input_in_minus_one_one_scores_like_uint8(real32):
    images, _ = real32
    mixed = torch.cat([images[:512], _swap_right_halves(images[:512])])
    as_float = mixed.float() / 127.5 - 1.0
    assert torch.equal(consistency(as_float), consistency(mixed))


def test_one_recoloured_object_fails():
    images, _ = make_synthetic(16, 32, 4, seed=0)
    left = images[..., :16]
    is_fg = (left != torch.tensor(BACKGROUND, dtype=torch.uint8).view(1, 3, 1, 1)).any(
        1, keepdim=True
    )
    colour = left.amax((2, 3), keepdim=True)
    other = PALETTE[
        (PALETTE.unsqueeze(0) == colour.view(-1, 1, 3)).all(2).int().argmax(1).add(1) % K
    ]
    images[..., :16] = torch.where(is_fg, other.view(-1, 3, 1, 1), left)
    assert not consistency(images).any()


def test_slightly_blurred_images_still_pass():
    """Rim pixels blend into the background; the colour vote must not be swayed by them."""
    images, _ = make_synthetic(512, 32, 8, seed=2)
    blurred = gaussian_blur(images.float() / 127.5 - 1.0, [5, 5], [0.7, 0.7])
    assert consistency(blurred).float().mean() > 0.9


def test_colour_table_matches_direct_distances():
    """consistency() classifies pixels through a lookup table; it must equal the plain rule."""
    g = torch.Generator().manual_seed(0)
    near_palette = PALETTE.long().repeat(500, 1) + torch.randint(-70, 71, (4000, 3), generator=g)
    near_bg = torch.tensor(BACKGROUND) + torch.randint(-90, 91, (2000, 3), generator=g)
    anywhere = torch.randint(0, 256, (20000, 3), generator=g)
    c = torch.cat([near_palette, near_bg, anywhere]).clamp(0, 255)
    best, nearest = torch.cdist(c.double(), PALETTE.double()).min(1)
    is_bg = (c.double() - torch.tensor(BACKGROUND)).norm(dim=1) <= synthetic._FG
    expected = torch.where(
        is_bg, synthetic._BG, torch.where(best <= synthetic._TOL, nearest, synthetic._UNMATCHED)
    )
    table = synthetic._colour_table(torch.device("cpu"))
    assert torch.equal(table[(c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]].long(), expected)
