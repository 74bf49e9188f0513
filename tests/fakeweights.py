"""Random-valued Inception weights for tests, in the real file format.

These machines have no internet and so no real ``inception-v3-compat`` weights. The
fixtures here write a file with the same state-dict keys and shapes (so torch-fidelity
loads it strictly and every metric runs its real code path) but seeded random values:
the numbers are meaningless, the plumbing is real, and its sha256 marks it
non-canonical. Session-scoped: each file (~92 MB) is written once per test session.

Use in a test module as ``fake_weights = fakeweights.fake_weights``: pytest finds
fixtures by module-level name.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sagan.metrics.dinov2 import make_random_dinov2_weights, weights_file
from sagan.metrics.weights import WEIGHTS_FILE, make_random_weights


@pytest.fixture(scope="session")
def fake_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-valued weights file (seed 0), named like the real one."""
    return make_random_weights(tmp_path_factory.mktemp("weights-a") / WEIGHTS_FILE, seed=0)


@pytest.fixture(scope="session")
def other_fake_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second random-valued weights file (seed 1): same name, different sha256."""
    return make_random_weights(tmp_path_factory.mktemp("weights-b") / WEIGHTS_FILE, seed=1)


@pytest.fixture(scope="session")
def fake_dinov2_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-valued DINOv2 ViT-S/14 file (seed 0; 22M parameters, 88 MB), named like
    the official one. ViT-S/14, not the default ViT-L/14 (300M parameters, 1.2 GB,
    ~2 s an image on these CPUs): the same code path, and ``eval.dinov2_model``
    (recorded in the protocol's extractor name) says which."""
    return make_random_dinov2_weights(
        tmp_path_factory.mktemp("dinov2-a") / weights_file("vit-s-14"), "vit-s-14", seed=0
    )


@pytest.fixture(scope="session")
def other_fake_dinov2_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second random ViT-S/14 file (seed 1): same name, different sha256."""
    return make_random_dinov2_weights(
        tmp_path_factory.mktemp("dinov2-b") / weights_file("vit-s-14"), "vit-s-14", seed=1
    )
