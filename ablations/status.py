"""Show a grid's cells: ``python -m ablations.status GRID.yaml [--out RUNS]``.

One row per cell with its state, G step and the latest FID/IS (or the synthetic
consistency score). Reads the run store only; starts nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ablations.grid import GridError
from ablations.run import open_grid
from ablations.table import cell_table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ablations.status", description=__doc__.splitlines()[0]
    )
    p.add_argument("grid")
    p.add_argument("--out", type=Path)
    p.add_argument("--only", action="append", default=[])
    args = p.parse_args(argv)
    try:
        grid, cells, store = open_grid(args.grid, args.only, args.out)
    except GridError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(cell_table(grid, store, cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
