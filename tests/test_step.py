"""The training step's own pieces: the EMA copy, the EMA update and the noise draw."""

import torch

from sagan.config import load_config
from sagan.nets.models import build_models
from sagan.training.step import with_ema_copy
from tests.test_train import TINY


def _g(**overrides):
    cfg = load_config(TINY, overrides)
    torch.manual_seed(0)
    G, _ = build_models(cfg.model, cfg.data.resolution, 4)
    return G


def _has_sync_bn(module):
    return any(isinstance(m, torch.nn.SyncBatchNorm) for m in module.modules())


def test_g_ema_holds_no_synchronised_batch_norm_under_sync_bn():
    """Rank 0 alone samples G_ema: a SyncBatchNorm in it would wait for the other ranks."""
    G, G_ema = with_ema_copy(_g(), ema=True, sync_bn=True)
    assert _has_sync_bn(G) and not _has_sync_bn(G_ema)
    assert G.state_dict().keys() == G_ema.state_dict().keys()
    assert all(torch.equal(v, G_ema.state_dict()[k]) for k, v in G.state_dict().items())
    assert not G_ema.training and not any(p.requires_grad for p in G_ema.parameters())


def test_without_ema_there_is_no_copy_and_without_sync_bn_no_conversion():
    G, G_ema = with_ema_copy(_g(), ema=False, sync_bn=False)
    assert G_ema is None and not _has_sync_bn(G)


def test_the_noise_drawn_does_not_depend_on_the_device():
    """Drawn on the CPU and moved at the end: a device that is not the CPU (meta stands
    for CUDA here) gets the same draw and leaves the generator where the CPU's does."""
    from sagan.training.step import draw_noise

    cpu, other = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    z, y = draw_noise(cpu, 8, 3, 4, torch.device("cpu"), slice(2, 6))
    zm, ym = draw_noise(other, 8, 3, 4, torch.device("meta"), slice(2, 6))
    assert zm.device.type == "meta" and zm.shape == z.shape == (4, 3) and ym.shape == y.shape
    assert torch.equal(cpu.get_state(), other.get_state())
    ref = torch.Generator().manual_seed(5)
    assert torch.equal(z, torch.randn(8, 3, generator=ref)[2:6])
    assert torch.equal(y, torch.randint(0, 4, (8,), generator=ref)[2:6])


def test_the_training_noise_generator_is_a_cpu_one_on_every_device():
    """Its state, saved in every checkpoint, then resumes on either kind of device."""
    from sagan.training.step import TrainStep

    cfg = load_config(TINY)
    states = []
    for device in ("cpu", "meta"):
        torch.manual_seed(0)
        update = TrainStep(cfg, 4, torch.device(device))
        assert update.noise.device == torch.device("cpu")
        z, y = update.draw()
        assert z.device.type == device and y.device.type == device
        states.append(update.noise.get_state())
    assert torch.equal(*states)
    assert states[0].numel() == torch.Generator().get_state().numel()


def test_the_ema_update_is_bit_for_bit_the_per_tensor_one():
    """Before and after train.ema_start: the EMA G of a run does not move by one bit."""
    import copy

    from sagan.training.step import TrainStep

    cfg = load_config(TINY, {"train.ema": 0.9, "train.ema_start": 1})
    torch.manual_seed(0)
    update = TrainStep(cfg, 4, torch.device("cpu"))
    for step in (1, 2, 3):
        with torch.no_grad():  # G moves as an update would move it
            for p in update.G.parameters():
                p.add_(torch.randn_like(p))
            for b in update.G.buffers():
                b.add_(1)
        expected = copy.deepcopy(update.G_ema)
        decay = 0.9 if step > 1 else 0.0
        with torch.no_grad():
            for e, p in zip(expected.parameters(), update.G.parameters(), strict=True):
                e.lerp_(p, 1.0 - decay)
            for e, b in zip(expected.buffers(), update.G.buffers(), strict=True):
                e.copy_(b)
        update.ema_update(step)
        got = update.G_ema.state_dict()
        assert all(torch.equal(v, got[k]) for k, v in expected.state_dict().items())
    # After ema_start the EMA lags G: it was averaged, not copied.
    ema, g = update.G_ema.parameters(), update.G.parameters()
    assert not all(torch.equal(e, p) for e, p in zip(ema, g, strict=True))
