"""Show a grid's cells: ``python -m ablations.status GRID.yaml [--out RUNS]``.

One row per cell with its state, G step and the latest FID/IS (or the synthetic
consistency score). Cells submitted to SLURM also show their job id, the job's state
as ``sacct`` has it (queued, running, requeued, completed, preempted, failed, cancelled,
timeout, or vanished) and its log, and a job that ended without finishing its run
is explained below the table, followed by what uses up the profile's
``max_requeues``: only timeouts, as submitit tells them (a signal after
min(0.8 x time, time - 10 min) of the job's run, so every signal when time <= 10 min);
a preemption or any earlier signal requeues without counting, and a timeout with none
left ends the job FAILED, its run failed. Reads the run store and the scheduler only;
starts and changes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ablations.grid import GridError
from ablations.run import open_grid
from ablations.store import read_job
from ablations.table import cell_table
from sagan.training.rundir import FINAL_STATES


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
    dirs = {c.run_id: store.run_dir(c.run_id) for c in cells}
    jobs = None
    if any((r := read_job(d)) and r.get("executor") == "slurm" for d in dirs.values()):
        try:
            from slurm.executor import SlurmExecutor  # submitit only when a job was SLURM's

            views = SlurmExecutor(out=store.out).jobs(list(dirs.values()))
        except RuntimeError as e:
            print(f"warning: job states unavailable: {e}", file=sys.stderr)
        else:
            jobs = {rid: views[d] for rid, d in dirs.items() if d in views}
    print(cell_table(grid, store, cells, jobs=jobs))
    for c in cells:
        job = (jobs or {}).get(c.run_id)
        st = store.state(c)
        if job and not job.live and st.state not in FINAL_STATES:
            print(f"{c.label()} ({c.run_id}): {job.reason()}; log: {job.log}")
    if jobs:
        from slurm.jobs import REQUEUE_RULE

        print(f"\n{REQUEUE_RULE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
