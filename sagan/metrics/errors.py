"""The exceptions the metrics raise: a problem a person has to fix, and a stop request."""

from __future__ import annotations


class MetricsError(Exception):
    """A metrics problem, phrased for a person: what is wrong, where, and what to do."""


class EvaluationStopped(Exception):
    """An evaluation abandoned between two batches because a stop was requested (a
    time limit or a preemption is near): nothing was recorded, and it is owed still."""


__all__ = ["EvaluationStopped", "MetricsError"]
