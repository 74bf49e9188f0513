"""Training throughput: ``python -m sagan.benchmarks.train CONFIG.yaml [key=value ...]``.

Times G steps of the real training step (:class:`sagan.step.TrainStep`: n_dis D
steps and one G step, EMA included) after a warm-up, and prints G steps/s and real
images/s with the machine it ran on. Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sagan.batches import Batches
from sagan.benchmarks.machine import describe, machine
from sagan.config import load_config
from sagan.data import build_dataset
from sagan.step import TrainStep
from sagan.trainer import pick_device, seed_everything


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
    train_cfg = cfg.train
    device = pick_device(train_cfg.device)
    cuda = device.type == "cuda"
    seed_everything(train_cfg.seed)
    dataset = build_dataset(cfg.data, "train")
    update = TrainStep(cfg, dataset.num_classes if cfg.data.conditional else 0, device)
    batches = Batches(
        dataset,
        train_cfg.batch_size,
        train_cfg.seed,
        device,
        num_workers=cfg.data.num_workers,
        channels_last=cuda and train_cfg.channels_last,
    )
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    for s in range(1, args.warmup + 1):
        update(batches, first_bad, s)
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for s in range(args.warmup + 1, args.warmup + args.steps + 1):
        update(batches, first_bad, s)
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    result = {
        "machine": machine(device),
        "resolution": cfg.data.resolution,
        "ch": cfg.model.ch,
        "attn_g": cfg.model.attn_g,
        "attn_d": cfg.model.attn_d,
        "batch_size": train_cfg.batch_size,
        "n_dis": train_cfg.n_dis,
        "amp": train_cfg.amp and cuda,
        "g_steps_per_s": args.steps / dt,
        "img_per_s": args.steps * train_cfg.batch_size * train_cfg.n_dis / dt,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
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
