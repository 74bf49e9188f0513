"""Fault injection for the tests of what a failure leaves behind; off unless
``SAGAN_FAULT`` names a point.

``SAGAN_FAULT=POINT[,POINT...]``, read once per process. The points:

- ``rankR-stepS``: rank R raises :class:`FaultInjected` once G step S is trained;
- ``rankR-eval``: rank R raises :class:`FaultInjected` as a monitoring evaluation
  starts;
- ``after-sbatch``: the SLURM submitter is killed (SIGKILL) the moment sbatch has
  accepted an array (:mod:`slurm.executor`).

Nothing here runs unless the variable is set: :func:`hit` is one set lookup.
"""

from __future__ import annotations

import functools
import os

ENV = "SAGAN_FAULT"


class FaultInjected(RuntimeError):
    """A failure asked for through ``SAGAN_FAULT``."""


@functools.cache
def _points() -> frozenset[str]:
    return frozenset(p.strip() for p in os.environ.get(ENV, "").split(",") if p.strip())


def hit(point: str) -> bool:
    """Whether ``SAGAN_FAULT`` names ``point``."""
    return point in _points()


def raise_at(point: str) -> None:
    """Raise :class:`FaultInjected` if ``SAGAN_FAULT`` names ``point``."""
    if hit(point):
        raise FaultInjected(f"{ENV} asked for a failure at {point}")
