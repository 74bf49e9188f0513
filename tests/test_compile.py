"""``train.compile``: the networks trace as whole graphs, and a compiled run trains and
resumes exactly.

The graph tests trace G and D with dynamo (``torch._dynamo.explain``, no code
generation) in every mode the training step calls them: D's update, G's no-grad pass,
the G update through D with its power iteration held, and eval. A graph break would
split the compiled step where spectral norm or attention could not be traced.
"""

from contextlib import nullcontext

import pytest
import torch
import torch._dynamo

from sagan.config import build_config
from sagan.nets.layers import held_power_iteration
from sagan.training.step import TrainStep
from tests.test_resume import BASE

PLACEMENTS = {
    # resolution, attn_g, attn_d
    "feat8-16-32": (32, [8, 16, 32], [8, 16]),
    "feat64": (128, [64], [64]),
}


def _graph_breaks(module, *args):
    torch._dynamo.reset()
    explained = torch._dynamo.explain(module)(*args)
    return [b.reason for b in explained.break_reasons], explained.graph_count


@pytest.mark.parametrize(
    "variant, placement",
    [
        ("official", "feat8-16-32"),
        ("paper", "feat8-16-32"),
        ("official", "feat64"),
    ],
)
def test_g_and_d_trace_without_graph_breaks_in_every_mode(variant, placement):
    res, attn_g, attn_d = PLACEMENTS[placement]
    cfg = build_config(
        BASE,
        {
            "data.resolution": res,
            "model.attn_g": attn_g,
            "model.attn_d": attn_d,
            "model.attention_variant": variant,
        },
    )
    torch.manual_seed(0)
    step = TrainStep(cfg, num_classes=4, device=torch.device("cpu"))
    G, D = step.G, step.D
    z, y = step.draw()
    x = torch.randn(len(z), 3, res, res).to(memory_format=torch.channels_last)
    modes = {
        "G, no grad (D's update)": (G, (z, y), torch.no_grad()),
        "D, update": (D, (x, y), nullcontext()),
        "G, update": (G, (z, y), nullcontext()),
        "D, power iteration held (G's update)": (D, (x, y), held_power_iteration(D)),
    }
    for mode, (net, args, ctx) in modes.items():
        with ctx:
            breaks, graphs = _graph_breaks(net, *args)
        assert (breaks, graphs) == ([], 1), f"{mode}: {breaks}"
    G.eval()
    D.eval()
    for name, net, args in [("G", G, (z, y)), ("D", D, (x, y))]:
        with torch.no_grad():
            breaks, graphs = _graph_breaks(net, *args)
        assert (breaks, graphs) == ([], 1), f"{name}, eval: {breaks}"
    torch._dynamo.reset()


def test_compile_keeps_state_dict_keys_and_leaves_the_ema_copy_eager():
    cfg = build_config(BASE, {"train.ema": 0.9})
    torch.manual_seed(0)
    plain = TrainStep(cfg, num_classes=4, device=torch.device("cpu"))
    torch.manual_seed(0)
    compiled = TrainStep(
        build_config(BASE, {"train.ema": 0.9, "train.compile": True}),
        num_classes=4,
        device=torch.device("cpu"),
    )
    for net in ("G", "D", "G_ema"):
        assert list(getattr(compiled, net).state_dict()) == list(getattr(plain, net).state_dict())
    assert compiled.G._compiled_call_impl is not None
    assert compiled.D._compiled_call_impl is not None
    # The EMA copy is made before compiling: its forward is its own, not G's.
    assert compiled.G_ema._compiled_call_impl is None


@pytest.mark.slow
def test_a_compiled_run_computes_the_eager_step_and_resumes(tmp_path):
    """The real inductor path, end to end (about 5 minutes on 2 cores, nearly all of it
    the first compilation). Compiled kernels round differently from eager ones, and on
    the CPU not even the same way from one process to the next (docs/measured.md), so
    a compiled run stopped at a checkpoint and resumed is held to the eager run within a
    tolerance rather than bit for bit."""
    from sagan.train import train
    from sagan.training import rundir

    def losses(run_dir):
        recs = rundir.read_jsonl(run_dir / "metrics.jsonl")
        return torch.tensor([[r["step"], r["loss_d"], r["loss_g"]] for r in recs])

    # With an EMA the sample grids come from the (eager) EMA copy, so no eval-mode graph
    # is compiled, only the four the training step needs.
    compiled = {"train.compile": True, "train.steps": 4, "train.ckpt_every": 2, "train.ema": 0.9}
    try:
        eager, split = tmp_path / "eager", tmp_path / "split"
        eager_cfg = build_config(BASE, {**compiled, "train.compile": False})
        assert train(eager_cfg, eager, progress=False) == "done"
        short = {**compiled, "train.steps": 2}
        assert train(build_config(BASE, short), split, progress=False) == "done"
        assert train(build_config(BASE, compiled), split, progress=False) == "done"
    finally:
        torch._dynamo.reset()
    ref = losses(eager)
    assert ref[:, 0].tolist() == [2, 4]
    assert torch.isfinite(ref).all()
    # Steps 1-2 compiled in one process's run, 3-4 after resuming from its checkpoint.
    torch.testing.assert_close(losses(split), ref, rtol=1e-2, atol=0)
    assert not torch.equal(losses(split), ref), "the compiled run ran eagerly"
