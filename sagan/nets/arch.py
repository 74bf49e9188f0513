"""Architecture tables for the SAGAN generator and discriminator.

Each table lists, per residual block, the input and output width (as multiples of
``model.ch``), whether the block resamples, and the side of the feature map it
outputs. The 128 layout is the authors' TensorFlow code (brain-research/
self-attention-gan, ``generator_test``/``discriminator_test``); 64 follows the same
pattern one block shorter (as BigGAN-PyTorch's ``G_arch[64]``/``D_arch[64]``); 32 is
the SNGAN/CIFAR layout (G 256 wide, D 128 wide at ``ch=64``).

This module is pure data so that configs can validate attention placement without
importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

RESOLUTIONS = (32, 64, 128)
# The feature-map sizes the paper's ablation places attention at (Table 1).
ATTENTION_SIZES = (8, 16, 32, 64)


@dataclass(frozen=True)
class Block:
    in_mult: int  # input width / ch (0 = the RGB image)
    out_mult: int
    resample: bool  # upsample in G, downsample in D
    size: int  # side of the block's output feature map


@dataclass(frozen=True)
class Arch:
    resolution: int
    base: int  # side of G's first feature map (after the linear layer)
    g_blocks: tuple[Block, ...]
    d_blocks: tuple[Block, ...]


def _g(mults: list[int], start: int) -> tuple[Block, ...]:
    blocks, size = [], start
    for a, b in zip(mults[:-1], mults[1:], strict=True):
        size *= 2
        blocks.append(Block(a, b, True, size))
    return tuple(blocks)


ARCHS: dict[int, Arch] = {
    # Official code, 128x128: G 16ch@4 -> 16ch@8, 8ch@16, 4ch@32, 2ch@64, 1ch@128.
    128: Arch(
        128,
        4,
        _g([16, 16, 8, 4, 2, 1], 4),
        (
            Block(0, 1, True, 64),  # optimized block: no ReLU before its first conv
            Block(1, 2, True, 32),
            Block(2, 4, True, 16),
            Block(4, 8, True, 8),
            Block(8, 16, True, 4),
            Block(16, 16, False, 4),
        ),
    ),
    64: Arch(
        64,
        4,
        _g([16, 16, 8, 4, 2], 4),
        (
            Block(0, 1, True, 32),
            Block(1, 2, True, 16),
            Block(2, 4, True, 8),
            Block(4, 8, True, 4),
            Block(8, 16, False, 4),
        ),
    ),
    # SNGAN CIFAR layout: G 4ch (256) throughout, D 2ch (128) throughout.
    32: Arch(
        32,
        4,
        _g([4, 4, 4, 4], 4),
        (
            Block(0, 2, True, 16),
            Block(2, 2, True, 8),
            Block(2, 2, False, 8),
            Block(2, 2, False, 8),
        ),
    ),
}


def attention_sizes(resolution: int, net: str) -> tuple[int, ...]:
    """Feature-map sizes at which ``net`` ('g' or 'd') can hold an attention block.

    A size qualifies if some block of the network outputs a map of that side and the
    paper's ablation uses it (8, 16, 32, 64). The block goes after the first block
    that outputs a map of that size, as in the official code (after the 32x32 block
    in both G and D at 128x128).
    """
    arch = ARCHS[resolution]
    blocks = arch.g_blocks if net == "g" else arch.d_blocks
    return tuple(sorted({b.size for b in blocks} & set(ATTENTION_SIZES)))
