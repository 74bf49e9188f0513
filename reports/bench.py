"""How long a report takes: ``python -m reports.bench [--runs 1000]``.

Writes a store of ``--runs`` runs in the real on-disk format (``config.yaml``,
``status.json``, ``metrics.jsonl``, ``eval.jsonl`` with monitoring and final records
and their protocols, and a grid index with two axes and seeds), then times
:func:`reports.frame.read_store` and :func:`reports.build.build` on it. The numbers
are random; the files are what a grid of that size leaves. Prints the times and the
machine; the store is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from reports.build import build
from reports.frame import forget_reads, read_store
from sagan.config import build_config, to_yaml
from sagan.training import rundir
from sagan.training.machine import describe, machine

ATTENTION = ("none", "feat8", "feat16", "feat32")
SN = ("d_only", "both")


def write_store(out: Path, n_runs: int, seed: int = 0) -> None:
    """``n_runs`` runs of a (attention x sn x seeds) grid, each with 5 monitoring
    evaluations, a final score and 10 logged steps."""
    rng = random.Random(seed)
    out.mkdir(parents=True)
    cells = []
    protocol_mon = {"n_generated": 5000, "g": "ema", "g_mode": "eval", "extractor": "x"}
    protocol_fin = {**protocol_mon, "n_generated": 50000}
    for i in range(n_runs):
        attention, sn = ATTENTION[i % 4], SN[(i // 4) % 2]
        levels = {"attention": attention, "sn": sn, "seed": str(i // 8)}
        run_id = f"{i:012x}"
        cells.append({"run_id": run_id, "levels": levels})
        d = out / run_id
        d.mkdir()
        cfg = build_config(
            {"data": {"name": "synthetic", "resolution": 32}, "train": {"seed": i // 8}}
        )
        (d / "config.yaml").write_text(to_yaml(cfg))
        records = [
            {
                "step": s,
                "origin": "train",
                "protocol_id": "mon",
                "protocol": protocol_mon,
                "metrics": {"fid": rng.uniform(20, 60), "is_mean": rng.uniform(5, 40)},
                "wall_s": 60,
            }
            for s in range(10_000, 50_001, 10_000)
        ]
        records.append(
            {
                **records[-1],
                "origin": "final",
                "checkpoint": "last",
                "protocol_id": "fin",
                "protocol": protocol_fin,
            }
        )
        (d / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (d / "metrics.jsonl").write_text(
            "".join(
                json.dumps(
                    {"step": s, "loss_d": rng.random(), "loss_g": rng.random(), "it_per_s": 3.0}
                )
                + "\n"
                for s in range(5_000, 50_001, 5_000)
            )
        )
        rundir.write_status(d, {"state": "done", "step": 50_000, "steps": 50_000, "attempts": 1})
    index = {
        "name": "bench",
        "axes": {
            "attention": list(ATTENTION),
            "sn": list(SN),
            "seed": [str(s) for s in range((n_runs + 7) // 8)],
        },
        "cells": cells,
    }
    (out / "grid-bench.json").write_text(json.dumps(index))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reports.bench", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=1000)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "runs"
        t0 = time.perf_counter()
        write_store(store, args.runs)
        t1 = time.perf_counter()
        rows = len(read_store(store))
        t2 = time.perf_counter()
        # Cold, as a fresh ``python -m reports.build`` runs: nothing of the read above
        # is reused (the operating system's file cache is, as it is for a user who
        # builds the report of a store the runs have just written), and the frame read
        # above is gone (``rows`` is all that is kept of it).
        forget_reads()
        build(store)
        t3 = time.perf_counter()
    print(
        f"{args.runs} runs ({rows} rows): wrote the store in {t1 - t0:.1f} s, "
        f"read it in {t2 - t1:.2f} s, built the report in {t3 - t2:.2f} s "
        "(a cold build: its own read of the store and first matplotlib use included)"
    )
    print(f"machine: {describe(machine('cpu'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
