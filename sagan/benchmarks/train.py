"""Training throughput: ``python -m sagan.benchmarks.train CONFIG.yaml [key=value ...]``.

Times G steps of the real training step (``Trainer.train_step``: n_dis D steps and
one G step, EMA included) after a warm-up, and prints G steps/s and real images/s
with the machine it ran on. Nothing is written to disk besides a temporary run
directory that is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from sagan.batches import Batches
from sagan.benchmarks.machine import describe, machine
from sagan.config import load_config
from sagan.trainer import Trainer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m sagan.benchmarks.train", description=__doc__.splitlines()[0]
    )
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--steps", type=int, default=20, help="timed G steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print one JSON line")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(cfg, d, progress=False)
        train_cfg = cfg.train
        batches = Batches(
            trainer.dataset,
            train_cfg.batch_size,
            train_cfg.seed,
            trainer.device,
            num_workers=cfg.data.num_workers,
            channels_last=trainer.cuda and train_cfg.channels_last,
        )
        first_bad = torch.full((), -1, dtype=torch.long, device=trainer.device)
        for _ in range(args.warmup):
            trainer.train_step(batches, first_bad)
        if trainer.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step(batches, first_bad)
        if trainer.cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    result = {
        "machine": machine(trainer.device),
        "resolution": cfg.data.resolution,
        "ch": cfg.model.ch,
        "attn_g": cfg.model.attn_g,
        "attn_d": cfg.model.attn_d,
        "batch_size": train_cfg.batch_size,
        "n_dis": train_cfg.n_dis,
        "amp": train_cfg.amp and trainer.cuda,
        "g_steps_per_s": args.steps / dt,
        "img_per_s": args.steps * train_cfg.batch_size * train_cfg.n_dis / dt,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if trainer.cuda else None,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{'machine':>15}: {describe(result['machine'])}")
        for k, v in result.items():
            if k != "machine":
                print(f"{k:>15}: {v:.3f}" if isinstance(v, float) else f"{k:>15}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
