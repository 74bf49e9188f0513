"""Loader throughput: images/s of the training batches from an image folder (decoding
with N workers) and from its prepared copy (``sagan.prepare``).

    python -m sagan.benchmarks.loader [--images 512] [--size 500x375] [--resolution 128]
                                      [--workers 0,2] [--batch-size 64] [--batches 6]

Writes a folder of random-pixel JPEGs of ``--size`` (ImageNet's typical 500x375 by
default) in a temporary directory, prepares it at ``--resolution``, and times
:class:`sagan.data.batches.Batches` (what the training loop draws from) on each, on the
CPU. Prints the machine and one line per source.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sagan.training.machine import describe, machine


def write_jpeg_folder(root: Path, n: int, size: tuple[int, int], n_classes: int = 4) -> None:
    """``n`` random-pixel JPEGs (quality 90) of ``size`` (width, height) in ``n_classes`` folders."""
    rng = np.random.default_rng(0)
    w, h = size
    for i in range(n):
        folder = root / f"c{i % n_classes}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.jpg", quality=90)


def images_per_s(cfg: Any, batch_size: int, n_batches: int) -> dict[str, Any]:
    """Draw ``n_batches`` batches (after one not timed: workers starting, caches) of
    ``cfg.data`` through :class:`sagan.data.batches.Batches` on the CPU; returns the rate."""
    from sagan.data.batches import Batches
    from sagan.data.datasets import build_dataset

    ds = build_dataset(cfg, "train")
    batches = Batches(ds, batch_size, 0, torch.device("cpu"), num_workers=cfg.num_workers)
    next(batches)
    t = time.perf_counter()
    for _ in range(n_batches):
        next(batches)
    s = time.perf_counter() - t
    return {
        "source": cfg.name,
        "num_workers": cfg.num_workers if cfg.name == "imagefolder" else None,
        "images": batch_size * n_batches,
        "seconds": round(s, 4),
        "img_per_s": round(batch_size * n_batches / s, 1),
    }


def run(
    tmp: Path,
    n_images: int,
    size: tuple[int, int],
    resolution: int,
    workers: list[int],
    batch_size: int,
    n_batches: int,
) -> dict[str, Any]:
    """Write, prepare and time; returns ``{"machine", "setup", "cases"}``."""
    from sagan.config import DataConfig
    from sagan.data.prepared import write_prepared

    folder, prepared = tmp / "images", tmp / "prepared"
    write_jpeg_folder(folder, n_images, size)
    t = time.perf_counter()
    write_prepared(folder, prepared, resolution, num_workers=max(workers))
    prepare_s = time.perf_counter() - t
    out = []
    for w in workers:
        cfg = DataConfig(name="imagefolder", root=str(folder), resolution=resolution, num_workers=w)
        out.append(images_per_s(cfg, batch_size, n_batches))
    cfg = DataConfig(name="prepared", root=str(prepared), resolution=resolution)
    out.append(images_per_s(cfg, batch_size, n_batches))
    setup = {
        "images": n_images,
        "jpeg_size": list(size),
        "resolution": resolution,
        "batch_size": batch_size,
        "batches_timed": n_batches,
        "prepare_s": round(prepare_s, 2),
    }
    return {"machine": machine("cpu"), "setup": setup, "cases": out}


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    p = argparse.ArgumentParser(
        prog="python -m sagan.benchmarks.loader", description=__doc__.splitlines()[0]
    )
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--size", default="500x375", help="JPEG width x height (default 500x375)")
    p.add_argument("--resolution", type=int, default=128, choices=(32, 64, 128))
    p.add_argument("--workers", default="0,2", help="comma-separated worker counts (default 0,2)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=6, help="timed batches per source")
    args = p.parse_args(argv)
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
        workers = [int(v) for v in args.workers.split(",")]
    except ValueError:
        p.error(f"--size {args.size!r} / --workers {args.workers!r}: expected WxH and N,N,...")
    if args.images < args.batch_size * (args.batches + 1):
        p.error(f"--images {args.images}: need at least batch-size x (batches + 1) images")
    with tempfile.TemporaryDirectory(prefix="sagan-bench-loader-") as tmp:
        r = run(
            Path(tmp), args.images, (w, h), args.resolution, workers, args.batch_size, args.batches
        )
    print(f"machine: {describe(r['machine'])}")
    s = r["setup"]
    print(
        f"{s['images']} JPEGs of {w}x{h} at {s['resolution']}x{s['resolution']}, batch {s['batch_size']}, "
        f"{s['batches_timed']} batches timed; prepare took {s['prepare_s']} s"
    )
    for c in r["cases"]:
        what = f"folder, {c['num_workers']} workers" if c["source"] == "imagefolder" else "prepared"
        print(f"{what:20} {c['img_per_s']:10.1f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
