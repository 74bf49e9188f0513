"""Run an ablation grid: ``python -m ablations.run GRID.yaml``.

Expands the grid into cells, validates every one before anything starts, and trains
what is not done yet: done runs are skipped, interrupted ones resume from their
checkpoint, diverged ones are kept as results, failed ones are retried with
``--retry-failed``. Ends with a summary table; exits non-zero if any cell failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ablations.executors import Task, make_executor
from ablations.grid import Cell, Grid, GridError, load_grid, parse_only, select
from ablations.store import RunStore
from ablations.table import cell_table

BUNDLED = Path(__file__).resolve().parent / "grids"


def resolve_grid_path(arg: str) -> tuple[Path, bool]:
    """A path, or the name of a bundled grid (``smoke`` -> ablations/grids/smoke.yaml)."""
    p = Path(arg)
    if p.exists():
        return p, False
    bundled = BUNDLED / f"{arg}.yaml"
    if "/" not in arg and bundled.exists():
        return bundled, True
    names = ", ".join(sorted(q.stem for q in BUNDLED.glob("*.yaml")))
    raise GridError(f"{arg}: no such grid file (bundled grids: {names})")


def default_out(grid_path: Path, bundled: bool) -> Path:
    # Bundled grids live inside the package: their runs go to ./runs instead.
    return Path("runs") if bundled else grid_path.parent / "runs"


def plan(cell: Cell, store: RunStore, args) -> str:
    """What this invocation does with a cell: run, resume, retry, or skip (why)."""
    st = store.state(cell)
    if args.force:
        return "run (forced)"
    return {
        "pending": "run",
        "interrupted": "resume",
        "running": "skip (running elsewhere)",
        "done": "skip (done)",
        "diverged": "skip (diverged: a result)",
    }.get(st.state) or (
        "retry"
        if args.retry_failed and st.attempts < args.max_attempts
        else f"skip (failed {st.attempts}x; --retry-failed)"
        if st.attempts < args.max_attempts
        else f"skip (failed {st.attempts}x, the limit)"
    )


def check_cells(cells: list[Cell]) -> list[str]:
    """What would make these cells fail at start (data, weights): one line each."""
    from sagan.data import DataError
    from sagan.metrics.errors import MetricsError
    from sagan.train import preflight

    problems: dict[str, None] = {}
    seen: set[str] = set()
    for c in cells:
        key = c.config.data.model_dump_json() + c.config.eval.model_dump_json()
        if key in seen:
            continue
        seen.add(key)
        try:
            preflight(c.config)
        except (DataError, MetricsError) as e:
            problems[str(e)] = None
    return list(problems)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m ablations.run", description=__doc__.splitlines()[0])
    p.add_argument("grid", help="grid YAML file, or the name of a bundled grid (smoke, probe, ...)")
    p.add_argument("--out", type=Path, help="run store (default: runs/ beside the grid file)")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="AXIS=LEVEL[,...]",
        help="run only matching cells",
    )
    p.add_argument("--jobs", type=int, help="cells trained at once (local executor)")
    p.add_argument(
        "--dry-run", action="store_true", help="print the cells and what would run, then exit"
    )
    p.add_argument(
        "--force", action="store_true", help="move selected runs aside and train them anew"
    )
    p.add_argument(
        "--retry-failed", action="store_true", help="retry failed runs (up to --max-attempts)"
    )
    p.add_argument(
        "--max-attempts",
        type=int,
        help="attempts per run before it stays failed (default: grid's, 3)",
    )
    return p.parse_args(argv)


def open_grid(arg: str, only: list[str], out: Path | None) -> tuple[Grid, list[Cell], RunStore]:
    """The grid named on the command line, its selected cells, and its run store.

    Raises:
        GridError: a bad grid file or filter.
    """
    path, bundled = resolve_grid_path(arg)
    grid = load_grid(path)
    return grid, select(grid, parse_only(only)), RunStore(out or default_out(path, bundled))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        grid, cells, store = open_grid(args.grid, args.only, args.out)
    except GridError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.max_attempts = args.max_attempts or grid.spec.max_attempts
    actions = {c.run_id: plan(c, store, args) for c in cells}
    todo = [c for c in cells if not actions[c.run_id].startswith("skip")]
    print(
        f"grid {grid.name}: {len(grid.cells)} cells, {len(cells)} selected, {len(todo)} to train; store {store.out}"
    )
    if args.dry_run:
        print(cell_table(grid, store, cells, actions))
        return 0
    problems = check_cells(todo)
    if problems:
        print("error: " + "\n".join(problems) + "\nnothing was started.", file=sys.stderr)
        return 2
    store.write_index(grid)
    if args.force:
        for c in todo:
            if (moved := store.discard(c.run_id)) is not None:
                print(f"moved {c.run_id} aside to {moved}")
    tasks = [Task(c.run_id, store.prepare(c), c.label(), c.config.train.steps) for c in todo]
    spec = grid.spec.executor
    executor = make_executor(spec.name, jobs=args.jobs or spec.jobs)
    try:
        executor.run(tasks)
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return 130
    print()
    print(cell_table(grid, store, cells))
    states = {c.run_id: store.state(c) for c in cells}
    failed = [c for c in cells if states[c.run_id].state == "failed"]
    for c in failed:
        err = states[c.run_id].status.get("error", "see train.log")
        print(
            f"failed: {c.label()} ({c.run_id}): {err}; log: {store.run_dir(c.run_id) / 'train.log'}",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
