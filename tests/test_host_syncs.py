"""The training step makes no host-device synchronisation.

On a GPU, any op whose result the host must read (``.item()``, ``bool(t)``,
``nonzero``, a boolean mask, a copy to the CPU) stalls the launch queue until the
device catches up. No GPU is here, but every such op reaches the dispatcher as a
named aten op on the CPU too, so a dispatch mode that watches one real step sees
them. (A copy to the host cannot be seen here: on the CPU, ``.cpu()`` of a CPU tensor
never reaches the dispatcher. The step moves nothing to the host; its callers read
the losses only at logging steps.) The one exception is non-fused Adam's step counter (a host tensor read with
``.item()``), which the CPU path uses; on CUDA the step uses fused Adam, whose counters
live on the device.
"""

import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sagan.config import build_config
from sagan.training.step import TrainStep
from tests.test_resume import BASE

# Ops that make the host wait for the device on CUDA.
SYNCING = {
    "aten::_local_scalar_dense",  # .item(), int(t), float(t), bool(t), if t:
    "aten::is_nonzero",
    "aten::nonzero",
    "aten::masked_select",
    "aten::_unique2",
    "aten::unique_consecutive",
    "aten::repeat_interleave",
    "aten::equal",
}


class HostSyncs(TorchDispatchMode):
    """Records syncing ops with the code that called them."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        # A boolean mask as an index: its nonzero runs inside the CPU kernel.
        mask = name == "aten::index" and any(
            i is not None and i.dtype == torch.bool for i in args[1]
        )
        if name in SYNCING or mask:
            stack = traceback.extract_stack()[:-1]
            if not any("torch/optim/" in f.filename for f in stack):
                caller = next(
                    (f for f in reversed(stack) if "/torch/" not in f.filename), stack[-1]
                )
                self.found.append(f"{name} from {caller.filename}:{caller.lineno} {caller.line}")
        return func(*args, **kwargs)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"train.ema": 0.9, "train.n_dis": 2},
        {"train.amp": True, "model.attention_variant": "paper"},
        {"model.sn_g_step": "advance", "train.channels_last": False},
    ],
    ids=["default", "ema-n_dis-2", "bf16-paper-attention", "advance-contiguous"],
)
def test_a_training_step_makes_no_host_sync(overrides):
    cfg = build_config(BASE, overrides)
    torch.manual_seed(0)
    step = TrainStep(cfg, num_classes=4, device=torch.device("cpu"))
    b = cfg.train.batch_size
    x = torch.rand(b, 3, 32, 32).mul(2).sub(1).to(memory_format=torch.channels_last)
    batches = iter([(x, torch.arange(b) % 4)] * cfg.train.n_dis * 2)
    first_bad = torch.full((), -1, dtype=torch.long)
    step(batches, first_bad, 1)  # the optimizers' state is created outside the watch
    with HostSyncs() as watch:
        vals = step(batches, first_bad, 2)
    assert watch.found == []
    assert torch.isfinite(torch.stack(list(vals.values()))).all()


def test_the_watch_sees_a_sync():
    """The watch is not blind: ``.item()``, ``if t:``, a boolean mask and ``nonzero``."""
    t = torch.ones(3)
    with HostSyncs() as watch:
        t.sum().item()
        if t.all():
            pass
        t[t > 0]
        t[torch.arange(2)]  # an integer index does not sync
        t.nonzero()
    names = [f.split()[0] for f in watch.found]
    assert names == [
        "aten::_local_scalar_dense",
        "aten::_local_scalar_dense",
        "aten::index",
        "aten::nonzero",
    ]
