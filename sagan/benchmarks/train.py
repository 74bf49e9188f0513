"""Training throughput, kept for old command lines: ``python -m sagan.benchmarks.train
CONFIG [key=value ...] [--steps N] [--warmup N]`` runs :mod:`sagan.bench` on that
config (one case), which times, counts FLOPs and compares with the machine's ceiling.
"""

from __future__ import annotations

import sys

from sagan.bench import main as bench_main


def main(argv: list[str] | None = None) -> int:
    return bench_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    raise SystemExit(main())
