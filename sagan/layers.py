"""Layer factories and conditional batch norm.

Spectral norm is PyTorch's own parametrization (one power iteration per training
forward, ``u`` persisting across steps), applied once here so that no model code
branches on it. Weights are initialised *before* spectral norm is attached, so its
first ``u`` estimate is computed from the initialised weights.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm


def init_weight(weight: torch.Tensor, scheme: str) -> None:
    """Xavier-uniform (the official TF code) or orthogonal (BigGAN-PyTorch, StudioGAN)."""
    if scheme == "xavier":
        nn.init.xavier_uniform_(weight)
    elif scheme == "ortho":
        nn.init.orthogonal_(weight)
    else:  # pragma: no cover - the config rejects other values
        raise ValueError(f"unknown init scheme {scheme!r}")


def _finish(module: nn.Module, sn: bool, init: str) -> nn.Module:
    init_weight(module.weight, init)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return spectral_norm(module, n_power_iterations=1) if sn else module


def conv(
    in_ch: int, out_ch: int, kernel: int = 3, *, sn: bool, init: str, bias: bool = True
) -> nn.Module:
    """A 'same'-padded convolution, spectrally normalised when ``sn``."""
    return _finish(nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=bias), sn, init)


def linear(in_f: int, out_f: int, *, sn: bool, init: str, bias: bool = True) -> nn.Module:
    return _finish(nn.Linear(in_f, out_f, bias=bias), sn, init)


def embedding(n: int, dim: int, *, sn: bool, init: str) -> nn.Module:
    return _finish(nn.Embedding(n, dim), sn, init)


class Layers:
    """The layer constructors one network uses, chosen once (cf. BigGAN's ``which_conv``)."""

    def __init__(self, sn: bool, init: str):
        self.sn = sn
        self.conv = partial(conv, sn=sn, init=init)
        self.linear = partial(linear, sn=sn, init=init)
        self.embedding = partial(embedding, sn=sn, init=init)


class CondBatchNorm2d(nn.Module):
    """Class-conditional batch norm: BN without affine, then a per-class gain and bias.

    As in the official code's ``ConditionalBatchNorm``: one gain/bias row per class,
    initialised to 1 and 0. With ``num_classes == 0`` it is a plain affine BN.
    """

    def __init__(self, ch: int, num_classes: int):
        super().__init__()
        self.conditional = num_classes > 0
        self.bn = nn.BatchNorm2d(ch, affine=not self.conditional)
        if self.conditional:
            self.gain = nn.Embedding(num_classes, ch)
            self.bias = nn.Embedding(num_classes, ch)
            nn.init.ones_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        h = self.bn(x)
        if not self.conditional:
            return h
        return h * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]


def count_spectral_norm(module: nn.Module) -> int:
    """Number of sub-modules whose weight is spectrally normalised."""
    from torch.nn.utils import parametrize

    return sum(
        1
        for m in module.modules()
        if parametrize.is_parametrized(m, "weight")
        and any(type(p).__name__ == "_SpectralNorm" for p in m.parametrizations.weight)
    )
