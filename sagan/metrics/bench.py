"""Time one evaluation, with a cold reference cache and then a warm one, by stage and metric.

    python -m sagan.metrics.bench [--n 1000] [--device cpu] [--weights PATH]
        [--metrics fid,is,kid,prc,fid_inf,dc,intra_fid]

Scores N generated samples (the real SAGAN generator at its default width when
``sagan.nets.models`` is importable, else a small random stand-in) against N images of the
synthetic reference set, twice: first with an empty reference cache (the reference
images are pushed through Inception), then with the cache filled. Prints the machine
(CPU, cores, torch, GPU) and where the time goes.

Without real Inception weights (``--weights``, or torch.hub's cache) it writes a
random-valued weights file of the right architecture and says so: the timing is the
same, the metric values are meaningless. The same holds for DINOv2 (``fd_dinov2`` in
``--metrics``; ``--dinov2-model``, ``--dinov2-weights``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from sagan.config import build_config
from sagan.metrics import (
    MetricsError,
    evaluate_generator,
    inception_weights_path,
    make_random_weights,
)
from sagan.metrics.weights import WEIGHTS_FILE
from sagan.training.machine import describe, machine


class StandInG(nn.Module):
    """A small random conditional generator with the interface of ``sagan.nets.models.Generator``."""

    def __init__(self, z_dim: int, num_classes: int, resolution: int, ch: int = 32):
        super().__init__()
        self.z_dim, self.num_classes, self.resolution = z_dim, num_classes, resolution
        self.embed = nn.Embedding(max(num_classes, 1), z_dim)
        self.fc = nn.Linear(z_dim, ch * 4 * 4)
        ups = []
        for _ in range(resolution.bit_length() - 3):  # 4 -> resolution
            ups += [
                nn.Upsample(scale_factor=2),
                nn.Conv2d(ch, ch, 3, padding=1),
                nn.BatchNorm2d(ch),
                nn.ReLU(),
            ]
        self.body = nn.Sequential(*ups, nn.Conv2d(ch, 3, 3, padding=1), nn.Tanh())
        self.ch = ch

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.fc(z + self.embed(y) if self.num_classes else z)
        return self.body(h.view(-1, self.ch, 4, 4))


def generator(cfg, num_classes: int, device: torch.device) -> tuple[nn.Module, str]:
    """The generator the benchmark scores (random init, seed 0) and a line saying which."""
    torch.manual_seed(0)  # the same random G in every run, so values repeat across runs
    try:
        from sagan.nets.models import build_models

        G = build_models(cfg.model, cfg.data.resolution, num_classes)[0]
        what = f"sagan.nets.models.Generator (ch {cfg.model.ch}, z {cfg.model.z_dim}, random init)"
    except ImportError:
        G = StandInG(cfg.model.z_dim, num_classes, cfg.data.resolution)
        what = "stand-in generator (sagan.nets.models not importable)"
    return G.to(device), what


def _reference(cfg) -> tuple[tuple | None, str]:
    try:
        import sagan.data.datasets  # noqa: F401

        return None, "sagan.data.datasets synthetic"
    except ImportError:
        g = torch.Generator().manual_seed(0)
        n, r = cfg.data.synthetic.n_images, cfg.data.resolution
        images = torch.randint(0, 256, (n, 3, r, r), generator=g, dtype=torch.uint8)
        dataset = [(img, 0) for img in images]
        return (
            dataset,
            f"random-uint8-{n}-{r}",
        ), "random images (sagan.data.datasets not importable)"


def _dinov2_weights(arg: str | None, variant: str, tmp: Path) -> tuple[Path, bool]:
    from sagan.metrics.dinov2 import make_random_dinov2_weights, resolve_dinov2_weights

    try:
        return resolve_dinov2_weights(arg, variant).path, False
    except MetricsError:
        if arg:
            raise
        print(f"no DINOv2 {variant} weights: writing a random-valued file", flush=True)
        return make_random_dinov2_weights(tmp / f"dinov2-{variant}.pth", variant), True


def _weights(arg: str | None, tmp: Path) -> tuple[Path, bool]:
    if arg:
        return inception_weights_path(arg), False
    try:
        return inception_weights_path(None), False
    except MetricsError:
        return make_random_weights(tmp / WEIGHTS_FILE, seed=0), True


def stage_shares(record: dict) -> dict[str, float]:
    """Seconds of each stage of an evaluation record: reference, generation, each
    extractor, each metric (``timing`` of :func:`sagan.metrics.evaluate_generator`)."""
    timing = record["timing"]
    out = {
        "reference inception": timing.get("reference_s", 0.0),
        "reference dinov2": timing.get("reference_dinov2_s", 0.0),
        "generate": timing.get("generate_s", 0.0),
    }
    out |= {f"extract {k}": v for k, v in timing.get("extract_s", {}).items()}
    out |= {f"metric {k}": v for k, v in timing.get("metric_s", {}).items()}
    return out


def eval_config(
    n: int,
    ref_n: int,
    resolution: int,
    batch_size: int,
    weights: Path,
    cache: Path,
    metrics: list[str] | None = None,
    dinov2_model: str | None = None,
    dinov2_weights: Path | None = None,
):
    """The config the benchmark evaluates under: ``metrics`` (FID and IS by default) of
    ``n`` samples against ``ref_n`` synthetic training images at ``resolution``."""
    eval_section = {
        "n_samples": n,
        "metrics": metrics or ["fid", "is"],
        "batch_size": batch_size,
        "reference": {"split": "train", "n": ref_n},
        "inception_weights": str(weights),
        "dinov2_weights": str(dinov2_weights) if dinov2_weights else None,
        "cache_dir": str(cache),
    }
    if dinov2_model:
        eval_section["dinov2_model"] = dinov2_model
    return build_config(
        {
            "data": {
                "name": "synthetic",
                "resolution": resolution,
                "synthetic": {"n_images": max(ref_n, 16)},
            },
            "train": {"batch_size": 16},
            "eval": eval_section,
        }
    )


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    p = argparse.ArgumentParser(
        prog="python -m sagan.metrics.bench", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--n", type=int, default=1000, help="generated samples, and reference images (default 1000)"
    )
    p.add_argument("--ref-n", type=int, default=None, help="reference images (default: --n)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument(
        "--weights", default=None, help="Inception weights file (default: torch.hub's cache)"
    )
    p.add_argument("--batch-size", type=int, default=100, help="eval.batch_size (default 100)")
    p.add_argument("--resolution", type=int, default=32, choices=(32, 64, 128))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--metrics",
        default="fid,is",
        help="eval.metrics to time, comma-separated (default: fid,is)",
    )
    p.add_argument("--dinov2-model", default="vit-l-14", help="eval.dinov2_model (fd_dinov2)")
    p.add_argument("--dinov2-weights", default=None, help="DINOv2 weights file (fd_dinov2)")
    p.add_argument("--json", action="store_true", help="also print the two records as JSON lines")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    ref_n = args.ref_n or args.n

    with tempfile.TemporaryDirectory(prefix="sagan-bench-eval-") as tmp_name:
        tmp = Path(tmp_name)
        dinov2 = None
        try:
            weights, fake = _weights(args.weights, tmp)
            if "fd_dinov2" in args.metrics.split(","):
                dinov2, dino_fake = _dinov2_weights(args.dinov2_weights, args.dinov2_model, tmp)
                fake = fake or dino_fake
        except MetricsError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        cfg = eval_config(
            args.n,
            ref_n,
            args.resolution,
            args.batch_size,
            weights,
            tmp / "reference-cache",
            metrics=args.metrics.split(","),
            dinov2_model=args.dinov2_model,
            dinov2_weights=dinov2,
        )
        G, g_what = generator(cfg, cfg.data.synthetic.n_classes, device)
        reference, ref_what = _reference(cfg)

        info = machine(device)
        print(f"machine: {describe(info)}")
        print(f"generator: {g_what}; reference: {ref_what}, {ref_n} images; generated: {args.n}")
        print(f"weights: {weights}")
        if fake:
            bar = "!" * 78
            print(
                f"{bar}\n!! NO REAL WEIGHTS: using a RANDOM-VALUED file of the right architecture.\n"
                f"!! Timings are representative; the FID/IS VALUES ARE MEANINGLESS.\n"
                f"!! For real values: python -m sagan.prefetch --weights, or --weights PATH.\n{bar}"
            )

        print(
            f"\n{'cache':6} {'wall_s':>8} {'reference_s':>12} {'gen+extract_s':>14} "
            f"{'metrics_s':>10}  metrics",
            flush=True,
        )
        records = {}
        for phase in ("cold", "warm"):
            r = evaluate_generator(G, cfg, step=0, device=device, ema=False, reference=reference)
            records[phase] = r
            timing = r["timing"]
            m = ", ".join(f"{k} {v:.4g}" for k, v in r["metrics"].items())
            print(
                f"{phase:6} {r['wall_s']:8.2f} {timing['reference_s']:12.2f} "
                f"{timing['generate_extract_s']:14.2f} {timing['metrics_s']:10.2f}  "
                f"{m}{' (meaningless: random weights)' if fake else ''}",
                flush=True,
            )

    cold, warm = records["cold"], records["warm"]
    print(f"\nwhere the warm evaluation's {warm['wall_s']:.2f} s go:")
    for stage, seconds in stage_shares(warm).items():
        print(f"  {stage:22} {seconds:8.2f} s  {100 * seconds / max(warm['wall_s'], 1e-9):5.1f}%")
    print(
        f"reference extraction: {ref_n / max(cold['timing']['reference_s'], 1e-9):.1f} images/s cold "
        f"(incl. loading the extractor); warm cache saves {cold['wall_s'] - warm['wall_s']:.1f} s"
    )
    if args.json:
        for phase, r in records.items():
            print(json.dumps({"phase": phase, "machine": info, "random_weights": fake, **r}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
