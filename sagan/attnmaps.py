"""``python -m sagan.attnmaps RUN_DIR [--step N] [--n-images K]``: the attention maps
(the paper's Figure 1) of a run's saved G, written to
``RUN_DIR/attention/step-<step:09d>.npz`` as the trainer writes them for its final G.

The maps are :mod:`sagan.nets.attnmaps` (the npz's layout is described there);
``reports.attention`` draws them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sagan.config import ConfigError, load_config
from sagan.nets.attnmaps import N_IMAGES
from sagan.training.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    load_latest,
)
from sagan.training.samples import write_attention_maps


def _checkpoint(run_dir: Path, step: int | None) -> dict[str, Any]:
    if step is None:
        found = load_latest(run_dir)
        if found is None:
            raise CheckpointError(f"{run_dir}: the run has no checkpoint")
        return found[0]
    paths = dict(list_checkpoints(run_dir))
    if step not in paths:
        kept = ", ".join(str(s) for s in sorted(paths)) or "none"
        raise CheckpointError(f"{run_dir}: no checkpoint of step {step} (kept: {kept})")
    return load_checkpoint(paths[step])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m sagan.attnmaps",
        description="Write the attention maps (the paper's Figure 1) of a run's saved G "
        "to RUN_DIR/attention/step-<step>.npz.",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--step", type=int, help="the checkpoint's G step (default: the newest)")
    p.add_argument("--n-images", type=int, default=N_IMAGES, help="images (default: %(default)s)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = p.parse_args(argv)
    from sagan.nets.models import load_generator
    from sagan.training.setup import pick_device, sample_inputs

    try:
        if not args.run_dir.is_dir():
            raise ConfigError(f"{args.run_dir}: no such run directory")
        if not (args.run_dir / "config.yaml").is_file():
            raise ConfigError(f"{args.run_dir}: not a run directory (no config.yaml)")
        if args.n_images < 1:
            raise ConfigError(f"--n-images: must be at least 1, got {args.n_images}")
        cfg = load_config(args.run_dir / "config.yaml")
        if not cfg.model.attn_g or cfg.model.attn_block != "attention":
            raise ConfigError(
                f"{args.run_dir}: G has no self-attention (model.attn_g: {cfg.model.attn_g}, "
                f"model.attn_block: {cfg.model.attn_block}); there are no maps to draw"
            )
        state = _checkpoint(args.run_dir, args.step)
        # G_ema when the run keeps one, as the trainer's sample grids; in the memory
        # format the run trained in, so that these are the trainer's maps bit for bit.
        G = load_generator(
            cfg, state, ema=state.get("G_ema") is not None, device=pick_device(args.device)
        )
        z, y = sample_inputs(cfg, state["num_classes"], args.n_images)
        path = write_attention_maps(args.run_dir, G, z, y, state["step"])
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
