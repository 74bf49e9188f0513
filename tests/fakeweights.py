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

from sagan.metrics.weights import WEIGHTS_FILE, make_random_weights


@pytest.fixture(scope="session")
def fake_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-valued weights file (seed 0), named like the real one."""
    return make_random_weights(tmp_path_factory.mktemp("weights-a") / WEIGHTS_FILE, seed=0)


@pytest.fixture(scope="session")
def other_fake_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second random-valued weights file (seed 1): same name, different sha256."""
    return make_random_weights(tmp_path_factory.mktemp("weights-b") / WEIGHTS_FILE, seed=1)
