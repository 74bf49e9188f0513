"""What the SLURM executor costs: ``python -m slurm.bench [--profile local] [--cells 100]``.

Two figures, measured on whatever cluster the profile points at:

- **submission time per cell**: ``SlurmExecutor.submit`` of an array of ``--cells``
  prepared tiny cells (run directories, pickles, one ``sbatch``, ``job.json`` each),
  held in the queue with ``--begin`` and cancelled afterwards, so nothing trains;
- **requeue latency**: one tiny cell is sent USR2 (``scancel --signal``) while it
  trains; the time until it has checkpointed and left, until SLURM starts it again,
  and until its training resumes past the step it stopped at.

Runs go to a temporary store that is removed afterwards. Prints one line per figure
and the machine; ``--json`` prints one JSON object instead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ablations.executors import Task
from ablations.grid import load_grid
from ablations.store import RunStore, read_job
from sagan.training import rundir
from sagan.training.machine import describe, machine
from slurm.executor import SlurmExecutor
from slurm.profile import load_profile

GRID = """
name: bench
base:
  data: {{name: synthetic, resolution: 32, synthetic: {{n_images: 256, n_classes: 4}}}}
  model: {{ch: 8, z_dim: 16}}
  train: {{steps: {steps}, batch_size: 8, log_every: 1, ckpt_every: 1000,
          sample_every: 100000, n_samples: 4, device: cpu}}
eval: {{metrics: []}}
seeds: {seeds}
"""


def _cells(store: Path, n: int, steps: int):
    path = store / "grid.yaml"
    path.write_text(GRID.format(steps=steps, seeds=list(range(n))))
    grid = load_grid(path)
    runs = RunStore(store / "runs")
    return [Task(c.run_id, runs.prepare(c), c.label(), c.config.train.steps) for c in grid.cells]


def submission(profile_name: str, overrides: list[str], n: int) -> dict:
    """``SlurmExecutor.submit`` alone, and the whole ``ablations.run --detach`` command
    (Python start, grid, plan, run directories, submission), on ``n`` held cells."""
    held = [*overrides, "slurm.sbatch.begin=now+3600"]
    with tempfile.TemporaryDirectory(dir=".") as d:
        tasks = _cells(Path(d), n, steps=10)
        ex = SlurmExecutor(Path(d) / "runs", load_profile(profile_name, cli_overrides=held))
        t0 = time.perf_counter()
        jobs = ex.submit(tasks)
        dt = time.perf_counter() - t0
        subprocess.run(["scancel", next(iter(jobs.values())).job_id.split("_")[0]], check=True)

        cmd = [sys.executable, "-m", "ablations.run", str(Path(d) / "grid.yaml")]
        cmd += ["--out", str(Path(d) / "cli"), "--executor", "slurm", "--profile", profile_name]
        t0 = time.perf_counter()
        subprocess.run([*cmd, *held, "--detach"], check=True, capture_output=True)
        dt_cli = time.perf_counter() - t0
        array = read_job(next((Path(d) / "cli").glob("*/job.json")).parent)["array_job_id"]
        subprocess.run(["scancel", array], check=True)
    return {
        "cells": n,
        "submit_s": dt,
        "per_cell_ms": 1000 * dt / n,
        "command_s": dt_cli,
        "command_per_cell_ms": 1000 * dt_cli / n,
    }


def _wait(cond, timeout: float, what: str) -> float:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return time.time()
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def requeue(profile_name: str, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory(dir=".") as d:
        (task,) = _cells(Path(d), 1, steps=100_000)
        ex = SlurmExecutor(Path(d) / "runs", load_profile(profile_name, cli_overrides=overrides))
        ex.submit([task])
        run = task.run_dir
        job = read_job(run)["job_id"]
        try:
            _wait(lambda: rundir.read_status(run).get("step", 0) >= 5, 300, "training")
            t0 = time.time()
            subprocess.run(["scancel", "--signal=USR2", job], check=True)
            t_stop = _wait(
                lambda: rundir.read_status(run).get("state") == "interrupted", 300, "the stop"
            )
            stopped_at = rundir.read_status(run)["step"]
            t_start = _wait(
                lambda: rundir.read_status(run).get("attempts", 0) >= 2, 600, "the restart"
            )
            t_resume = _wait(
                lambda: (
                    (s := rundir.read_status(run)).get("attempts", 0) >= 2
                    and s.get("step", 0) > stopped_at
                ),
                600,
                "the resumed training",
            )
        finally:
            subprocess.run(["scancel", job], capture_output=True)
    return {
        "checkpointed_s": t_stop - t0,
        "restarted_s": t_start - t0,
        "resumed_s": t_resume - t0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slurm.bench", description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", metavar="slurm.KEY=VALUE")
    p.add_argument("--profile", default="local")
    p.add_argument("--cells", type=int, default=100, help="cells in the submitted array")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    out = {
        "submission": submission(args.profile, args.overrides, args.cells),
        "requeue": requeue(args.profile, args.overrides),
        "machine": machine("cpu"),
    }
    if args.json:
        print(json.dumps(out))
        return 0
    s, r = out["submission"], out["requeue"]
    print(
        f"submission of {s['cells']} cells as one array: submit() {s['submit_s']:.2f} s "
        f"({s['per_cell_ms']:.1f} ms per cell); the whole ablations.run --detach command "
        f"{s['command_s']:.2f} s ({s['command_per_cell_ms']:.1f} ms per cell)"
    )
    print(
        f"requeue after USR2: checkpointed in {r['checkpointed_s']:.1f} s, the requeued job "
        f"picked the run up in {r['restarted_s']:.1f} s, training again in "
        f"{r['resumed_s']:.1f} s"
    )
    print(f"machine: {describe(out['machine'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
