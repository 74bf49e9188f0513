"""A procedural dataset whose rule spans the whole image, and an exact check of it.

Every image has a plain dark background, one object in the left half and one in the
right half. Both objects have the class's shape (disc, square, diamond, plus, ring,
triangle, X, frame) and the SAME colour, drawn uniformly from :data:`PALETTE`
independently of the class. Their positions and sizes are drawn independently, so
no fixed offset relates the two objects: to paint the second object the right colour
a generator has to look across half the image, which is what self-attention offers
and a stack of small convolutions struggles with (the paper's argument, Zhang et al.
2018, section 1).

:func:`consistency` scores that rule without learning anything: real images score
exactly 1.0, images whose halves come from two unrelated images about ``1/K``
(``K = len(PALETTE)``), and noise or blank images 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Bumped whenever make_synthetic's output changes, so that caches keyed on the
# dataset fingerprint are invalidated.
VERSION = 1

BACKGROUND = (16, 16, 16)

# Bright colours far from the background and from each other (pairwise RGB distance
# >= 127), so that a blurry generator still lands nearest the colour it meant.
PALETTE = torch.tensor(
    [
        [230, 40, 40],  # red
        [40, 200, 70],  # green
        [50, 60, 240],  # blue
        [240, 220, 50],  # yellow
        [40, 210, 220],  # cyan
        [210, 60, 210],  # magenta
        [240, 240, 240],  # white
        [140, 140, 140],  # grey
    ],
    dtype=torch.uint8,
)

# Object radius as a fraction of the resolution: about 4 to 6 pixels at 32x32.
RADIUS = (0.13, 0.19)

# Shapes on coordinates (u, v) normalised by the object's radius; y points down.
# Each fits in the unit square, so an object never reaches past its radius.
_Shape = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _disc(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u * u + v * v <= 1.0


def _square(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.maximum(u.abs(), v.abs()) <= 0.8


def _diamond(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u.abs() + v.abs() <= 1.0


def _plus(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    a, b = u.abs(), v.abs()
    return ((a <= 0.32) & (b <= 1.0)) | ((b <= 0.32) & (a <= 1.0))


def _ring(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    d = u * u + v * v
    return (d <= 1.0) & (d >= 0.5**2)


def _triangle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (v <= 0.8) & (u.abs() <= (v + 1.0) / 1.8)


def _cross(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    near_diagonal = ((u - v).abs() <= 0.45) | ((u + v).abs() <= 0.45)
    return near_diagonal & (torch.maximum(u.abs(), v.abs()) <= 0.85)


def _frame(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    m = torch.maximum(u.abs(), v.abs())
    return (m <= 0.9) & (m >= 0.45)


SHAPES: tuple[_Shape, ...] = (_disc, _square, _diamond, _plus, _ring, _triangle, _cross, _frame)
SHAPE_NAMES = ("disc", "square", "diamond", "plus", "ring", "triangle", "cross", "frame")

# consistency() thresholds, in 0..255 RGB units. A pixel is foreground when it is
# further than _FG from the background, and votes for its nearest palette colour
# when it is within _TOL of it. A half holds an object of the winning colour when
# its foreground covers at most _MAX_AREA of the half (drawn objects cover 5% to
# 23%; noise and flat grey cover nearly all), the winner's pixels cover at least
# _MIN_AREA of the half, and the winner has at least _MAJORITY of the votes and
# _COVER of the foreground. Voting, rather than averaging the foreground's colour,
# keeps a slightly blurred object (whose rim blends into the background) passing.
_FG = 80.0
_TOL = 60.0
_MIN_AREA = 0.015
_MAX_AREA = 0.40
_MAJORITY = 0.5
_COVER = 0.25

# Elements per rendering/scoring chunk: bounds memory at 128x128.
_CHUNK = 1 << 23


def make_synthetic(
    n: int, resolution: int, n_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` images of the two-object, same-colour dataset.

    Args:
        n: number of images.
        resolution: side ``R`` of the square images (32, 64 and 128 are used).
        n_classes: number of shapes used, 1 to ``len(SHAPES)``; the label is the shape.
        seed: the images are a function of ``(n, resolution, n_classes, seed)`` alone.

    Returns:
        ``(images, labels)``: uint8 ``[n, 3, R, R]`` and int64 ``[n]``, labels uniform
        in ``0 .. n_classes - 1``.
    """
    if not 1 <= n_classes <= len(SHAPES):
        raise ValueError(f"n_classes must be between 1 and {len(SHAPES)}, got {n_classes}")
    if resolution < 16:
        raise ValueError(f"resolution must be at least 16 for objects to survive, got {resolution}")
    R = resolution
    g = torch.Generator().manual_seed(seed % (1 << 64))
    labels = torch.randint(n_classes, (n,), generator=g)
    colours = PALETTE[torch.randint(len(PALETTE), (n,), generator=g)]
    lo, hi = RADIUS
    r = (lo + (hi - lo) * torch.rand(n, 2, generator=g, dtype=torch.float64)) * R
    # A margin keeps each object inside its half, clear of the edge and the midline.
    margin = R / 32
    span_x = R / 2 - 2 * (r + margin)
    span_y = R - 2 * (r + margin)
    cx = margin + r + span_x * torch.rand(n, 2, generator=g, dtype=torch.float64)
    cx[:, 1] += R / 2
    cy = margin + r + span_y * torch.rand(n, 2, generator=g, dtype=torch.float64)
    r, cx, cy = r.float(), cx.float(), cy.float()

    images = torch.empty(n, 3, R, R, dtype=torch.uint8)
    images[:] = torch.tensor(BACKGROUND, dtype=torch.uint8).view(1, 3, 1, 1)
    pix = torch.arange(R, dtype=torch.float32) + 0.5
    side = (torch.arange(R) >= R // 2).long()  # which object each column belongs to
    step = max(1, _CHUNK // (R * R))
    for s in range(0, n, step):
        e = min(n, s + step)
        # Per column: the centre and radius of the object of that column's half.
        col_r = r[s:e][:, side].unsqueeze(1)
        u = (pix.view(1, 1, R) - cx[s:e][:, side].unsqueeze(1)) / col_r
        v = (pix.view(1, R, 1) - cy[s:e][:, side].unsqueeze(1)) / col_r
        mask = torch.zeros(e - s, R, R, dtype=torch.bool)
        lab = labels[s:e]
        for k in range(n_classes):
            idx = (lab == k).nonzero().squeeze(1)
            if len(idx):
                mask[idx] = SHAPES[k](u[idx], v[idx])
        chunk = images[s:e]
        chunk.copy_(torch.where(mask.unsqueeze(1), colours[s:e].view(-1, 3, 1, 1), chunk))
    return images, labels


def to_levels(images: torch.Tensor) -> torch.Tensor:
    """Integer colour levels 0..255 (int32 ``[B,3,H,W]``) from uint8 or float in [-1, 1].

    Float input is rounded to the nearest level, so a real image scores the same
    whether it arrives as uint8 or as the ``x / 127.5 - 1`` tensor training feeds D.
    """
    if images.dtype == torch.uint8:
        return images.int()
    if not images.is_floating_point():
        raise TypeError(f"expected uint8 or float images, got {images.dtype}")
    return ((images.float() + 1.0) * 127.5).round_().clamp_(0.0, 255.0).int()


# Pixel classes in the colour table: a palette index 0..K-1, or one of these.
_UNMATCHED = len(PALETTE)  # foreground, but no palette colour within _TOL
_BG = len(PALETTE) + 1  # within _FG of the background
_tables: dict[torch.device, torch.Tensor] = {}


def _colour_table(device: torch.device) -> torch.Tensor:
    """uint8 ``[256**3]``: the class of every RGB colour, indexed ``(r << 16) | (g << 8) | b``.

    Built once per device (16 MiB): classifying a pixel is then one lookup, and the
    thresholds are applied to exact integer squared distances.
    """
    if device not in _tables:
        palette = PALETTE.int()
        bg = torch.tensor(BACKGROUND, dtype=torch.int32)
        # The balls painted below must not overlap, so that "within _TOL of a palette
        # colour" means "within _TOL of the nearest one" and no ball overwrites another.
        gaps = torch.cdist(palette.float(), palette.float()) + 1e9 * torch.eye(len(palette))
        if gaps.min() <= 2 * _TOL or (palette - bg).float().norm(dim=1).min() <= _TOL + _FG:
            raise RuntimeError("PALETTE colours are too close to each other or to BACKGROUND")
        table = torch.full((256, 256, 256), _UNMATCHED, dtype=torch.uint8)
        balls = [(c, _TOL, k) for k, c in enumerate(palette)] + [(bg, _FG, _BG)]
        for centre, radius, cls in balls:
            lo = (centre - int(radius)).clamp(min=0)
            hi = (centre + int(radius)).clamp(max=255) + 1
            r, g, b = ((torch.arange(lo[c], hi[c]) - centre[c]).square().int() for c in range(3))
            inside = r.view(-1, 1, 1) + g.view(1, -1, 1) + b.view(1, 1, -1) <= int(radius**2)
            table[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]][inside] = cls
        _tables[device] = table.flatten().to(device)
    return _tables[device]


def consistency(images: torch.Tensor) -> torch.Tensor:
    """Whether each image obeys the synthetic dataset's long-range rule.

    Each half's foreground (pixels far from the background colour) must be an object
    of plausible size, most of whose palette-coloured pixels share one palette
    colour; the image passes when both halves hold objects of the same palette
    colour. Shape is not checked.

    Args:
        images: uint8 ``[B,3,H,W]`` in 0..255, or float ``[B,3,H,W]`` in [-1, 1]
            (generator output); any device.

    Returns:
        bool ``[B]`` on the input's device.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
    B, _, H, W = images.shape
    device = images.device
    table = _colour_table(device)
    n_cls = _BG + 1
    half = (torch.arange(W, device=device) >= W // 2).int()
    n_pix = torch.tensor([H * (W // 2), H * (W - W // 2)], device=device)
    out = torch.empty(B, dtype=torch.bool, device=device)
    step = max(1, _CHUNK // (3 * H * W))
    for s in range(0, B, step):
        x = to_levels(images[s : s + step])
        b = x.shape[0]
        cls = table[(x[:, 0] << 16) | (x[:, 1] << 8) | x[:, 2]]
        # One bincount gives every (image, half, class) pixel count.
        image = torch.arange(b, device=device, dtype=torch.int32).view(b, 1, 1)
        key = (image * 2 + half) * n_cls + cls
        counts = torch.bincount(key.flatten(), minlength=b * 2 * n_cls).view(b, 2, n_cls)
        votes = counts[..., :_UNMATCHED]
        n_win, win = votes.max(2)
        area = n_pix - counts[..., _BG]
        ok = (
            (area <= _MAX_AREA * n_pix)
            & (n_win >= _MIN_AREA * n_pix)
            & (n_win >= _MAJORITY * votes.sum(2))
            & (n_win >= _COVER * area)
        )
        out[s : s + step] = ok.all(1) & (win[:, 0] == win[:, 1])
    return out


__all__ = ["PALETTE", "SHAPE_NAMES", "consistency", "make_synthetic"]
