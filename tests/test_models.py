import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm
from torch.overrides import TorchFunctionMode

from sagan.config import ModelConfig
from sagan.nets.arch import ARCHS, attention_sizes
from sagan.nets.attention import SelfAttention
from sagan.nets.layers import (
    CondBatchNorm2d,
    GroupBatchNorm2d,
    Layers,
    count_spectral_norm,
    held_power_iteration,
)
from sagan.nets.losses import hinge_d, hinge_g
from sagan.nets.models import Discriminator, Generator, build_models


def _reference_attention(m: SelfAttention, x: torch.Tensor) -> torch.Tensor:
    """The official code's maths written out with an explicit softmax matrix."""
    b, c, h, w = x.shape
    q = m.query(x).flatten(2)  # B, C/8, N
    k = m.key(x)
    v = m.value(x)
    if m.pool:
        k, v = F.max_pool2d(k, 2), F.max_pool2d(v, 2)
    k, v = k.flatten(2), v.flatten(2)  # B, C', M
    beta = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # B, N, M (no 1/sqrt(d))
    o = (beta @ v.transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)
    return x + m.gamma * m.out(o)


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_attention_with_gamma_zero_is_identity(variant):
    torch.manual_seed(0)
    m = SelfAttention(32, Layers(sn=True, init="xavier"), variant)
    x = torch.randn(2, 32, 8, 8)
    assert m.gamma.item() == 0.0
    assert torch.equal(m(x), x)


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_attention_matches_explicit_softmax(variant):
    torch.manual_seed(0)
    m = SelfAttention(32, Layers(sn=False, init="xavier"), variant)
    with torch.no_grad():
        m.gamma.fill_(0.7)
    x = torch.randn(3, 32, 8, 8)
    torch.testing.assert_close(m(x), _reference_attention(m, x), rtol=1e-5, atol=1e-5)


def test_attention_widths_follow_variant():
    official = SelfAttention(64, Layers(False, "xavier"), "official")
    paper = SelfAttention(64, Layers(False, "xavier"), "paper")
    assert official.query.out_channels == official.key.out_channels == 8
    assert official.value.out_channels == 32 and official.out.in_channels == 32
    assert paper.value.out_channels == 8 and paper.out.in_channels == 8
    assert all(
        conv.bias is None for conv in (official.query, official.key, official.value, official.out)
    )


def _placements(res):
    for net in ("g", "d"):
        sizes = attention_sizes(res, net)
        yield from (
            (net, list(c)) for n in range(len(sizes) + 1) for c in itertools.combinations(sizes, n)
        )


@pytest.mark.parametrize("res", [32, 64, 128])
def test_output_shapes_for_every_placement(res):
    torch.manual_seed(0)
    z = torch.randn(2, 16)
    y = torch.tensor([0, 2])
    for net, sizes in _placements(res):
        for block in ("attention", "residual"):
            cfg = ModelConfig(
                ch=8,
                z_dim=16,
                attn_g=sizes if net == "g" else [],
                attn_d=sizes if net == "d" else [],
                attn_block=block,
            )
            if net == "g":
                G = Generator(cfg, res, num_classes=3)
                out = G(z, y)
                assert out.shape == (2, 3, res, res)
                assert out.abs().max() <= 1
            else:
                D = Discriminator(cfg, res, num_classes=3)
                assert D(torch.randn(2, 3, res, res), y).shape == (2,)


def test_attention_sits_on_the_named_feature_map():
    # G and D get different sizes, so swapping attn_g and attn_d would fail.
    seen: dict[str, list[int]] = {"G": [], "D": []}

    def hook(net):
        def record(module, inputs, output):
            seen[net].append(inputs[0].shape[-1])

        return record

    cfg = ModelConfig(ch=8, z_dim=16, attn_g=[16, 64], attn_d=[32])
    G, D = build_models(cfg, 128, 0)
    for net, model in (("G", G), ("D", D)):
        for m in model.modules():
            if isinstance(m, SelfAttention):
                m.register_forward_hook(hook(net))
    D(G(torch.randn(2, 16)))
    assert seen == {"G": [16, 64], "D": [32]}


def test_residual_arm_has_no_attention_but_same_placement():
    cfg = ModelConfig(ch=8, attn_g=[16], attn_d=[16], attn_block="residual")
    G, D = build_models(cfg, 32, 0)
    assert not any(isinstance(m, SelfAttention) for m in [*G.modules(), *D.modules()])
    plain_g, plain_d = build_models(ModelConfig(ch=8, attn_g=[], attn_d=[]), 32, 0)
    assert len(G.blocks) == len(plain_g.blocks) + 1
    assert len(D.blocks) == len(plain_d.blocks) + 1


# Hand counts at 32x32, attention at 16 in both, conditional:
# G: linear + 3 up-blocks x (2 convs + shortcut) + 4 attention convs + output conv = 15
# D: optimized (2 + shortcut) + down block (2 + shortcut) + 2 plain blocks x 2
#    + 4 attention convs + linear + projection embedding = 16
@pytest.mark.parametrize(
    "sn_g,sn_d,expected",
    [(False, True, (0, 16)), (True, True, (15, 16)), (False, False, (0, 0))],
)
def test_number_of_spectrally_normalised_layers(sn_g, sn_d, expected):
    cfg = ModelConfig(ch=8, attn_g=[16], attn_d=[16], sn_g=sn_g, sn_d=sn_d)
    G, D = build_models(cfg, 32, 10)
    assert (count_spectral_norm(G), count_spectral_norm(D)) == expected


def test_conditional_batchnorm_is_not_spectrally_normalised():
    cfg = ModelConfig(ch=8, attn_g=[], attn_d=[])
    G, _ = build_models(cfg, 32, 10)
    assert G.blocks[0].bn1.gain.weight.shape == (10, 32)
    assert torch.equal(G.blocks[0].bn1.gain.weight, torch.ones(10, 32))


def _spectral_norms(model: torch.nn.Module) -> list[tuple[torch.nn.Module, _SpectralNorm]]:
    return [
        (m, p)
        for m in model.modules()
        if parametrize.is_parametrized(m, "weight")
        for p in m.parametrizations.weight
        if isinstance(p, _SpectralNorm)
    ]


def _one_power_iteration(weight: torch.Tensor, v: torch.Tensor, eps: float = 1e-12):
    """One step of torch's ``_SpectralNorm._power_method`` written out, all in fp32.

    W is the weight as a (out, -1) matrix; u' = W v / |W v|, then v' = W^T u' / |W^T u'|,
    each norm clamped below at ``eps`` (``F.normalize``). Returns (u', v').
    """
    w = weight.detach().float().flatten(1)
    u = torch.mv(w, v)
    u = u / u.norm(2, 0, keepdim=True).clamp_min(eps)
    v = torch.mv(w.t(), u)
    return u, v / v.norm(2, 0, keepdim=True).clamp_min(eps)


def test_one_power_iteration_per_training_forward():
    cfg = ModelConfig(ch=8, attn_g=[], attn_d=[16])
    _, D = build_models(cfg, 32, 10)
    y = torch.tensor([1, 7])
    norms = _spectral_norms(D)
    assert len(norms) == count_spectral_norm(D) > 0

    before = [(p._u.clone(), p._v.clone()) for _, p in norms]
    D.eval()(torch.randn(2, 3, 32, 32), y)
    for (_, p), (u, v) in zip(norms, before, strict=True):
        assert torch.equal(p._u, u) and torch.equal(p._v, v), "eval forward moved u or v"

    # Exactly one iteration from the stored v (the same ops, so the same bits). Two
    # would land elsewhere: after torch's 15 warm-up steps a 3x3 conv's u still moves
    # by ~1e-2 per step.
    expected = [_one_power_iteration(m.parametrizations.weight.original, p._v) for m, p in norms]
    D.train()(torch.randn(2, 3, 32, 32), y)
    for (m, p), (u, v) in zip(norms, expected, strict=True):
        torch.testing.assert_close(p._u, u, rtol=0, atol=0, msg=f"u of {type(m).__name__}")
        torch.testing.assert_close(p._v, v, rtol=0, atol=0, msg=f"v of {type(m).__name__}")


def test_spectral_norm_runs_in_fp32_under_bf16_autocast():
    # CPU autocast leaves torch.mv in fp32, so on CPU the numbers alone cannot show
    # bf16 leaking in (CUDA autocast does cast mv). The test therefore also records
    # whether autocast was on while spectral norm's mv/vdot ran: it must be off.
    torch.manual_seed(0)
    layer = Layers(sn=True, init="xavier").conv(4, 8)
    reference = copy.deepcopy(layer)
    sn, sn_ref = layer.parametrizations.weight[0], reference.parametrizations.weight[0]
    expected_u, expected_v = _one_power_iteration(layer.parametrizations.weight.original, sn._v)
    x = torch.randn(2, 4, 8, 8)

    class RecordLinearAlgebra(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.calls: list[tuple[str, bool, torch.dtype]] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in (torch.mv, torch.vdot):
                self.calls.append((func.__name__, torch.is_autocast_enabled("cpu"), out.dtype))
            return out

    with torch.autocast("cpu", dtype=torch.bfloat16), RecordLinearAlgebra() as mode:
        out = layer(x)
    reference(x)

    assert out.dtype == torch.bfloat16, "the convolution itself must still run under autocast"
    assert mode.calls, "spectral norm ran no mv/vdot"
    assert all(not on and dtype == torch.float32 for _, on, dtype in mode.calls), mode.calls
    assert sn._u.dtype == sn._v.dtype == torch.float32
    assert torch.equal(sn._u, sn_ref._u) and torch.equal(sn._v, sn_ref._v)
    torch.testing.assert_close(sn._u, expected_u, rtol=0, atol=0)
    torch.testing.assert_close(sn._v, expected_v, rtol=0, atol=0)
    assert torch.equal(layer.weight, reference.weight)


def test_spectral_norm_state_dict_keys_are_torchs():
    layer = Layers(sn=True, init="xavier").linear(4, 3)
    assert sorted(layer.state_dict()) == [
        "bias",
        "parametrizations.weight.0._u",
        "parametrizations.weight.0._v",
        "parametrizations.weight.original",
    ]
    plain = torch.nn.utils.parametrizations.spectral_norm(torch.nn.Linear(4, 3))
    plain.load_state_dict(layer.state_dict())
    torch.testing.assert_close(plain.weight, layer.weight, rtol=0, atol=0)


@pytest.mark.parametrize("init", ["xavier", "ortho"])
def test_init_scheme_is_applied(init):
    torch.manual_seed(0)
    cfg = ModelConfig(ch=8, attn_g=[], attn_d=[], sn_g=False, init=init)
    G, _ = build_models(cfg, 32, 0)
    w = G.blocks[0].conv1.weight.flatten(1)  # 32 x 288: orthogonal rows
    gram = w @ w.T
    is_ortho = torch.allclose(gram, torch.eye(gram.shape[0]), atol=1e-4)
    assert is_ortho == (init == "ortho")


def test_hinge_losses_on_known_values():
    d_real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - x) = 0, 0.5, 2
    d_fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + x) = 0, 1, 2
    assert hinge_d(d_real, d_fake).item() == pytest.approx(2.5 / 3 + 1.0)
    assert hinge_g(d_fake).item() == pytest.approx(1.0 / 3)


def test_arch_tables_are_consistent():
    for res, arch in ARCHS.items():
        assert arch.g_blocks[-1].size == res
        assert [b.in_mult for b in arch.g_blocks[1:]] == [b.out_mult for b in arch.g_blocks[:-1]]
        assert [b.in_mult for b in arch.d_blocks[1:]] == [b.out_mult for b in arch.d_blocks[:-1]]


def test_a_held_power_iteration_uses_a_fresh_sigma_and_stores_nothing():
    """The G step's pass through D: u and v stay, and D computes exactly what a training
    forward (one stored iteration) would have computed from the same state."""
    cfg = ModelConfig(ch=8, attn_g=[], attn_d=[16])
    _, D = build_models(cfg, 32, 10)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    norms = _spectral_norms(D)
    before = [(p._u.clone(), p._v.clone()) for _, p in norms]
    advancing = copy.deepcopy(D).train()
    with held_power_iteration(D.train()):
        held_out = D(x, y)
    for (_, p), (u, v) in zip(norms, before, strict=True):
        assert torch.equal(p._u, u) and torch.equal(p._v, v), "a held forward moved u or v"
    torch.testing.assert_close(held_out, advancing(x, y), rtol=0, atol=0)
    assert not any(p.hold for _, p in norms), "the hold ends with the block"
    D(x, y)  # and a training forward outside it advances again
    assert not torch.equal(norms[0][1]._u, before[0][0])


@pytest.mark.parametrize(("mode", "moves"), [("hold", False), ("advance", True)])
def test_the_g_step_leaves_ds_spectral_norm_vectors_alone(mode, moves, tmp_path):
    from sagan.config import build_config
    from sagan.data.batches import Batches
    from sagan.training.loop import Trainer

    cfg = build_config(
        {
            "data": {"name": "synthetic", "resolution": 32, "synthetic": {"n_images": 64}},
            "model": {"ch": 8, "z_dim": 16, "attn_g": [], "attn_d": [], "sn_g_step": mode},
            "train": {"steps": 1, "batch_size": 8, "n_dis": 1, "device": "cpu"},
        }
    )
    t = Trainer(cfg, tmp_path, progress=False)
    seen = {}

    def snapshot(opt_step, name):
        def wrapped(*args, **kwargs):
            seen[name] = [p._u.clone() for _, p in _spectral_norms(t.D)]
            return opt_step(*args, **kwargs)

        return wrapped

    # D's u when D's optimizer steps (after the D step's forward) and when G's does.
    t.opt_d.step = snapshot(t.opt_d.step, "after_d")
    t.opt_g.step = snapshot(t.opt_g.step, "after_g")
    t.train_step(Batches(t.dataset, 8, 0, t.device), torch.full((), -1))
    same = all(torch.equal(a, b) for a, b in zip(seen["after_d"], seen["after_g"], strict=True))
    assert same != moves


@pytest.mark.parametrize(
    ("setting", "conditional", "last"),
    [("official", 0.001, 0.0001), (0.1, 0.1, 0.1)],
)
def test_batch_norm_momenta_follow_the_official_code_unless_set(setting, conditional, last):
    G, _ = build_models(ModelConfig(ch=8, attn_g=[], attn_d=[], bn_momentum=setting), 32, 10)
    cbns = [m.bn for m in G.modules() if isinstance(m, CondBatchNorm2d)]
    assert cbns and all(bn.momentum == pytest.approx(conditional) for bn in cbns)
    assert G.bn.momentum == pytest.approx(last)


def test_grouped_batch_norm_normalises_each_group_on_its_own():
    torch.manual_seed(0)
    x = torch.randn(8, 4, 5, 5) * 3 + 1
    grouped = GroupBatchNorm2d(4, momentum=0.1, group=4)
    plain = torch.nn.BatchNorm2d(4, momentum=0.1)
    expected = torch.cat([plain(x[:4]), plain(x[4:])])
    out = grouped(x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grouped.running_mean, plain.running_mean)
    torch.testing.assert_close(grouped.running_var, plain.running_var)
    assert not torch.allclose(out, torch.nn.BatchNorm2d(4)(x))
    grouped.eval(), plain.eval()
    torch.testing.assert_close(grouped(x), plain(x))  # eval: the running statistics
