"""Adversarial losses. The paper and the official code use the hinge loss
(Lim & Ye 2017; Miyato et al. 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hinge_d(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """L_D = E[relu(1 - D(x, y))] + E[relu(1 + D(G(z), y))]."""
    return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()


def hinge_g(d_fake: torch.Tensor) -> torch.Tensor:
    """L_G = -E[D(G(z), y)]."""
    return -d_fake.mean()


LOSSES = {"hinge": (hinge_d, hinge_g)}
