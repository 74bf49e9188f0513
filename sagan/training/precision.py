"""Whether CUDA's float32 matmuls and cuDNN convolutions may run in TF32.

TF32 keeps 10 of float32's 23 mantissa bits. The official SAGAN code trains in full
float32, and features (hence FID) computed in TF32 would depend on the GPU
generation, so training asks for it explicitly (``train.tf32``) and evaluation
turns it off. Torch has two APIs for these flags: the legacy ``allow_tf32``
booleans and, since 2.9, ``fp32_precision`` strings. Once the current API has set
a flag, reading the legacy one may raise, so everything here uses the current API
where this torch has it and the legacy flags only where it does not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_B = torch.backends


def current_api() -> bool:
    """Whether this torch has the ``fp32_precision`` settings."""
    return hasattr(_B, "fp32_precision") and hasattr(_B.cudnn, "conv")


def _resolved(*levels: str) -> str:
    """A setting under the current API: the first level (leaf to root) that is not
    ``none``; none at all means full float32."""
    return next((v for v in levels if v != "none"), "ieee")


def tf32_state() -> dict[str, bool]:
    """Whether float32 matmuls and convolutions on CUDA may use TF32, as set now."""
    if current_api():
        matmul = _resolved(_B.cuda.matmul.fp32_precision, _B.fp32_precision)
        conv = _resolved(_B.cudnn.conv.fp32_precision, _B.cudnn.fp32_precision, _B.fp32_precision)
        return {"matmul": matmul == "tf32", "conv": conv == "tf32"}
    return {"matmul": _B.cuda.matmul.allow_tf32, "conv": _B.cudnn.allow_tf32}


def _raw() -> tuple:
    if current_api():
        return (_B.cuda.matmul.fp32_precision, _B.cudnn.conv.fp32_precision)
    return (_B.cuda.matmul.allow_tf32, _B.cudnn.allow_tf32)


def _set_raw(raw: tuple) -> None:
    if current_api():
        _B.cuda.matmul.fp32_precision, _B.cudnn.conv.fp32_precision = raw
    else:
        _B.cuda.matmul.allow_tf32, _B.cudnn.allow_tf32 = raw


def set_tf32(enabled: bool) -> None:
    """Let CUDA's float32 matmuls and cuDNN convolutions use TF32, or keep them exact."""
    if current_api():
        value = "tf32" if enabled else "ieee"
        _set_raw((value, value))
    else:
        _set_raw((enabled, enabled))


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """No TF32 for matmuls and convolutions inside the block; the settings are
    restored exactly as they were on exit."""
    saved = _raw()
    set_tf32(False)
    try:
        yield
    finally:
        _set_raw(saved)


__all__ = ["current_api", "exact_fp32", "set_tf32", "tf32_state"]
