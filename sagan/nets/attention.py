"""The SAGAN self-attention block (Zhang et al. 2018, section 3).

Two variants:

* ``official`` (default), as in the authors' TensorFlow code (``sn_non_local_block_sim``):
  query and key projections to C/8, value to C/2, keys and values 2x2 max-pooled so
  each of the N positions attends over N/4, output 1x1 conv C/2 -> C.
* ``paper``, as the paper's text describes it: value and output through C/8, no pooling.

Both use ``y = x + gamma * o`` with ``gamma`` a learnable scalar initialised to 0, no
biases, and an *unscaled* softmax over keys (the official code does not divide the
logits by sqrt(d)). The weighted sum is computed by
``torch.nn.functional.scaled_dot_product_attention`` with ``scale=1``, so a fused
kernel can avoid materialising the B x N x N/4 attention matrix on GPU.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from sagan.nets.layers import Layers

# CUDA's flash kernel takes fp16/bf16 only, head sizes up to this, and one head size
# for q, k and v; the memory-efficient kernel also takes fp32 and a value head wider
# than the query's.
FLASH_MAX_HEAD = 256
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def sdpa_plan(
    device_type: str, dtype: torch.dtype, qk_dim: int, v_dim: int
) -> tuple[bool, tuple[SDPBackend, ...] | None]:
    """How the attention's weighted sum runs: whether to zero-pad q and k to v's head
    size, and the SDPA backends it may use (``None``: torch's own choice).

    On the CPU: always padded, which lets the flash kernel run (the official variant's
    values are 4x wider than its keys), torch choosing. On CUDA: padded only where
    that lets the flash kernel run (fp16/bf16, padded head size up to
    :data:`FLASH_MAX_HEAD`); otherwise unpadded on the memory-efficient kernel, which
    takes the wider values as they are. Never the math path there: it holds the
    B x N x N/4 weights (4 GiB each at feat64, batch 256).
    """
    pad = v_dim > qk_dim
    if device_type != "cuda":
        return pad, None
    if dtype in _LOW_PRECISION and max(qk_dim, v_dim) <= FLASH_MAX_HEAD:
        return pad, (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION)
    return False, (SDPBackend.EFFICIENT_ATTENTION,)


def fused_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backends: tuple[SDPBackend, ...]
) -> torch.Tensor:
    """``softmax(q k^T) v`` (unscaled) on one of ``backends`` only.

    Raises:
        RuntimeError: none of them takes these shapes and dtype; names them, rather
            than letting torch fall back to the math path silently.
    """
    if torch.compiler.is_compiling():  # torch's own error still stops a fallback
        with sdpa_kernel(list(backends)):
            return F.scaled_dot_product_attention(q, k, v, scale=1.0)
    try:
        with sdpa_kernel(list(backends)):
            return F.scaled_dot_product_attention(q, k, v, scale=1.0)
    except RuntimeError as e:
        b, _, n, _ = q.shape
        m = k.shape[2]
        gib = b * n * m * q.element_size() / 2**30
        names = ", ".join(be.name for be in backends)
        raise RuntimeError(
            f"self-attention: no fused kernel ({names}) takes q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)} in {q.dtype} on {q.device}; the math "
            f"path would hold the {b}x{n}x{m} weights ({gib:.2f} GiB). "
            "model.attention_kernel: matmul computes them explicitly on purpose. "
            f"(torch: {str(e).splitlines()[0]})"
        ) from e


class SelfAttention(nn.Module):
    """Self-attention over the positions of a C x H x W feature map.

    Args:
        ch: channels C of the input (at least 8).
        layers: the network's layer constructors (spectral norm, init).
        variant: ``"official"`` or ``"paper"``.
        kernel: ``"sdpa"`` (fused where the device has a kernel) or ``"matmul"``
            (the explicit softmax(q k^T) v, for comparison).
    """

    def __init__(self, ch: int, layers: Layers, variant: str = "official", kernel: str = "sdpa"):
        super().__init__()
        if ch < 8:
            raise ValueError(f"self-attention needs at least 8 channels, got {ch}")
        self.variant = variant
        self.kernel = kernel
        self.pool = variant == "official"
        qk = ch // 8
        v = ch // 2 if variant == "official" else ch // 8
        self.query = layers.conv(ch, qk, 1, bias=False)
        self.key = layers.conv(ch, qk, 1, bias=False)
        self.value = layers.conv(ch, v, 1, bias=False)
        self.out = layers.conv(v, ch, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The attention output ``o`` before the output conv: [B, C_v, H, W]."""
        b, _, h, w = x.shape
        q = self.query(x)
        k = self.key(x)
        v = self.value(x)
        if self.pool:
            k = F.max_pool2d(k, 2)
            v = F.max_pool2d(v, 2)
        # [B, C', H, W] -> [B, 1 head, positions, C'], channels innermost as the fused
        # kernels need (a no-op for channels_last maps, a small copy otherwise).
        q = q.flatten(2).transpose(1, 2).unsqueeze(1).contiguous()
        k = k.flatten(2).transpose(1, 2).unsqueeze(1).contiguous()
        v = v.flatten(2).transpose(1, 2).unsqueeze(1).contiguous()
        if self.kernel == "sdpa":
            # The flash kernels (CPU and CUDA) need one head size for q, k and v; the
            # official variant's values are 4x wider than its queries and keys. Zero
            # columns added to q and k leave every q.k, and so the softmax and the
            # output, as they were, and turn the math fallback (which holds the
            # B x N x N/4 weights) into a fused kernel: at feat64 on a 2-core CPU the
            # step ran 1.6-2x faster than with explicit weights, at the peak memory of
            # a step without attention (docs/measured.md).
            # On CUDA only where it lets a fused kernel run (sdpa_plan).
            pad, backends = sdpa_plan(x.device.type, q.dtype, q.shape[-1], v.shape[-1])
            if pad:
                width = v.shape[-1] - q.shape[-1]
                q, k = F.pad(q, (0, width)), F.pad(k, (0, width))
            if backends is None:
                o = F.scaled_dot_product_attention(q, k, v, scale=1.0)
            else:
                o = fused_attention(q, k, v, backends)
        else:
            o = torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v
        return o.squeeze(1).transpose(1, 2).reshape(b, -1, h, w)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The attention matrix ``beta`` that :meth:`attend` applies, made explicit.

        Row ``i`` holds the softmax over keys of ``q_i . k_j`` (unscaled, as the
        official code), keys 2x2 max-pooled in the ``official`` variant as in
        :meth:`attend`; positions are row-major. For visualisation only (the paper's
        Figure 1): training goes through the fused kernel and never builds this.

        Returns:
            ``[B, N, M]`` with N = H*W queries and M = N/4 (``official``) or N keys.
        """
        q = self.query(x).flatten(2)  # B, C/8, N
        k = self.key(x)
        if self.pool:
            k = F.max_pool2d(k, 2)
        return torch.softmax(q.transpose(1, 2) @ k.flatten(2), dim=-1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.gamma * self.out(self.attend(x))
