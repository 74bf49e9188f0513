"""The one exception the metrics raise for problems a person has to fix."""

from __future__ import annotations


class MetricsError(Exception):
    """A metrics problem, phrased for a person: what is wrong, where, and what to do."""


__all__ = ["MetricsError"]
