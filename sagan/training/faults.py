"""Fault injection for the tests of what a failure leaves behind; off unless
``SAGAN_FAULT`` names a point.

``SAGAN_FAULT=POINT[,POINT...]``, read once per process. The points:

- ``rankR-stepS``: rank R raises :class:`FaultInjected` once G step S is trained;
- ``rankR-eval``: rank R raises :class:`FaultInjected` as a monitoring evaluation
  starts;
- ``rankR-eval-usr2``: rank R sends SIGUSR2 (what SLURM sends before a time limit)
  to its whole process group, as SLURM signals every task of a job, once the first
  monitoring evaluation of the process has scored its first batch; the test that
  sets it starts the ranks in a process group of their own;
- ``stall-stepS``: the run waits, once G step S is trained and checkpointed, until
  it is asked to stop or killed (at most :data:`STALL_MAX_S`), so that a test can
  preempt it at a known step however fast or slow the machine is;
- ``after-sbatch``: the SLURM submitter is killed (SIGKILL) the moment sbatch has
  accepted an array (:mod:`slurm.executor`).

Nothing here runs unless the variable is set: :func:`hit` is one set lookup.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Callable

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


STALL_MAX_S = 120.0


def stall_at(point: str, until: Callable[[], bool]) -> None:
    """If ``SAGAN_FAULT`` names ``point``: wait until ``until()`` says True, the process
    is killed, or :data:`STALL_MAX_S` have passed."""
    if not hit(point):
        return
    end = time.monotonic() + STALL_MAX_S
    while not until() and time.monotonic() < end:
        time.sleep(0.1)


_fired: set[str] = set()


def signal_group_at_second_call(point: str, ask: Callable[[], bool]) -> Callable[[], bool]:
    """``ask``, which sends SIGUSR2 to this process's group at its second call, once per
    process, if ``SAGAN_FAULT`` names ``point``; else ``ask`` itself."""
    if not hit(point) or point in _fired:
        return ask
    calls = 0

    def asked() -> bool:
        nonlocal calls
        calls += 1
        if calls == 2 and point not in _fired:
            _fired.add(point)
            os.killpg(0, signal.SIGUSR2)  # delivered to this process before killpg returns
        return ask()

    return asked
