"""Which attention kernel runs where, and that no fallback to the math path is silent."""

import pytest
import torch
from torch.nn.attention import SDPBackend

from sagan.nets.attention import fused_attention, sdpa_plan

FLASH, EFFICIENT = SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION


def test_the_cpu_pads_the_official_variant_and_lets_torch_choose():
    assert sdpa_plan("cpu", torch.float32, 16, 64) == (True, None)
    assert sdpa_plan("cpu", torch.bfloat16, 16, 16) == (False, None)  # paper variant


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_pads_in_half_precision_where_the_flash_kernel_then_fits(dtype):
    assert sdpa_plan("cuda", dtype, 16, 64) == (True, (FLASH, EFFICIENT))  # feat64 at 128
    assert sdpa_plan("cuda", dtype, 64, 256) == (True, (FLASH, EFFICIENT))


def test_cuda_fp32_never_pads_and_runs_the_memory_efficient_kernel():
    """Flash takes no fp32: padding would only add work to the kernel that does run."""
    assert sdpa_plan("cuda", torch.float32, 16, 64) == (False, (EFFICIENT,))


def test_a_head_too_wide_for_flash_is_not_padded():
    """G's feat8 at 128: C = 1024, v 512 wide; padded it would fit no flash kernel."""
    assert sdpa_plan("cuda", torch.bfloat16, 128, 512) == (False, (EFFICIENT,))


def test_no_allowed_kernel_is_an_error_naming_the_shapes():
    """The CPU has no memory-efficient kernel: what a CUDA fallback would meet."""
    q = k = torch.randn(2, 1, 64, 8)
    v = torch.randn(2, 1, 64, 32)
    with pytest.raises(
        RuntimeError, match=r"q \(2, 1, 64, 8\), k \(2, 1, 64, 8\), v \(2, 1, 64, 32\)"
    ):
        fused_attention(q, k, v, (EFFICIENT,))


def test_an_allowed_kernel_computes_the_unscaled_attention():
    q, k, v = torch.randn(2, 1, 64, 16), torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    expected = torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v
    torch.testing.assert_close(fused_attention(q, k, v, (FLASH,)), expected)
