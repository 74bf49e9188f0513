"""The training step's own pieces: the EMA copy, the EMA update and the noise draw."""

import torch

from sagan.config import load_config
from sagan.models import build_models
from sagan.step import with_ema_copy
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
