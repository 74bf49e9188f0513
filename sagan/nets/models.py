"""SAGAN generator and discriminator (ResNet style, 32/64/128).

Layouts are in :mod:`sagan.nets.arch`. The blocks follow the official TensorFlow code:

* G block: CBN, ReLU, nearest x2 upsample, conv3x3, CBN, ReLU, conv3x3; shortcut
  upsample + conv1x1.
* D block: ReLU, conv3x3, ReLU, conv3x3, 2x2 average pool; shortcut conv1x1 + pool.
  The first D block is the "optimized" one (no ReLU before its first conv, pool
  before the shortcut conv).
* G ends with BN, ReLU, conv3x3, tanh; D with ReLU, global *sum* pool, linear, plus
  the projection term <embed(y), h> when conditional (Miyato & Koyama 2018).

An attention block (or, for the paper's control arm, a plain residual block that
keeps the shape) goes after the first block that outputs a map of each requested
size.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sagan.config import ModelConfig
from sagan.nets.arch import ARCHS
from sagan.nets.attention import SelfAttention
from sagan.nets.layers import CondBatchNorm2d, GroupBatchNorm2d, Layers, bn_momenta


class GBlock(nn.Module):
    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        upsample: bool,
        layers: Layers,
        num_classes: int,
        bn: dict | None = None,
    ):
        super().__init__()
        bn = bn or {}
        self.upsample = upsample
        self.bn1 = CondBatchNorm2d(in_ch, num_classes, **bn)
        self.conv1 = layers.conv(in_ch, out_ch, 3)
        self.bn2 = CondBatchNorm2d(out_ch, num_classes, **bn)
        self.conv2 = layers.conv(out_ch, out_ch, 3)
        self.shortcut = layers.conv(in_ch, out_ch, 1) if (upsample or in_ch != out_ch) else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        h = F.relu(self.bn1(x, y))
        if self.upsample:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
        if self.shortcut is not None:
            x = self.shortcut(x)
        return x + h


class DBlock(nn.Module):
    def __init__(
        self, in_ch: int, out_ch: int, downsample: bool, layers: Layers, optimized: bool = False
    ):
        super().__init__()
        self.downsample = downsample
        self.optimized = optimized
        self.conv1 = layers.conv(in_ch, out_ch, 3)
        self.conv2 = layers.conv(out_ch, out_ch, 3)
        self.shortcut = layers.conv(in_ch, out_ch, 1) if (downsample or in_ch != out_ch) else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = x if self.optimized else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        if self.optimized:
            # The optimized block pools the input before its shortcut conv.
            x = self.shortcut(F.avg_pool2d(x, 2) if self.downsample else x)
        elif self.shortcut is not None:
            x = self.shortcut(x)
            if self.downsample:
                x = F.avg_pool2d(x, 2)
        return x + h


def _stack(
    arch_blocks, sizes, cfg: ModelConfig, layers: Layers, make_block, make_residual
) -> nn.ModuleList:
    """The network's blocks, with an attention block (or, for the paper's control arm,
    a shape-keeping residual block) after the first block that outputs each size in
    ``sizes``."""
    blocks: list[nn.Module] = []
    placed: set[int] = set()
    for i, b in enumerate(arch_blocks):
        blocks.append(make_block(i, b))
        if b.size in sizes and b.size not in placed:
            placed.add(b.size)
            c = b.out_mult * cfg.ch
            if cfg.attn_block == "attention":
                blocks.append(SelfAttention(c, layers, cfg.attention_variant, cfg.attention_kernel))
            else:
                blocks.append(make_residual(c))
    return nn.ModuleList(blocks)


class Generator(nn.Module):
    """SAGAN generator: ``G(z, y) -> images in [-1, 1]``, [B, 3, R, R].

    Attributes:
        z_dim, num_classes (0 = unconditional), resolution.
    """

    def __init__(self, cfg: ModelConfig, resolution: int, num_classes: int):
        super().__init__()
        arch = ARCHS[resolution]
        ch = cfg.ch
        self.z_dim = cfg.z_dim
        self.num_classes = num_classes
        self.resolution = resolution
        self.base = arch.base
        layers = Layers(cfg.sn_g, cfg.init)
        momenta = bn_momenta(cfg.bn_momentum)
        cbn = {"momentum": momenta["conditional"], "group": cfg.bn_group}
        first = arch.g_blocks[0].in_mult * ch
        self.first_ch = first
        self.linear = layers.linear(cfg.z_dim, arch.base * arch.base * first)
        self.blocks = _stack(
            arch.g_blocks,
            cfg.attn_g,
            cfg,
            layers,
            lambda i, b: GBlock(
                b.in_mult * ch, b.out_mult * ch, b.resample, layers, num_classes, cbn
            ),
            lambda c: GBlock(c, c, False, layers, num_classes, cbn),
        )
        last = arch.g_blocks[-1].out_mult * ch
        self.bn = GroupBatchNorm2d(last, momenta["last"], group=cfg.bn_group)
        self.conv_out = layers.conv(last, 3, 3)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        y = y if self.num_classes > 0 else None
        h = self.linear(z).view(z.shape[0], self.first_ch, self.base, self.base)
        for block in self.blocks:
            h = block(h, y)
        return torch.tanh(self.conv_out(F.relu(self.bn(h))))


class Discriminator(nn.Module):
    """SAGAN discriminator with projection: ``D(x, y) -> logits [B]``."""

    def __init__(self, cfg: ModelConfig, resolution: int, num_classes: int):
        super().__init__()
        arch = ARCHS[resolution]
        ch = cfg.ch
        self.num_classes = num_classes
        layers = Layers(cfg.sn_d, cfg.init)
        self.blocks = _stack(
            arch.d_blocks,
            cfg.attn_d,
            cfg,
            layers,
            # The first D block is the optimized one and reads the RGB image.
            lambda i, b: DBlock(
                3 if i == 0 else b.in_mult * ch,
                b.out_mult * ch,
                b.resample,
                layers,
                optimized=i == 0,
            ),
            lambda c: DBlock(c, c, False, layers),
        )
        last = arch.d_blocks[-1].out_mult * ch
        self.linear = layers.linear(last, 1)
        self.embed = layers.embedding(num_classes, last) if num_classes > 0 else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = x
        for block in self.blocks:
            h = block(h)
        h = F.relu(h).sum(dim=(2, 3))
        out = self.linear(h).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(y) * h).sum(dim=1)
        return out


def attention_gammas(module: nn.Module) -> dict[str, float]:
    """``{'blocks.3': gamma, ...}`` for every attention block (one host sync each)."""
    return {
        name: float(m.gamma.detach())
        for name, m in module.named_modules()
        if isinstance(m, SelfAttention)
    }


def build_models(
    cfg: ModelConfig, resolution: int, num_classes: int
) -> tuple[Generator, Discriminator]:
    """G and D for a model config. ``num_classes == 0`` builds unconditional models."""
    return Generator(cfg, resolution, num_classes), Discriminator(cfg, resolution, num_classes)


def load_generator(cfg, state: dict, *, ema: bool, device: torch.device | str) -> Generator:
    """G (or G_ema) from a checkpoint's ``state``, on ``device``, in the memory format
    the run trained in (``train.channels_last``): a checkpoint scored later gives the
    numbers its run gave, not numbers rounded another way."""
    G = Generator(cfg.model, cfg.data.resolution, state["num_classes"])
    G.load_state_dict(state["G_ema"] if ema else state["G"])
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    return G.to(device, memory_format=fmt)
