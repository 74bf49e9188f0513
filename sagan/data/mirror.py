"""The synthetic ``mirror`` mode: texture tied across the image, and its exact score.

Every image is an 8x8 grid of square cells (4x4 pixels at 32x32). The two cell
columns at the left edge hold a random binary texture: each cell is either the
class's colour (``PALETTE[label]``) or the dark background, independently. The two
columns at the right edge hold its mirror image (cell column ``c`` is copied to
``7 - c``), and the four columns between them are plain background. Every tied pair
of cells is therefore more than half the image apart (20 and 28 pixels at 32x32),
and what ties them is detail at the scale of an 8x8 feature map: 16 random bits per
image that only the left band can tell the right band. A conv stack carries that
only through several layers; an attention block can read the partner cell in one
step (docs/measured.md, probe section).

:func:`mirror` scores that rule without learning anything. :func:`realistic` checks
first that both bands look like the data (clean cells of one palette colour and the
background, a texture neither blank, full, smooth nor striped), so that a blank
image, a constant one or a coarse symmetric pattern scores 0 however symmetric it
is. What lies between the bands is not scored. A realistic image scores ``2 a - 1``,
where ``a`` is the fraction of its 16 cell pairs that match: real images score
exactly 1, two unrelated halves 0 on average (chance), an unrealistic image (noise,
blank, flat) 0.

Version 1 of this mode (16x16 cells, bands of four columns, 64 bits, and a plain
middle required by the realism check) was dropped: in 3000 steps of the probe's
model no arm mirrored anything and no generated image kept the middle plain
(docs/measured.md, probe section).

The other mode, ``objects``, is :mod:`sagan.data.synthetic`; this module reuses its
palette, background and colour table.
"""

from __future__ import annotations

import torch

from sagan.data.synthetic import _BG, BACKGROUND, PALETTE, _colour_table, to_levels

# Bumped whenever make_mirror's output changes (caches keyed on the data's
# fingerprint and run ids follow it), and SCORE_VERSION whenever mirror() or
# realistic() changes (the evaluation protocol records it).
VERSION = 2
SCORE_VERSION = 2

CELLS = 8  # cells per side
BAND = 2  # cell columns of each textured band; the middle CELLS - 2 * BAND are plain

# realistic()'s thresholds. A cell is clean when at least _CLEAN of its pixels are
# the image's texture colour (an "on" cell) or the background (an "off" cell). A band
# (16 cells, 8 horizontally and 14 vertically adjacent pairs) is realistic when at
# least _MIN_CLEAN of its cells are clean, the fraction of its clean cells that are
# on lies in _FILL, and the fractions of its horizontally and of its vertically
# adjacent clean pairs that are equal lie in _AGREE. Random cells give 0.5 for each;
# blank or full bands give 0 or 1, smooth or striped ones an agreement near 1 or 0.
# _AGREE is wide because a band has only 8 horizontal pairs: at [0.25, 0.75] a
# random band would fail 29% of the time, at [0.125, 0.875] under 1%.
_CLEAN = 0.75
_MIN_CLEAN = 0.9
_FILL = (0.25, 0.75)
_AGREE = (0.125, 0.875)

# Images per scoring chunk, to bound memory at 128x128.
_CHUNK = 1024


def _band_ok(on: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """bool ``[...]``: whether bands of cells (``on``, ``clean``: bool ``[..., rows, cols]``)
    look like random texture (see the thresholds above)."""
    n = clean.sum((-2, -1))
    fill = (on & clean).sum((-2, -1)) / n.clamp(min=1)
    ok = (
        (n >= _MIN_CLEAN * clean.shape[-1] * clean.shape[-2])
        & (fill >= _FILL[0])
        & (fill <= _FILL[1])
    )
    for dim in (-1, -2):  # along rows and along columns: stripes fail one of them
        a, b = _neighbours(on, dim)
        ca, cb = _neighbours(clean, dim)
        both = ca & cb
        agreement = ((a == b) & both).sum((-2, -1)) / both.sum((-2, -1)).clamp(min=1)
        ok &= (agreement >= _AGREE[0]) & (agreement <= _AGREE[1])
    return ok


def _neighbours(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each element and its next neighbour along ``dim`` (the last one dropped)."""
    n = x.shape[dim]
    return x.narrow(dim, 0, n - 1), x.narrow(dim, 1, n - 1)


def make_mirror(
    n: int, resolution: int, n_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` images of the mirrored-texture dataset.

    Args:
        n: number of images.
        resolution: side ``R`` of the square images (32, 64 or 128); a cell is ``R / 8``.
        n_classes: number of texture colours, 1 to ``len(PALETTE)``; the label is the colour.
        seed: the images are a function of ``(n, resolution, n_classes, seed)`` alone.

    Returns:
        ``(images, labels)``: uint8 ``[n, 3, R, R]`` and int64 ``[n]``, labels uniform
        in ``0 .. n_classes - 1``. Every image passes :func:`realistic` (a texture that
        would not is drawn again), so every real image scores exactly 1.
    """
    if not 1 <= n_classes <= len(PALETTE):
        raise ValueError(f"n_classes must be between 1 and {len(PALETTE)}, got {n_classes}")
    if resolution % CELLS:
        raise ValueError(f"resolution must be a multiple of {CELLS}, got {resolution}")
    g = torch.Generator().manual_seed(seed % (1 << 64))
    labels = torch.randint(n_classes, (n,), generator=g)
    bits = torch.rand(n, CELLS, BAND, generator=g) < 0.5
    clean = torch.ones(CELLS, BAND, dtype=torch.bool)
    while True:  # rare: a band far from half full, or far from random-looking
        bad = (~_band_ok(bits, clean)).nonzero().squeeze(1)
        if not len(bad):
            break
        bits[bad] = torch.rand(len(bad), CELLS, BAND, generator=g) < 0.5
    on = torch.zeros(n, CELLS, CELLS, dtype=torch.bool)
    on[..., :BAND] = bits
    on[..., CELLS - BAND :] = bits.flip(-1)
    cell = resolution // CELLS
    on = on.repeat_interleave(cell, 1).repeat_interleave(cell, 2)
    background = torch.tensor(BACKGROUND, dtype=torch.uint8).view(1, 3, 1, 1)
    images = torch.where(on.unsqueeze(1), PALETTE[labels].view(n, 3, 1, 1), background)
    return images.contiguous(), labels


def _cells(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(on, clean)`` of a chunk: bool ``[B, 8, 8]`` cells.

    The image's texture colour is the palette colour with the most pixels in the two
    bands; a cell is on (off) when at least ``_CLEAN`` of its pixels are that colour
    (the background).
    """
    B, _, H, W = images.shape
    x = to_levels(images)
    cls = _colour_table(images.device)[(x[:, 0] << 16) | (x[:, 1] << 8) | x[:, 2]].long()
    ch, cw = H // CELLS, W // CELLS
    band = BAND * cw
    bands = torch.cat([cls[..., :band], cls[..., W - band :]], -1)
    votes = torch.stack([(bands == k).flatten(1).sum(1) for k in range(len(PALETTE))], 1)
    colour = votes.argmax(1).view(B, 1, 1)
    per_cell = lambda m: m.view(B, CELLS, ch, CELLS, cw).sum((2, 4))  # noqa: E731
    n_on = per_cell(cls == colour)
    n_off = per_cell(cls == _BG)
    need = _CLEAN * ch * cw
    on, off = n_on >= need, n_off >= need
    return on, on | off


def _scores(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(realistic bool [B], score float [B])`` of a batch, in chunks."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
    H, W = images.shape[-2:]
    if H % CELLS or W % CELLS:
        raise ValueError(f"image sides must be multiples of {CELLS}, got {H}x{W}")
    real, score = [], []
    for s in range(0, len(images), _CHUNK):
        on, clean = _cells(images[s : s + _CHUNK])
        left, right = (slice(None, BAND), slice(CELLS - BAND, None))
        ok = _band_ok(on[..., left], clean[..., left]) & _band_ok(on[..., right], clean[..., right])
        partner_on, partner_clean = on[..., right].flip(-1), clean[..., right].flip(-1)
        match = clean[..., left] & partner_clean & (on[..., left] == partner_on)
        agree = match.flatten(1).float().mean(1)
        real.append(ok)
        score.append(torch.where(ok, 2 * agree - 1, torch.zeros_like(agree)))
    return torch.cat(real), torch.cat(score)


def realistic(images: torch.Tensor) -> torch.Tensor:
    """Whether each image looks like the mirror data, symmetric or not.

    Both bands must be mostly clean cells of one palette colour and the background,
    neither nearly blank nor nearly full, and no smoother or more striped than random
    cells would be. What lies between the bands is not looked at.

    Args:
        images: uint8 ``[B,3,H,W]`` in 0..255, or float in [-1, 1]; sides multiples of 8.

    Returns:
        bool ``[B]`` on the input's device.
    """
    return _scores(images)[0]


def mirror(images: torch.Tensor) -> torch.Tensor:
    """How well each image obeys the mirror rule: ``2 a - 1`` for a :func:`realistic`
    image whose fraction of matching cell pairs (left cell, its mirror partner; an
    unclean cell matches nothing) is ``a``, and 0 for an unrealistic one.

    Real images score exactly 1; images whose two bands come from unrelated images
    0 on average (a single image can score below 0); noise and blank images 0.

    Args:
        images: uint8 ``[B,3,H,W]`` in 0..255, or float in [-1, 1]; sides multiples of 8.

    Returns:
        float32 ``[B]`` in [-1, 1] on the input's device.
    """
    return _scores(images)[1]


def protocol() -> dict:
    """What the ``mirror`` metric's record says of how it was computed."""
    return {
        "score_version": SCORE_VERSION,
        "cells": CELLS,
        "band": BAND,
        "clean": _CLEAN,
        "min_clean": _MIN_CLEAN,
        "fill": list(_FILL),
        "agreement": list(_AGREE),
    }


__all__ = ["BAND", "CELLS", "SCORE_VERSION", "VERSION", "make_mirror", "mirror", "realistic"]
