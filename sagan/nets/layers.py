"""Layer factories and conditional batch norm.

Spectral norm is PyTorch's own parametrization (one power iteration per training
forward, ``u`` persisting across steps), applied once here so that no model code
branches on it, and always computed in fp32 (:class:`SpectralNormFP32`). Weights are
initialised *before* spectral norm is attached, so its first ``u`` estimate is
computed from the initialised weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm


def init_weight(weight: torch.Tensor, scheme: str) -> None:
    """Xavier-uniform (the official TF code) or orthogonal (BigGAN-PyTorch, StudioGAN)."""
    if scheme == "xavier":
        nn.init.xavier_uniform_(weight)
    elif scheme == "ortho":
        nn.init.orthogonal_(weight)
    else:  # pragma: no cover - the config rejects other values
        raise ValueError(f"unknown init scheme {scheme!r}")


class SpectralNormFP32(_SpectralNorm):
    """PyTorch's spectral-norm parametrization, with autocast off inside it.

    CUDA autocast runs ``torch.mv`` in bf16/fp16, so under mixed precision the power
    iteration and sigma would be computed from a rounded weight and rounded vectors:
    ``u`` drifts and ``W / sigma`` is no longer normalised to fp32 accuracy. Here the
    whole parametrization (power iteration, sigma, ``W / sigma``) runs with autocast
    disabled for the weight's device, on the fp32 master weight; the layer that uses
    the normalised weight still runs under autocast. (CPU autocast leaves ``mv`` in
    fp32 today; turning it off here covers both devices and any future op list.)

    Without autocast this is torch's ``_SpectralNorm`` exactly: same numerics, same
    buffers, so state dicts keep their keys (``parametrizations.weight.original``,
    ``parametrizations.weight.0._u``, ``parametrizations.weight.0._v``).
    """

    def __init__(self, weight: torch.Tensor, n_power_iterations: int = 1, dim: int = 0):
        # The 15 warm-up iterations torch runs here, too, even if a model is built under autocast.
        with torch.autocast(weight.device.type, enabled=False):
            super().__init__(weight, n_power_iterations, dim)

    # Set by held_power_iteration(): sigma from one power iteration that is not stored.
    hold = False

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast(weight.device.type, enabled=False):
            if not (self.training and self.hold and weight.ndim > 1):
                return super().forward(weight)
            # The official code's update_collection="NO_OPS": the same iteration a
            # training forward makes, on copies of u and v, so they stay where they are.
            w = self._reshape_weight_to_matrix(weight)
            with torch.no_grad():
                u = F.normalize(torch.mv(w, self._v), dim=0, eps=self.eps)
                v = F.normalize(torch.mv(w.H, u), dim=0, eps=self.eps)
            return weight / torch.vdot(u, torch.mv(w, v))


@contextmanager
def held_power_iteration(module: nn.Module) -> Iterator[None]:
    """Within this block, ``module``'s spectral norms do not move their ``u`` and ``v``
    (the G step's pass through D in the official code)."""
    norms = [m for m in module.modules() if isinstance(m, SpectralNormFP32)]
    for m in norms:
        m.hold = True
    try:
        yield
    finally:
        for m in norms:
            m.hold = False


def spectral_norm(module: nn.Module, name: str = "weight") -> nn.Module:
    """Attach :class:`SpectralNormFP32` to ``module.<name>``: one power iteration per
    training forward (Miyato et al. 2018; ``n_power_iterations=1`` as in the official
    SAGAN code), ``eps`` and ``dim=0`` as ``torch.nn.utils.parametrizations.spectral_norm``.

    Returns:
        ``module``, parametrized in place.
    """
    weight = getattr(module, name)
    parametrize.register_parametrization(
        module, name, SpectralNormFP32(weight, n_power_iterations=1, dim=0)
    )
    return module


def _finish(module: nn.Module, sn: bool, init: str) -> nn.Module:
    init_weight(module.weight, init)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return spectral_norm(module) if sn else module


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


# The official code's batch-norm decays as PyTorch momenta (momentum = 1 - decay).
OFFICIAL_BN_MOMENTUM = {"conditional": 1 - 0.999, "last": 1 - 0.9999}


def bn_momenta(setting: str | float) -> dict[str, float]:
    """``model.bn_momentum`` as a momentum for each kind of BN (conditional, last)."""
    if setting == "official":
        return dict(OFFICIAL_BN_MOMENTUM)
    return {"conditional": float(setting), "last": float(setting)}


class GroupBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in training, normalises each group of ``group`` samples over
    its own statistics, as the official code's towers of 64 did; the running
    statistics take each group's update in turn. ``group=None`` is plain BatchNorm2d,
    with the same parameters and buffers either way."""

    def __init__(self, ch: int, momentum: float, affine: bool = True, group: int | None = None):
        super().__init__(ch, momentum=momentum, affine=affine)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.group is None or x.shape[0] <= self.group:
            return super().forward(x)
        return torch.cat([super(GroupBatchNorm2d, self).forward(c) for c in x.split(self.group)])


class CondBatchNorm2d(nn.Module):
    """Class-conditional batch norm: BN without affine, then a per-class gain and bias.

    As in the official code's ``ConditionalBatchNorm``: one gain/bias row per class,
    initialised to 1 and 0. With ``num_classes == 0`` it is a plain affine BN.
    """

    def __init__(self, ch: int, num_classes: int, momentum: float = 0.1, group: int | None = None):
        super().__init__()
        self.conditional = num_classes > 0
        self.bn = GroupBatchNorm2d(ch, momentum, affine=not self.conditional, group=group)
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
    return sum(
        1
        for m in module.modules()
        if parametrize.is_parametrized(m, "weight")
        and any(isinstance(p, _SpectralNorm) for p in m.parametrizations.weight)
    )
