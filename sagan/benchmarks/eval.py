"""``python -m sagan.benchmarks.eval``, the evaluation benchmark's name before the core
moved into rooms: it runs :mod:`sagan.metrics.bench` (also ``python -m sagan.bench --eval``)."""

from __future__ import annotations

import sys

from sagan.metrics.bench import main

if __name__ == "__main__":
    sys.exit(main())
