"""The GPU check of issue #20: ``python -m sagan.bench --gpu-check [--out FILE]``.

On a CUDA machine, within 8 minutes, runs each check below in a process of its own
with a time budget (a crash, an OOM or a hang costs that check alone) and writes one
JSON file, rewritten after every check so that what finished survives:

- ``ddp_devices``: two DDP ranks on one node pick distinct devices (two GPUs needed);
- ``resume``: a run stopped and resumed on CUDA against an uninterrupted one, with the
  largest weight difference;
- ``attention``: both variants at feat32 and feat64, fp32 and bf16, on the fused
  kernels :func:`sagan.nets.attention.sdpa_plan` allows (a math-path fallback fails);
- ``step128``: the SAGAN-128 batch-256 step in fp32 with TF32 off and on and in bf16:
  img/s, peak memory, share of the ceiling measured in the same precision;
- ``cudnn_benchmark``: the same step with ``train.cudnn_benchmark`` off and on;
- ``attention_memory``: feat64 against no attention, peak memory at 128;
- ``loader``: the folder's and the prepared loader's images/s;
- ``fid50k``: a 50k-sample FID with random-weights Inception, timed by stage;
- ``compile``: ``train.compile`` steps, their graph breaks and recompiles.

Without CUDA it says so in one line and exits 0. ``--device cpu --tiny`` runs every
check's code at tiny sizes on the CPU (``compile`` with dynamo's eager backend), so a
typo is found before a GPU is at hand; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

TOTAL_S = 470  # under 8 minutes, start-up and writing included
TINY_BUDGET_S: dict[str, float] = {}  # per check in --tiny mode; 120 s where absent
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _step_case(device: str, tiny: bool) -> tuple[str, list[str]]:
    """The config and overrides of the step the timing checks run."""
    if tiny:
        return str(CONFIGS / "tiny.yaml"), [
            "model.ch=8", "model.z_dim=8", "train.batch_size=4",
            "data.synthetic.n_images=32", f"train.device={device}",
        ]  # fmt: skip
    return str(CONFIGS / "sagan128.yaml"), [
        "data.name=synthetic", "data.synthetic.n_images=512", "train.batch_size=256",
        f"train.device={device}",
    ]  # fmt: skip


def _bench(device: str, tiny: bool, cases: list[list[str]], batch: int | None = None):
    from sagan.benchmarks.step import measure

    config, base = _step_case(device, tiny)
    if batch and not tiny:
        base = [*base, f"train.batch_size={batch}"]
    steps, warmup = (1, 0) if tiny else (4, 2)
    r = measure(config, [base + c for c in cases], steps, warmup, torch.device(device))
    keep = ("overrides", "ms_per_step", "img_per_s", "peak_mem_gib", "peak_mem_kind",
            "achieved_tflops", "ceiling_key", "fraction_of_ceiling", "above_ceiling")  # fmt: skip
    return {
        "cases": [{k: c[k] for k in keep} for c in r["cases"]],
        "ceiling_flops": r["ceiling_flops"],
        "ceiling_kind": r["ceiling_kind"],
    }


def check_step128(device: str, tiny: bool, tmp: Path) -> dict[str, Any]:
    return _bench(device, tiny, [["train.tf32=false"], ["train.tf32=true"], ["train.amp=true"]])


def check_cudnn_benchmark(device: str, tiny: bool, tmp: Path) -> dict[str, Any]:
    cases = [["train.cudnn_benchmark=false"], ["train.cudnn_benchmark=true"]]
    return _bench(device, tiny, cases, batch=64)


def check_attention_memory(device: str, tiny: bool, tmp: Path) -> dict[str, Any]:
    at = 32 if tiny else 64  # the largest feature map G and D share at each size
    cases = [["model.attn_g=[]", "model.attn_d=[]"], [f"model.attn_g=[{at}]", "model.attn_d=[]"]]
    r = _bench(device, tiny, cases, batch=64)
    none, feat = (c["peak_mem_gib"] for c in r["cases"])
    return {**r, f"feat{at}_over_none_peak_memory": round(feat / none, 4)}


def check_attention(device: str, tiny: bool, tmp: Path) -> dict[str, Any]:
    from sagan.nets.attention import SelfAttention, sdpa_plan
    from sagan.nets.layers import Layers

    dev = torch.device(device)
    out = []
    for variant in ("official", "paper"):
        for feat, ch in ((32, 256), (64, 128)):
            ch, batch = (16, 1) if tiny else (ch, 64)
            for dtype in (torch.float32, torch.bfloat16):
                attn = SelfAttention(ch, Layers(True, "xavier"), variant).to(dev)
                qk, v = ch // 8, ch // 2 if variant == "official" else ch // 8
                pad, backends = sdpa_plan(dev.type, dtype, qk, v)
                x = torch.randn(batch, ch, feat, feat, device=dev, requires_grad=True)
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                t = time.perf_counter()
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype != torch.float32):
                    attn(x).float().sum().backward()
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                out.append(
                    {
                        "variant": variant, "feat": feat, "ch": ch, "batch": batch,
                        "dtype": str(dtype).removeprefix("torch."), "padded": pad,
                        "backends": [b.name for b in backends] if backends else "torch's choice",
                        "ms": round(1000 * (time.perf_counter() - t), 3),
                        "peak_mem_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 3)
                        if dev.type == "cuda" else None,
                    }
                )  # fmt: skip
    return {"cases": out}


def _train_cfg(device: str, overrides: list[str]):
    from sagan.config import load_config

    base = [f"train.device={device}", "eval.metrics=[]", "train.sample_every=1000",
            "model.ch=8", "model.z_dim=8", "train.batch_size=8", "data.synthetic.n_images=64"]  # fmt: skip
    return load_config(CONFIGS / "tiny.yaml", base + overrides)


def check_resume(device: str, tiny: bool, tmp: Path) -> dict[str, Any]:
    from sagan.train import train
    from sagan.training.checkpoint import list_checkpoints, load_checkpoint

    n = 2 if tiny else 20
    half = [f"train.ckpt_every={n // 2}", "train.log_every=1"]
    t = time.perf_counter()
    train(_train_cfg(device, [f"train.steps={n}", *half]), tmp / "full", progress=False)
    train(_train_cfg(device, [f"train.steps={n // 2}", *half]), tmp / "split", progress=False)
    train(_train_cfg(device, [f"train.steps={n}", *half]), tmp / "split", progress=False)
    a, b = (load_checkpoint(list_checkpoints(tmp / r)[0][1]) for r in ("full", "split"))
    diff = {}
    for net in ("G", "D"):
        diff[net] = max(
            (a[net][k].float() - b[net][k].float()).abs().max().item()
            for k in a[net]
            if a[net][k].is_floating_point()
        )
    return {
        "steps": n,
        "resumed_at": n // 2,
        "max_abs_weight_difference": diff,
        "bit_identical": all(v == 0 for v in diff.values()),
        "seconds": round(time.perf_counter() - t, 2),
    }


def _ddp_rank(rank: int, device_name: str, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from sagan.training.distributed import local_device

    env = {**os.environ, "LOCAL_RANK": str(rank)}
    count = torch.cuda.device_count() if device_name == "cuda" else 0
    dev = local_device(device_name, env, count)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(
        backend, init_method=f"file://{init_file}", rank=rank, world_size=2,
        device_id=dev if dev.type == "cuda" else None,
    )  # fmt: skip
    t = torch.ones(1, device=dev) * (rank + 1)
    dist.all_reduce(t)
    Path(out_dir, f"rank{rank}.json").write_text(
        json.dumps({"rank": rank, "device": str(dev), "backend": backend, "sum": t.item()})
    )
    dist.destroy_process_group()


def check_ddp_devices(device: str, tiny: bool, tmp: Path) -> dict[str, Any]:
    import torch.multiprocessing as mp

    if device == "cuda" and torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count()} GPU visible; two are needed"}
    mp.start_processes(
        _ddp_rank, args=(device, str(tmp / "init"), str(tmp)), nprocs=2, start_method="spawn"
    )
    ranks = [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(2)]
    devices = [r["device"] for r in ranks]
    return {
        "ranks": ranks,
        "distinct_devices": len(set(devices)) == 2,
        "all_reduce_ok": all(r["sum"] == 3.0 for r in ranks),
    }


def check_loader(device: str, tiny: bool, tmp: Path) -> dict[str, Any]:
    from sagan.benchmarks.loader import run

    if tiny:
        return run(tmp, 24, (60, 45), 32, [0, 1], 4, 2)
    return run(tmp, 1536, (500, 375), 128, [0, min(8, os.cpu_count() or 1)], 128, 10)


def check_fid50k(device: str, tiny: bool, tmp: Path) -> dict[str, Any]:
    from sagan.metrics import evaluate_generator, make_random_weights
    from sagan.metrics.bench import eval_config, generator
    from sagan.metrics.weights import WEIGHTS_FILE

    n, res, batch = (16, 32, 8) if tiny else (50_000, 128, 500)
    weights = make_random_weights(tmp / WEIGHTS_FILE, seed=0)
    cfg = eval_config(n, n, res, batch, weights, tmp / "cache")
    G, what = generator(cfg, cfg.data.synthetic.n_classes, torch.device(device))
    r = evaluate_generator(G, cfg, step=0, device=torch.device(device), ema=False)
    return {
        "n_samples": n,
        "reference_n": n,
        "resolution": res,
        "generator": what,
        "weights": "random-valued (timings real, values meaningless)",
        "wall_s": r["wall_s"],
        "timing": r["timing"],
    }


def check_compile(device: str, tiny: bool, tmp: Path) -> dict[str, Any]:
    import functools

    import torch._dynamo
    from torch._dynamo.utils import counters

    compile_ = torch.compile
    if tiny:  # the same path, traced by dynamo but not compiled by inductor (minutes on a CPU)
        torch.compile = functools.partial(compile_, backend="eager")
    try:
        return _compiled_steps(device, tiny, counters)
    finally:
        torch.compile = compile_


def _compiled_steps(device: str, tiny: bool, counters: Any) -> dict[str, Any]:
    from sagan.data.batches import Batches
    from sagan.data.datasets import build_dataset
    from sagan.training.step import TrainStep

    cfg = _train_cfg(device, ["train.compile=true"])
    dev = torch.device(device)
    ds = build_dataset(cfg.data, "train")
    update = TrainStep(cfg, ds.num_classes, dev)
    batches = Batches(ds, cfg.train.batch_size, 0, dev, channels_last=update.channels_last)
    first_bad = torch.full((), -1, dtype=torch.long, device=dev)
    times = []
    for s in range(1, 3 if tiny else 5):
        t = time.perf_counter()
        update(batches, first_bad, s)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(round(time.perf_counter() - t, 3))
    return {
        "backend": "eager (tiny mode)" if tiny else "inductor",
        "step_s": times,
        "graph_breaks": sum(counters["graph_break"].values()),
        "graph_break_reasons": list(counters["graph_break"])[:10],
        "unique_graphs": counters["stats"]["unique_graphs"],
        "recompiles": sum(counters["recompiles"].values()) if "recompiles" in counters else 0,
    }


# name -> (check, budget in seconds on a GPU); in this order, most wanted first.
CHECKS = {
    "ddp_devices": (check_ddp_devices, 40),
    "resume": (check_resume, 40),
    "attention": (check_attention, 30),
    "step128": (check_step128, 100),
    "cudnn_benchmark": (check_cudnn_benchmark, 50),
    "attention_memory": (check_attention_memory, 50),
    "loader": (check_loader, 30),
    "fid50k": (check_fid50k, 90),
    "compile": (check_compile, 60),
}


def _run_one(name: str, device: str, tiny: bool, budget: float) -> dict[str, Any]:
    """One check in a fresh process under ``budget`` seconds."""
    with tempfile.TemporaryDirectory(prefix=f"sagan-gpu-check-{name}-") as tmp:
        result = Path(tmp) / "result.json"
        argv = [sys.executable, "-m", "sagan.benchmarks.gpu_check", "--one", name,
                "--device", device, "--result", str(result), *(["--tiny"] if tiny else [])]  # fmt: skip
        t = time.perf_counter()
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=budget)
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "budget_s": budget, "seconds": round(budget, 1)}
        rec: dict[str, Any] = {"seconds": round(time.perf_counter() - t, 2), "budget_s": budget}
        if p.returncode == 0 and result.exists():
            return {"status": "ok", **rec, "result": json.loads(result.read_text())}
        tail = (p.stderr or p.stdout).strip().splitlines()[-8:]
        return {"status": "failed", **rec, "exit_code": p.returncode, "error": tail}


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status (1 if any check failed)."""
    p = argparse.ArgumentParser(prog="python -m sagan.bench --gpu-check")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --tiny)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: the code paths, not figures")
    p.add_argument("--out", type=Path, default=Path("gpu-check.json"))
    p.add_argument("--only", action="append", choices=list(CHECKS), help="run these checks only")
    p.add_argument("--one", choices=list(CHECKS), help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:  # the child process of one check
        with tempfile.TemporaryDirectory(prefix="sagan-gpu-check-") as tmp:
            out = CHECKS[args.one][0](args.device, args.tiny, Path(tmp))
        args.result.write_text(json.dumps(out, indent=1) + "\n")
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device here (torch {torch.__version__}); nothing run")
        return 0
    if args.device == "cpu" and not args.tiny:
        p.error("--device cpu runs only with --tiny (the checks' figures are for a GPU)")
    from sagan.training.machine import describe, machine

    report: dict[str, Any] = {"machine": machine(args.device), "tiny": args.tiny, "checks": {}}
    print(f"machine: {describe(report['machine'])}")
    start = time.perf_counter()
    for name in args.only or list(CHECKS):
        budget = TINY_BUDGET_S.get(name, 120) if args.tiny else CHECKS[name][1]
        left = TOTAL_S - (time.perf_counter() - start)
        if not args.tiny and left < budget:
            rec: dict[str, Any] = {"status": "skipped", "why": f"{left:.0f} s of {TOTAL_S} left"}
        else:
            rec = _run_one(name, args.device, args.tiny, budget)
        report["checks"][name] = rec
        report["total_s"] = round(time.perf_counter() - start, 1)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"{name:18} {rec['status']:8} {rec.get('seconds', 0):7.1f} s", flush=True)
    print(f"wrote {args.out} ({report['total_s']} s)")
    return 0 if all(r["status"] in ("ok", "skipped") for r in report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
