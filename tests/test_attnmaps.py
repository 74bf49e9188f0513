"""Attention maps (the paper's Figure 1): explicit weights, capture, npz, CLI, figure."""

import base64
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reports.attention import attention_figure
from sagan.config import ModelConfig, load_config, to_yaml
from sagan.nets.attention import SelfAttention
from sagan.nets.attnmaps import DEFAULT_QUERIES, attention_maps
from sagan.nets.layers import Layers
from sagan.nets.models import Generator
from sagan.training.samples import write_attention_maps

TINY = Path(__file__).resolve().parents[1] / "sagan" / "configs" / "tiny.yaml"
REPO = TINY.parents[2]


@pytest.mark.parametrize("variant,keys", [("official", 16), ("paper", 64)])
def test_explicit_weights_times_values_is_the_fused_attention(variant, keys):
    torch.manual_seed(0)
    m = SelfAttention(32, Layers(sn=True, init="xavier"), variant).eval()
    x = torch.randn(3, 32, 8, 8)
    beta = m.weights(x)
    assert beta.shape == (3, 64, keys)
    torch.testing.assert_close(beta.sum(-1), torch.ones(3, 64))
    v = m.value(x)
    if m.pool:
        v = torch.nn.functional.max_pool2d(v, 2)
    o = (beta @ v.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(3, -1, 8, 8)
    torch.testing.assert_close(o, m.attend(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", ["sdpa", "matmul"])
@pytest.mark.parametrize("variant", ["official", "paper"])
@pytest.mark.parametrize("size", [8, 16, 32])
def test_the_fused_attention_has_the_gradients_of_the_matmul_reference(variant, size, kernel):
    """SDPA (what training runs) and the benchmark's matmul kernel
    (``model.attention_kernel``) against matmul-softmax-matmul built from the explicit
    weights, at every placement's map size: the same output, and the same gradients
    for the input and every weight."""
    torch.manual_seed(0)
    m = SelfAttention(16, Layers(sn=False, init="xavier"), variant, kernel).double()
    x = torch.randn(2, 16, size, size, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 16, size, size, dtype=torch.float64)

    def reference(x):
        v = m.value(x)
        if m.pool:
            v = torch.nn.functional.max_pool2d(v, 2)
        o = (m.weights(x) @ v.flatten(2).transpose(1, 2)).transpose(1, 2)
        return x + m.gamma * m.out(o.reshape(2, -1, size, size))

    with torch.no_grad():
        m.gamma.fill_(0.7)  # 0 at init would hide the attention branch's gradients
    grads = []
    for f in (m, reference):
        m.zero_grad()
        x.grad = None
        (f(x) * upstream).sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in m.parameters()])
    for fused, ref in zip(*grads, strict=True):
        torch.testing.assert_close(fused, ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("variant", ["official", "paper"])
@pytest.mark.parametrize("channels_last", [True, False])
def test_training_attention_runs_the_fused_cpu_kernel(variant, channels_last):
    """SDPA picks its flash kernel only when q, k and v share a head size and keep
    channels innermost; otherwise it falls back to the math path, which holds the
    N x N/4 weights. Both variants, in both memory formats, must reach the kernel."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(func._schema.name)
            return func(*args, **(kwargs or {}))

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    m = SelfAttention(32, Layers(sn=True, init="xavier"), variant).to(memory_format=fmt)
    x = torch.randn(2, 32, 16, 16).to(memory_format=fmt).requires_grad_()
    with Ops() as ops:
        m(x).sum().backward()
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops.names
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in ops.names
    assert "aten::_softmax" not in ops.names and "aten::_safe_softmax" not in ops.names


def _tiny_g(attn_g=(16,), variant="official"):
    torch.manual_seed(0)
    cfg = ModelConfig(ch=8, z_dim=16, attn_g=list(attn_g), attention_variant=variant)
    return Generator(cfg, 32, num_classes=3)


@pytest.mark.parametrize("variant,key_size", [("official", 8), ("paper", 16)])
def test_maps_are_distributions_over_the_key_grid_and_leave_g_untouched(variant, key_size):
    G = _tiny_g((8, 16), variant).train()
    before = {k: v.clone() for k, v in G.state_dict().items()}
    z, y = torch.randn(2, 16), torch.tensor([0, 2])
    maps = attention_maps(G, z, y)

    assert G.training and all(m.training for m in G.modules())
    after = G.state_dict()
    assert before.keys() == after.keys()
    assert any("_u" in k for k in before)  # spectral-norm buffers are compared too
    assert all(torch.equal(before[k], after[k]) for k in before)

    assert maps["images"].dtype == np.uint8 and maps["images"].shape == (2, 3, 32, 32)
    assert [la["size"] for la in maps["layers"].values()] == [8, 16]
    la = maps["layers"][list(maps["layers"])[1]]
    k, q = key_size, len(DEFAULT_QUERIES)
    assert la["key_size"] == k and la["weights"].shape == (2, q, k, k)
    assert la["weights"].dtype == np.float32 and (la["weights"] >= 0).all()
    np.testing.assert_allclose(la["weights"].sum(axis=(2, 3)), 1, rtol=1e-5)
    assert ((la["query_pos"] >= 0) & (la["query_pos"] < 16)).all()
    # Each point lies in the cell of its position: within half a cell of its centre.
    assert (np.abs(la["query_frac"] - np.asarray(DEFAULT_QUERIES)) <= 0.5 / 16).all()


def test_maps_come_from_eval_mode_g(tmp_path):
    G = _tiny_g().train()
    z, y = torch.randn(2, 16), torch.tensor([0, 1])
    maps = attention_maps(G, z, y)
    with torch.no_grad():
        images = G.eval()(z, y)
    expected = images.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    assert np.array_equal(maps["images"], expected)


def test_write_attention_maps_is_a_plain_npz(tmp_path):
    G = _tiny_g()
    path = write_attention_maps(tmp_path, G, torch.randn(2, 16), torch.tensor([0, 1]), 7)
    assert path == tmp_path / "attention" / "step-000000007.npz"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
    with np.load(path, allow_pickle=False) as z:
        assert int(z["step"]) == 7 and z["images"].shape == (2, 3, 32, 32)
        assert z["layers"].tolist() == ["blocks.2"] and z["sizes"].tolist() == [16]
        assert z["weights_0"].shape == (2, len(DEFAULT_QUERIES), 8, 8)
        assert z["query_pos"].shape == (1, len(DEFAULT_QUERIES), 2)


def test_write_attention_maps_skips_g_without_attention(tmp_path):
    G = _tiny_g(attn_g=())
    assert write_attention_maps(tmp_path, G, torch.randn(2, 16), None, 7) is None
    assert not (tmp_path / "attention").exists()


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    proc = _run(
        "sagan.train",
        str(TINY),
        "train.steps=2",
        "train.sample_every=2",
        "eval.metrics=[]",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    return out


def test_training_writes_the_final_maps(tiny_run):
    assert [p.name for p in (tiny_run / "attention").iterdir()] == ["step-000000002.npz"]
    with np.load(tiny_run / "attention" / "step-000000002.npz", allow_pickle=False) as z:
        assert z["images"].shape == (4, 3, 32, 32) and int(z["step"]) == 2


def test_cli_rewrites_the_maps_of_the_newest_checkpoint(tiny_run):
    path = tiny_run / "attention" / "step-000000002.npz"
    with np.load(path, allow_pickle=False) as z:
        written = {k: z[k] for k in z.files}
    path.unlink()
    proc = _run("sagan.attnmaps", str(tiny_run))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(path)
    with np.load(path, allow_pickle=False) as z:
        # The same G_ema, z and labels as the trainer's, so the same numbers.
        assert written.keys() == set(z.files)
        assert all(np.array_equal(z[k], written[k]) for k in written)


def test_cli_errors_are_one_line_with_exit_2(tmp_path):
    proc = _run("sagan.attnmaps", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "no config.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _run("sagan.attnmaps", str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and "no such run directory" in proc.stderr
    (tmp_path / "config.yaml").write_text(to_yaml(load_config(TINY)))
    proc = _run("sagan.attnmaps", str(tmp_path))
    assert proc.returncode == 2 and "has no checkpoint" in proc.stderr
    (tmp_path / "config.yaml").write_text(to_yaml(load_config(TINY, {"model.attn_g": []})))
    proc = _run("sagan.attnmaps", str(tmp_path))
    assert proc.returncode == 2 and "G has no self-attention" in proc.stderr
    assert not (tmp_path / "attention").exists()


def test_figure_is_an_inline_png(tiny_run, tmp_path):
    fig = attention_figure(tiny_run / "attention" / "step-000000002.npz")
    assert set(fig) == {"src", "alt", "caption"}
    prefix = "data:image/png;base64,"
    assert fig["src"].startswith(prefix)
    assert base64.b64decode(fig["src"][len(prefix) :]).startswith(b"\x89PNG\r\n\x1a\n")
    assert "16x16" in fig["alt"]
    assert attention_figure(tmp_path / "missing.npz") is None
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert attention_figure(tmp_path / "bad.npz") is None
