"""The step benchmark behind ``python -m sagan.bench``: timing the real training step
in fresh processes, its FLOPs, and the matmul and conv ceilings it is measured against.
What it measures and how to read it: :mod:`sagan.bench`.
"""

from __future__ import annotations

import itertools
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


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

    from sagan.config import load_config
    from sagan.data.batches import Batches
    from sagan.data.datasets import build_dataset
    from sagan.training.machine import machine
    from sagan.training.setup import pick_device, seed_everything
    from sagan.training.step import TrainStep

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
        "tf32": tc.tf32,
        "cudnn_benchmark": tc.cudnn_benchmark,
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


def precision_key(case: dict[str, Any], device: torch.device) -> str:
    """The precision a case computes in: ``bf16`` (autocast), ``tf32`` (fp32 with
    ``train.tf32`` on CUDA) or ``fp32`` (exact)."""
    if case["amp"]:
        return "bf16"
    return "tf32" if device.type == "cuda" and case.get("tf32") else "fp32"


def conv_ceiling(device: torch.device, dtype: torch.dtype, small: bool = False) -> float:
    """FLOP/s of a dense 3x3 convolution in channels_last (the kernels the step's
    convolutions use): the best of a few timed calls."""
    cuda = device.type == "cuda"
    b, c, r = (64, 256, 64) if cuda else ((2, 64, 16) if small else (16, 128, 32))
    x = torch.randn(b, c, r, r, device=device, dtype=dtype).to(memory_format=torch.channels_last)
    w = torch.randn(c, c, 3, 3, device=device, dtype=dtype).to(memory_format=torch.channels_last)
    best = float("inf")
    with torch.no_grad():
        for _ in range(5):
            _sync(device)
            t = time.perf_counter()
            torch.nn.functional.conv2d(x, w, padding=1)
            _sync(device)
            best = min(best, time.perf_counter() - t)
    return 2 * b * c * c * 9 * r * r / best


def ceilings(device: torch.device, keys: list[str]) -> dict[str, dict[str, float]]:
    """Per precision key (:func:`precision_key`), the dense matmul and 3x3 conv FLOP/s
    measured under that precision (TF32 flags as the case sets them), and their best as
    ``ceiling``: a measured ceiling, not the machine's datasheet peak, which torch
    cannot read."""
    from sagan.training.machine import cpu_has_bf16
    from sagan.training.precision import set_tf32, tf32_state

    # Emulated bf16 (a CPU without AVX512-BF16 or AMX) takes seconds per 1024 product.
    emulated = device.type == "cpu" and not cpu_has_bf16()
    saved = tf32_state()
    out = {}
    try:
        for key in keys:
            set_tf32(key == "tf32")
            dtype = torch.bfloat16 if key == "bf16" else torch.float32
            small = key == "bf16" and emulated
            mm = matmul_ceiling(device, dtype, n=512 if small else None)
            conv = conv_ceiling(device, dtype, small=small)
            out[key] = {"matmul": mm, "conv3x3": conv, "ceiling": max(mm, conv)}
    finally:
        set_tf32(saved["matmul"] and saved["conv"])
    return out


CEILING_KIND = (
    "measured: the best of a dense matmul and a 3x3 channels_last conv, in the case's precision"
)


def share_of_ceiling(achieved_flops: float, ceiling_flops: float) -> float | None:
    """``achieved / ceiling``, or ``None`` when the case beats the measured ceiling:
    then that ceiling is no bound for it, and no share is given (never above 1)."""
    if achieved_flops > ceiling_flops:
        return None
    return round(achieved_flops / ceiling_flops, 4)


def add_fractions(result: dict[str, Any]) -> None:
    """Each case's ``fraction_of_ceiling`` against the ceiling measured in its own
    precision (``ceiling_key``); ``None`` with ``above_ceiling: true`` when the case
    ran faster than that ceiling (see :func:`share_of_ceiling`)."""
    for c in result["cases"]:
        ceiling = result["ceiling_flops"][c["ceiling_key"]]
        c["fraction_of_ceiling"] = share_of_ceiling(c["achieved_tflops"] * 1e12, ceiling)
        c["above_ceiling"] = c["fraction_of_ceiling"] is None


def table(result: dict[str, Any]) -> str:
    """The cases as a text table, with speed-ups against the first case."""
    base = result["cases"][0]["ms_per_step"]
    rows = [["case", "ms/step", "img/s", "speed-up", "peak GiB", "GFLOP/step", "of ceiling"]]
    for c in result["cases"]:
        frac = c["fraction_of_ceiling"]
        share = "above ceiling (no bound)" if frac is None else f"{100 * frac:.1f}%"
        rows.append(
            [
                " ".join(c["overrides"]) or "(config as is)",
                f"{c['ms_per_step']:.1f}",
                f"{c['img_per_s']:.1f}",
                f"{base / c['ms_per_step']:.2f}x",
                f"{c['peak_mem_gib']:.2f}",
                f"{c['flops_per_step'] / 1e9:.1f}",
                f"{share} {c['ceiling_key']}",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows)


def measure(
    config: str, todo: list[list[str]], steps: int, warmup: int, device: torch.device
) -> dict[str, Any]:
    """Time every case and measure the ceilings of the precisions they use, on either
    side of the cases (the better of the two: one slow moment does not make every
    case look closer to it); returns the result :func:`main` writes."""
    from sagan.config import load_config

    result: dict[str, Any] = {"config": config, "steps": steps, "warmup": warmup}
    cfgs = [load_config(config, ov) for ov in todo]
    keys = sorted({precision_key({"amp": c.train.amp, "tf32": c.train.tf32}, device) for c in cfgs})
    before = ceilings(device, keys)
    result["cases"] = run_cases(config, todo, steps, warmup)
    after = ceilings(device, keys)
    for c in result["cases"]:
        c["ceiling_key"] = precision_key(c, device)
    result["ceiling_flops"] = {k: max(before[k]["ceiling"], after[k]["ceiling"]) for k in keys}
    result["ceiling_runs"] = [before, after]
    result["ceiling_kind"] = CEILING_KIND
    result["machine"] = result["cases"][0]["machine"]
    add_fractions(result)
    return result
