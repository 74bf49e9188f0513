"""Speed you can measure: ``python -m sagan.bench [CONFIG] [key=value ...] [--sweep KEY=A,B ...]``.

Times the real training step (:class:`sagan.step.TrainStep`: ``n_dis`` D steps and
one G step, forward, backward, optimizers and EMA) for a config and every
combination of the ``--sweep`` values, each case in a fresh process so that its peak
memory is its own. Per case: the median ms per G step after warm-up, real images/s,
peak memory (CUDA peak allocated on a GPU, peak RSS on the CPU), the step's FLOPs
(torch's FLOP counter: convolutions and matmuls, forward and backward) and the FLOP/s
it achieves as a fraction of the machine's dense matmul ceiling, measured in the same
run in fp32 and bf16. Prints a table (speed-ups against the first case) and writes
everything, with the machine, to ``--out`` (JSON).

``--eval`` times one FID/IS evaluation instead (:mod:`sagan.benchmarks.eval`).

Compare figures only within one run on one machine: the JSON names the machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "tiny.yaml"


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int | None = None) -> float:
    """Dense matmul FLOP/s of ``n x n`` matrices: the best of a few timed products."""
    cuda = device.type == "cuda"
    n = n or (8192 if cuda else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


STEP_FIELDS = (
    "resolution",
    "ch",
    "attn_g",
    "attn_d",
    "batch_size",
    "n_dis",
    "amp",
    "channels_last",
    "compile",
    "attention_kernel",
)


def step_fields(cfg: Any) -> dict[str, Any]:
    """What makes two training steps cost the same (:data:`STEP_FIELDS`): the fields
    each case records, and what ``ablations.run --cost-from`` matches cells on."""
    values = (
        cfg.data.resolution,
        cfg.model.ch,
        list(cfg.model.attn_g),
        list(cfg.model.attn_d),
        cfg.train.batch_size,
        cfg.train.n_dis,
        cfg.train.amp,
        cfg.train.channels_last,
        cfg.train.compile,
        cfg.model.attention_kernel,
    )
    return dict(zip(STEP_FIELDS, values, strict=True))


def _cpu_attention_flops() -> dict[Any, Any]:
    """FLOP formulas for SDPA's CPU flash kernel, which torch's counter lacks (it knows
    the CUDA kernels): the same formulas, forward and backward, so a CPU step counts its
    attention as a CUDA step does instead of as zero."""
    from torch.utils.flop_counter import flop_registry

    def as_registered(formula):
        # Already shape-wrapped in the registry: passed on as is, not wrapped again.
        def count(*args, **kwargs):
            return formula(*args, **kwargs)

        count._get_raw = True
        return count

    aten = torch.ops.aten
    cuda_formulas = {
        aten._scaled_dot_product_flash_attention_for_cpu: aten._scaled_dot_product_flash_attention,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: (
            aten._scaled_dot_product_flash_attention_backward
        ),
    }
    return {cpu: as_registered(flop_registry[cuda]) for cpu, cuda in cuda_formulas.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_step(config: str, overrides: list[str], steps: int, warmup: int) -> dict[str, Any]:
    """One case: build the step from the config, count one step's FLOPs, time ``steps``
    steps after ``warmup``. Runs in its own process (see :func:`run_cases`)."""
    from torch.utils.flop_counter import FlopCounterMode

    from sagan.batches import Batches
    from sagan.benchmarks.machine import machine
    from sagan.config import load_config
    from sagan.data import build_dataset
    from sagan.step import TrainStep
    from sagan.trainer import pick_device, seed_everything

    cfg = load_config(config, overrides)
    tc = cfg.train
    device = pick_device(tc.device)
    seed_everything(tc.seed)
    dataset = build_dataset(cfg.data, "train")
    update = TrainStep(cfg, dataset.num_classes if cfg.data.conditional else 0, device)
    batches = Batches(
        dataset,
        tc.batch_size,
        tc.seed,
        device,
        num_workers=cfg.data.num_workers,
        channels_last=update.channels_last,
    )
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    for s in range(1, warmup + 1):
        update(batches, first_bad, s)
    with FlopCounterMode(display=False, custom_mapping=_cpu_attention_flops()) as counter:
        update(batches, first_bad, warmup + 1)
    flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for s in range(warmup + 2, warmup + 2 + steps):
        _sync(device)
        t = time.perf_counter()
        update(batches, first_bad, s)
        _sync(device)
        times.append(time.perf_counter() - t)
    ms = 1000 * statistics.median(times)
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    )
    return {
        "overrides": overrides,
        **step_fields(cfg),
        "ms_per_step": round(ms, 3),
        "img_per_s": round(tc.batch_size * tc.n_dis / (ms / 1000), 2),
        "peak_mem_gib": round(peak, 3),
        "peak_mem_kind": "CUDA peak allocated" if device.type == "cuda" else "peak RSS",
        "flops_per_step": flops,
        "achieved_tflops": round(flops / (ms / 1000) / 1e12, 4),
        "machine": machine(device),
    }


def cases(base: list[str], sweeps: list[str]) -> list[list[str]]:
    """The override lists of every combination of ``--sweep KEY=A,B`` values, after
    ``base``. A value holding a list is written with ``;`` (``model.attn_g=[];[16]``)."""
    axes = []
    for sweep in sweeps:
        key, sep, values = sweep.partition("=")
        if not sep or not values:
            raise SystemExit(f"error: --sweep {sweep}: expected KEY=VALUE,VALUE,...")
        split = values.split(";") if ";" in values else values.split(",")
        axes.append([f"{key}={v}" for v in split])
    return [base + list(combo) for combo in itertools.product(*axes)] if axes else [base]


def run_cases(
    config: str, overrides: list[list[str]], steps: int, warmup: int
) -> list[dict[str, Any]]:
    """Every case in a fresh process, one after another (never two at once)."""
    out = []
    for ov in overrides:
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            out.append(pool.submit(time_step, config, ov, steps, warmup).result())
    return out


def ceilings(device: torch.device) -> dict[str, float]:
    from sagan.benchmarks.machine import cpu_has_bf16

    # Emulated bf16 (a CPU without AVX512-BF16 or AMX) takes seconds per 1024 product.
    emulated = device.type == "cpu" and not cpu_has_bf16()
    return {
        "fp32": matmul_ceiling(device, torch.float32),
        "bf16": matmul_ceiling(device, torch.bfloat16, n=512 if emulated else None),
    }


def add_fractions(result: dict[str, Any]) -> None:
    """Each case's ``fraction_of_ceiling``: its FLOP/s over the machine's dense rate in
    its precision. Under autocast that is the best of bf16 and fp32: bf16 where it is
    faster (GPUs, AMX or AVX512-BF16 CPUs), fp32 where bf16 is emulated (AVX2 CPUs)."""
    fp32, bf16 = result["ceiling_flops"]["fp32"], result["ceiling_flops"]["bf16"]
    for c in result["cases"]:
        ceiling = max(fp32, bf16) if c["amp"] else fp32
        c["fraction_of_ceiling"] = round(c["achieved_tflops"] * 1e12 / ceiling, 4)


def table(result: dict[str, Any]) -> str:
    """The cases as a text table, with speed-ups against the first case."""
    base = result["cases"][0]["ms_per_step"]
    rows = [["case", "ms/step", "img/s", "speed-up", "peak GiB", "GFLOP/step", "of ceiling"]]
    for c in result["cases"]:
        frac = c["fraction_of_ceiling"]
        rows.append(
            [
                " ".join(c["overrides"]) or "(config as is)",
                f"{c['ms_per_step']:.1f}",
                f"{c['img_per_s']:.1f}",
                f"{base / c['ms_per_step']:.2f}x",
                f"{c['peak_mem_gib']:.2f}",
                f"{c['flops_per_step'] / 1e9:.1f}",
                f"{100 * frac:.1f}%",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sagan.bench", description=__doc__.splitlines()[0])
    p.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG))
    p.add_argument("overrides", nargs="*", help="dotted.key=value, applied to every case")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=A,B")
    p.add_argument("--steps", type=int, default=10, help="timed G steps per case (median)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", type=Path, help="write the JSON here")
    p.add_argument("--eval", action="store_true", help="time one FID/IS evaluation instead")
    args, rest = p.parse_known_args(argv)
    if args.eval:
        from sagan.benchmarks import eval as eval_bench

        return eval_bench.main(rest)
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if "=" in args.config and not Path(args.config).exists():  # no config: overrides only
        args.overrides.insert(0, args.config)
        args.config = str(DEFAULT_CONFIG)
    from sagan.benchmarks.machine import describe
    from sagan.config import ConfigError, load_config
    from sagan.trainer import pick_device

    todo = cases(args.overrides, args.sweep)
    try:  # every case's config is checked before any is timed
        cfgs = [load_config(args.config, ov) for ov in todo]
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = pick_device(cfgs[0].train.device)
    result: dict[str, Any] = {"config": args.config, "steps": args.steps, "warmup": args.warmup}
    before = ceilings(device)
    result["cases"] = run_cases(args.config, todo, args.steps, args.warmup)
    # Measured on either side of the cases, the better of the two: one slow moment
    # (another process, a clock change) does not make every case look closer to it.
    after = ceilings(device)
    result["ceiling_flops"] = {k: max(before[k], after[k]) for k in before}
    result["ceiling_runs"] = [before, after]
    result["machine"] = result["cases"][0]["machine"]
    add_fractions(result)
    print(table(result))
    print(
        f"ceiling: fp32 {result['ceiling_flops']['fp32'] / 1e12:.2f} TFLOP/s, "
        f"bf16 {result['ceiling_flops']['bf16'] / 1e12:.2f} TFLOP/s (dense matmul)"
    )
    print(f"machine: {describe(result['machine'])}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
