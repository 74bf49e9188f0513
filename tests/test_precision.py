"""TF32 settings through torch's current precision API or its legacy flags."""

import pytest
import torch

from sagan.training import precision
from sagan.training.precision import exact_fp32, set_tf32, tf32_state

B = torch.backends


@pytest.fixture(autouse=True)
def restore_flags():
    saved = precision._raw()
    yield
    precision._set_raw(saved)


@pytest.mark.parametrize("enabled", [False, True])
def test_set_tf32_is_what_tf32_state_reads(enabled):
    set_tf32(enabled)
    assert tf32_state() == {"matmul": enabled, "conv": enabled}


@pytest.mark.skipif(not precision.current_api(), reason="torch without fp32_precision")
def test_the_flags_are_set_with_the_current_api_and_read_back_without_raising():
    """Reading cudnn.allow_tf32 after the current API set conv alone raises in this
    torch; tf32_state and exact_fp32 must not read it."""
    set_tf32(False)
    assert B.cuda.matmul.fp32_precision == "ieee" and B.cudnn.conv.fp32_precision == "ieee"
    with exact_fp32():
        assert tf32_state() == {"matmul": False, "conv": False}
    set_tf32(True)
    assert B.cudnn.conv.fp32_precision == "tf32"
    with exact_fp32():
        assert tf32_state() == {"matmul": False, "conv": False}
    assert tf32_state() == {"matmul": True, "conv": True}


def test_torch_s_own_default_lets_convolutions_use_tf32():
    """Why train.tf32 is needed at all: untouched, cuDNN convolutions would run in TF32."""
    if precision.current_api():
        precision._set_raw(("none", "tf32"))  # this torch's defaults
    else:
        precision._set_raw((False, True))
    assert tf32_state() == {"matmul": False, "conv": True}


def test_exact_fp32_restores_the_settings_exactly_even_on_error():
    set_tf32(True)
    before = precision._raw()
    with pytest.raises(RuntimeError), exact_fp32():
        raise RuntimeError("inside")
    assert precision._raw() == before


def test_evaluation_generates_in_exact_fp32(monkeypatch):
    """The protocol records "tf32": false: G's sampling runs without TF32 too."""
    import sagan.metrics.evaluate as ev

    set_tf32(True)
    seen = []

    class G(torch.nn.Module):
        z_dim, num_classes = 4, 2

        def forward(self, z, y):
            seen.append(tf32_state())
            return torch.zeros(len(z), 3, 8, 8)

    monkeypatch.setattr(ev, "exact_float32", lambda device: exact_fp32())  # the CUDA path
    out = list(ev.sample_batches(G(), 5, batch_size=2, seed=0, device="cpu"))
    assert [len(x) for x in out] == [2, 2, 1]
    assert seen == [{"matmul": False, "conv": False}] * 3
    assert tf32_state() == {"matmul": True, "conv": True}
