"""FD-DINOv2's extractor: DINOv2 ViT/14 (Oquab et al. 2023) from a local weights file.

Stein et al. (NeurIPS 2023) found the Fréchet distance in DINOv2 ViT-L/14 features to
track human judgement better than Inception's. torch-fidelity 0.4 ships the extractor
(``FeatureExtractorDinoV2``: TF-compatible bilinear resize to 224, ImageNet
normalisation, the model's CLS output), but builds the model with
``torch.hub.load("facebookresearch/dinov2", ...)``, which clones the model code and
downloads the weights from the network, and raises ``NotImplementedError`` when
given a weights file. Compute nodes have no network. This is the one workaround:
:class:`DinoV2Extractor` keeps torch-fidelity's class and forward (so the resize and
normalisation are its own) and swaps only the model, :class:`DinoV2ViT`, an
architecture with the official code's state-dict keys (``dinov2/models/
vision_transformer.py`` at the hub defaults: LayerScale, positional embeddings for
518 px interpolated bicubically with offset 0.1, no registers), loaded strictly from
the file the official checkpoint URL serves, which ``python -m sagan.prefetch
--dinov2`` fetches.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn as nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_dinov2 import FeatureExtractorDinoV2

from sagan.metrics.errors import MetricsError
from sagan.metrics.weights import sha256_file

# name: (embed dim, depth, heads); the hub's dinov2_vit{s,b,l}14. ViT-L/14 is what
# Stein et al. use and the default; the smaller ones exist for quick checks.
VARIANTS = {"vit-s-14": (384, 12, 6), "vit-b-14": (768, 12, 12), "vit-l-14": (1024, 24, 16)}
DEFAULT_VARIANT = "vit-l-14"
PATCH = 14
TRAIN_SIZE = 518  # the positional embeddings' grid: 37 x 37 patches
BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"
PREFETCH_COMMAND = "python -m sagan.prefetch --dinov2"


def prefetch_command(variant: str) -> str:
    """The command that fetches ``variant``'s file."""
    return PREFETCH_COMMAND if variant == DEFAULT_VARIANT else f"{PREFETCH_COMMAND} {variant}"


FEATURE = "dinov2"
# Written into random-valued files (and dropped before loading), so that their
# numbers are marked non-canonical: the official files have no published hash.
RANDOM_MARKER = "sagan_bench_random_weights"


def weights_file(variant: str) -> str:
    """The official checkpoint's file name, e.g. ``dinov2_vitl14_pretrain.pth``."""
    return f"dinov2_vit{variant[4]}14_pretrain.pth"


def weights_url(variant: str) -> str:
    """The official checkpoint's URL (the hub's ``_DINOV2_BASE_URL``)."""
    return f"{BASE_URL}/dinov2_vit{variant[4]}14/{weights_file(variant)}"


def default_weights_path(variant: str) -> Path:
    """Where torch.hub would cache the checkpoint: ``<hub dir>/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / weights_file(variant)


class _LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).unbind(2)
        out = nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.ls1 = _LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim)
        self.ls2 = _LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=PATCH, stride=PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoV2ViT(nn.Module):
    """DINOv2 ViT/14 for inference: ``[B, 3, H, W]`` normalised images to the CLS token
    after the final LayerNorm ``[B, dim]``, as the hub model's ``forward`` returns."""

    def __init__(self, variant: str = DEFAULT_VARIANT):
        super().__init__()
        if variant not in VARIANTS:
            raise MetricsError(
                f"eval.dinov2_model = {variant!r}: not a DINOv2 model; one of {list(VARIANTS)}"
            )
        dim, depth, heads = VARIANTS[variant]
        grid = TRAIN_SIZE // PATCH
        self.patch_embed = _PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # training only; in the file
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def _pos_embed(self, n_patches: int, w: int, h: int) -> torch.Tensor:
        n = self.pos_embed.shape[1] - 1
        if n_patches == n and w == h:
            return self.pos_embed
        m = int(math.sqrt(n))
        dim = self.pos_embed.shape[-1]
        w0, h0 = w // PATCH, h // PATCH
        # The official code's scale factors, offset by 0.1 (its interpolate_offset).
        patch = nn.functional.interpolate(
            self.pos_embed[:, 1:].float().reshape(1, m, m, dim).permute(0, 3, 1, 2),
            mode="bicubic",
            antialias=False,
            scale_factor=((w0 + 0.1) / m, (h0 + 0.1) / m),
        )
        patch = patch.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((self.pos_embed[:, :1].float(), patch), dim=1).to(self.pos_embed.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, w, h = x.shape
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(len(tokens), -1, -1), tokens), dim=1)
        tokens = tokens + self._pos_embed(tokens.shape[1] - 1, w, h)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]


class DinoV2Extractor(FeatureExtractorDinoV2):
    """torch-fidelity's DINOv2 extractor with its model loaded from a local file.

    Its ``forward`` (resize, normalisation, float32 features named ``dinov2``) is
    torch-fidelity's, inherited; only ``__init__`` differs, and only in where the
    model comes from.
    """

    def __init__(self, variant: str, weights_path: str | os.PathLike):
        FeatureExtractorBase.__init__(self, f"dinov2-{variant}", [FEATURE])
        self.feature_extractor_internal_dtype = torch.float32
        self.model = DinoV2ViT(variant)
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        state.pop(RANDOM_MARKER, None)
        self.model.load_state_dict(state, strict=True)
        self.requires_grad_(False)
        self.eval()


@dataclass(frozen=True)
class DinoWeights:
    """A DINOv2 weights file and its identity, as the ``fd_dinov2`` protocol block reports it."""

    path: Path
    sha256: str
    variant: str
    random: bool

    @property
    def canonical(self) -> bool | None:
        """False for a random-valued file; None (unknown) otherwise: no published hash to check."""
        return False if self.random else None


def resolve_dinov2_weights(cfg_path: str | None, variant: str = DEFAULT_VARIANT) -> DinoWeights:
    """The DINOv2 weights file ``fd_dinov2`` will use, checked to exist, with its sha256.

    Raises:
        MetricsError: no file there; the message names the metric, the file expected,
            where, and the prefetch command.
    """
    if variant not in VARIANTS:
        raise MetricsError(
            f"eval.dinov2_model = {variant!r}: not a DINOv2 model; one of {list(VARIANTS)}"
        )
    path = Path(cfg_path).expanduser() if cfg_path else default_weights_path(variant)
    if not path.is_file():
        where = (
            f"eval.dinov2_weights = {cfg_path!r}: no such file ({path})"
            if cfg_path
            else f"DINOv2 weights not found at {path} (torch.hub's cache; eval.dinov2_weights is not set)"
        )
        raise MetricsError(
            f"{where}.\nThe metric fd_dinov2 needs the DINOv2 {variant} weights, the file "
            f"{weights_file(variant)} ({weights_url(variant)}). Evaluation never downloads.\n"
            f"To fix: on a machine with internet run\n    {prefetch_command(variant)}\n"
            f"which saves it to {default_weights_path(variant)}; or copy the file anywhere "
            f"and set eval.dinov2_weights to its path."
        )
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return DinoWeights(path, sha256_file(path), variant, RANDOM_MARKER in state)


@lru_cache(maxsize=1)
def _extractor(path: str, sha256: str, variant: str, device: str) -> DinoV2Extractor:
    del sha256  # part of the cache key only: a replaced file at the same path reloads
    return DinoV2Extractor(variant, path).to(device)


def dinov2_extractor(weights: DinoWeights, device: torch.device | str) -> DinoV2Extractor:
    """The extractor for ``weights`` on ``device``; the last one built is kept."""
    return _extractor(str(weights.path), weights.sha256, weights.variant, str(torch.device(device)))


def make_random_dinov2_weights(
    path: str | os.PathLike, variant: str = DEFAULT_VARIANT, seed: int = 0
) -> Path:
    """Write a random-valued weights file with the official state-dict keys and shapes.

    For tests and timing without the real file: linears get the ViT init (normal, std
    0.02), LayerScale 1e-1; the file carries :data:`RANDOM_MARKER`, so the protocol
    marks its numbers non-canonical. Leaves the global RNG alone.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        model = DinoV2ViT(variant)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.fill_(0.1)
            elif p.dim() >= 2 or name in ("cls_token", "mask_token"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    state = model.state_dict()
    state[RANDOM_MARKER] = torch.ones(())
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def extractor_spec(weights: DinoWeights):
    """The reference cache's view of this extractor (:class:`~sagan.metrics.reference.ExtractorSpec`)."""
    from sagan.metrics.reference import ExtractorSpec

    return ExtractorSpec(
        f"dinov2-{weights.variant}", FEATURE, weights.sha256, lambda d: dinov2_extractor(weights, d)
    )


def protocol(weights: DinoWeights, reference: dict | None) -> dict:
    """The ``fd_dinov2`` protocol block: the extractor, its weights, resize, feature, reference."""
    return {
        "metric": "Fréchet distance in DINOv2 features (Stein et al. 2023)",
        "extractor": f"dinov2-{weights.variant}",
        "weights_file": weights.path.name,
        "weights_sha256": weights.sha256,
        "weights_canonical": weights.canonical,
        "resize": "tf-compat bilinear to 224 (torch-fidelity FeatureExtractorDinoV2)",
        "normalize": "ImageNet mean/std (torch-fidelity FeatureExtractorDinoV2)",
        "feature": "CLS token after the final LayerNorm (the hub model's output)",
        "statistics": "float64 mean and covariance; distance by torch-fidelity (TTUR formula)",
        "reference": reference,
    }


__all__ = [
    "DEFAULT_VARIANT",
    "DinoV2Extractor",
    "DinoV2ViT",
    "DinoWeights",
    "PREFETCH_COMMAND",
    "VARIANTS",
    "default_weights_path",
    "dinov2_extractor",
    "extractor_spec",
    "protocol",
    "make_random_dinov2_weights",
    "resolve_dinov2_weights",
    "weights_file",
    "weights_url",
]
