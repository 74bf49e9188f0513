"""Show a grid's cells: ``python -m ablations.status GRID.yaml [--out RUNS]``.

One row per cell with its state, G step and the latest FID/IS (or the synthetic
consistency score). Reads the run store only; starts nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ablations.grid import GridError, load_grid, parse_only, select
from ablations.run import default_out, resolve_grid_path
from ablations.store import RunStore
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
        path, bundled = resolve_grid_path(args.grid)
        grid = load_grid(path)
        cells = select(grid, parse_only(args.only))
    except GridError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(cell_table(grid, RunStore(args.out or default_out(path, bundled)), cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
