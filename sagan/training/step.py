"""SAGAN's training step, with no I/O: :class:`TrainStep`.

One call is one G step: ``train.n_dis`` D updates, then one G update, then the EMA
of G (Zhang et al. 2018, section 5: hinge loss, Adam with TTUR). It owns what the
update changes: G, D, the EMA copy, both optimizers and the training noise
generator. The loop around it (:class:`sagan.training.loop.Trainer`: data stream,
schedule, checkpoints, evaluation, resume) and the benchmark use it the same way.

Under DDP (``torch.distributed`` initialised, one process per device) the config's
batch size is the global batch: every rank draws the whole batch's noise from the
same generator and keeps its slice, and the data stream hands each rank its slice
of every global batch, so the stream of examples does not depend on the world size.
"""

from __future__ import annotations

import copy
import logging
from contextlib import nullcontext
from typing import Any

import torch

from sagan.config import Config, ConfigError
from sagan.nets.layers import held_power_iteration
from sagan.nets.losses import LOSSES
from sagan.nets.models import build_models

log = logging.getLogger(__name__)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` (on the CPU) on ``device``; to CUDA from pinned memory without blocking the
    host, so the copy overlaps the step that is running."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def draw_noise(
    noise: torch.Generator,
    batch: int,
    z_dim: int,
    num_classes: int,
    device: torch.device,
    local: slice = slice(None),
) -> tuple[torch.Tensor, torch.Tensor]:
    """z (standard normal, ``[batch, z_dim]``) and fake labels (uniform over
    ``num_classes``; zeros when 0) of one global batch, drawn from the CPU generator
    ``noise``; the ``local`` rows are moved to ``device``. What is drawn depends on
    the generator alone, never on the device."""
    z = torch.randn(batch, z_dim, generator=noise)
    if num_classes > 0:
        y = torch.randint(0, num_classes, (batch,), generator=noise)
    else:
        y = torch.zeros(batch, dtype=torch.long)
    return to_device(z[local], device), to_device(y[local], device)


def with_ema_copy(
    G: torch.nn.Module, ema: bool, sync_bn: bool
) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """G as the update trains it (its batch norms synchronised across the ranks when
    ``sync_bn``) and its EMA copy (``None`` without ``ema``).

    The copy is taken before the conversion: only rank 0 samples and evaluates G_ema,
    and a SyncBatchNorm in it, in train mode (``eval.g_mode: train``), would start a
    collective the other ranks never join. Both hold the same parameters and buffers.
    """
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if ema else None
    if sync_bn:
        G = torch.nn.SyncBatchNorm.convert_sync_batchnorm(G)
    return G, G_ema


class TrainStep:
    """G, D, their optimizers and the training noise; ``step(batches, first_bad, s)``.

    Builds the models from the global RNG: seed it first.

    Raises:
        ConfigError: a global batch the processes cannot share equally, or
            ``train.sync_bn`` without CUDA.
    """

    def __init__(
        self, cfg: Config, num_classes: int, device: torch.device, rank: int = 0, world: int = 1
    ):
        tc = cfg.train
        self.cfg, self.device, self.num_classes = cfg, device, num_classes
        self.cuda = device.type == "cuda"
        if tc.batch_size % world:
            raise ConfigError(
                f"train.batch_size: {tc.batch_size} (the global batch) is not divisible by "
                f"the {world} processes of this job"
            )
        if tc.sync_bn and world > 1 and not self.cuda:
            raise ConfigError("train.sync_bn: true needs CUDA (SyncBatchNorm has no CPU path)")
        # This rank's slice of every global batch.
        self.local = slice(rank * tc.batch_size // world, (rank + 1) * tc.batch_size // world)
        if self.cuda:
            from sagan.training.precision import set_tf32

            set_tf32(tc.tf32)
            torch.backends.cudnn.benchmark = tc.cudnn_benchmark
        G, D = build_models(cfg.model, cfg.data.resolution, num_classes)
        # NHWC activations and weights, on the CPU as on CUDA: oneDNN's and cuDNN's
        # fast convolution paths (see sagan.bench for what it buys).
        self.channels_last = tc.channels_last
        if tc.amp and not self.cuda:
            from sagan.training.machine import cpu_has_bf16

            if not cpu_has_bf16():
                log.warning(
                    "train.amp: true on a CPU without native bf16 (no avx512_bf16 or amx_bf16 "
                    "flag): bf16 is emulated here and much slower than fp32; "
                    "`python -m sagan.bench --sweep train.amp=false,true` measures it"
                )
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.G = G.to(device, memory_format=fmt)
        self.D = D.to(device, memory_format=fmt)
        self.G, self.G_ema = with_ema_copy(self.G, tc.ema is not None, tc.sync_bn and world > 1)
        # What the updates call: the DDP wrappers under several processes. The G update
        # calls D's module itself, so that D's gradient reducer never waits for
        # gradients D's frozen weights do not get; G's gradient still flows through it.
        self.G_step, self.D_step = self.G, self.D
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if self.cuda else None
            # Gradients as views of DDP's buckets: no copy into and out of the buckets.
            self.G_step = DDP(self.G, device_ids=ids, gradient_as_bucket_view=True)
            self.D_step = DDP(self.D, device_ids=ids, gradient_as_bucket_view=True)
        if tc.compile:
            # After the EMA copy: a deep copy of a compiled module would call the
            # original's compiled forward. In place (Module.compile), so state-dict keys
            # and the DDP wrappers stay as they are. Neither network breaks the graph
            # (spectral norm's parametrization, the held power iteration and SDPA
            # attention trace whole: tests/test_compile.py); each compiles once per mode
            # (D's update, G's no-grad pass, the G update through D with its power
            # iteration held, and eval).
            log.info(
                "train.compile: the first steps compile G and D (minutes on a CPU); a "
                "compiled run resumes to within rounding, not bit for bit"
            )
            self.G.compile()
            self.D.compile()
        # One fused kernel per optimizer step on CUDA; torch's default (foreach) elsewhere.
        fused = True if self.cuda else None
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=tc.lr_g, betas=tc.betas, fused=fused)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=tc.lr_d, betas=tc.betas, fused=fused)
        self.loss_d, self.loss_g = LOSSES[tc.loss]
        # The training noise (z and fake labels) comes from a generator of its own, saved
        # in every checkpoint: nothing else that draws random numbers (a data loader, an
        # evaluation, a library) can shift it, so a resumed run draws exactly what an
        # uninterrupted one does.
        # On the CPU whatever the device: MT19937 there, Philox on CUDA, so a generator on
        # the device would train another noise stream on a GPU under the same run id, and
        # its saved state would not resume on the other kind of device.
        self.noise = torch.Generator().manual_seed(tc.seed + 104729)

    def autocast(self):
        """bf16 autocast when ``train.amp``, on CUDA and on the CPU alike; the losses
        and spectral norm's power iteration stay in fp32 (``SpectralNormFP32``)."""
        if self.cfg.train.amp:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """z and fake labels: this rank's slice of the global batch's draw, on the device."""
        B, z_dim = self.cfg.train.batch_size, self.cfg.model.z_dim
        return draw_noise(self.noise, B, z_dim, self.num_classes, self.device, self.local)

    def ema_update(self, step: int) -> None:
        """G_ema moves towards G (a copy of it until ``train.ema_start``)."""
        tc = self.cfg.train
        decay = tc.ema if step > tc.ema_start else 0.0
        with torch.no_grad():
            # One foreach call each (a few fused kernels on CUDA, not one per tensor);
            # on the CPU bit for bit what per-tensor lerp_ and copy_ compute.
            ema_p = list(self.G_ema.parameters())
            torch._foreach_lerp_(ema_p, list(self.G.parameters()), 1.0 - decay)
            torch._foreach_copy_(list(self.G_ema.buffers()), list(self.G.buffers()))

    def __call__(self, batches: Any, first_bad: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """G step number ``step`` (1-based): its D updates, the G update and the EMA.

        ``batches`` yields ``(images, labels)`` on the device. ``first_bad`` (a device
        scalar, -1 until then) takes ``step`` when a loss is not finite: no host sync.
        Returns the losses and D's mean outputs as device scalars.
        """
        tc = self.cfg.train
        for _ in range(tc.n_dis):
            x, y = next(batches)
            z, y_fake = self.draw()
            b = len(z)
            with self.autocast():
                with torch.no_grad():
                    fake = self.G(z, y_fake)
                # One D forward over real and fake: one power iteration per D step.
                d_out = self.D_step(
                    torch.cat([x, fake.to(x.dtype)]), torch.cat([y, y_fake])
                ).float()
                d_real, d_fake = d_out[:b], d_out[b:]
                loss_d = self.loss_d(d_real, d_fake)
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
        z, y_fake = self.draw()
        self.D.requires_grad_(False)  # the G step needs no gradient for D's weights
        hold = self.cfg.model.sn_g_step == "hold"
        try:
            with self.autocast(), held_power_iteration(self.D) if hold else nullcontext():
                loss_g = self.loss_g(self.D(self.G_step(z, y_fake), y_fake).float())
            self.opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            self.opt_g.step()
        finally:
            self.D.requires_grad_(True)
        if self.G_ema is not None:
            self.ema_update(step)
        bad = ~(torch.isfinite(loss_d) & torch.isfinite(loss_g))
        first_bad.copy_(torch.where(bad & (first_bad < 0), step, first_bad))
        return {
            "loss_d": loss_d.detach(),
            "loss_g": loss_g.detach(),
            "d_real": d_real.mean().detach(),
            "d_fake": d_fake.mean().detach(),
        }


__all__ = ["TrainStep", "draw_noise", "to_device", "with_ema_copy"]
