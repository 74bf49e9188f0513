"""Re-score saved checkpoints: ``python -m sagan.evaluate RUN_DIR [eval.key=value ...]``.

``--final`` scores the run under its config's ``final`` section instead (see
:mod:`sagan.metrics.final`), as the grid runner does once a run is trained.

Reads the run's own ``config.yaml``, applies ``eval.*`` overrides (any protocol:
more samples, another reference split, KID, a weights file), scores the newest
checkpoint (or ``--checkpoint PATH``, or ``--all``), and appends the records to
``RUN_DIR/eval.jsonl`` marked ``"origin": "rescore"`` (or to ``--out FILE``).
No training happens and nothing in the run is overwritten.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from sagan.config import ConfigError, load_config, parse_overrides
from sagan.data.folders import DataError
from sagan.nets.models import load_generator
from sagan.training import rundir
from sagan.training.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from sagan.training.setup import pick_device


def score_checkpoint(cfg, path: Path, device: torch.device) -> dict:
    """One evaluation record for the checkpoint at ``path`` under ``cfg.eval``."""
    from sagan.metrics import evaluate_generator

    state = load_checkpoint(path)
    use_ema = cfg.eval.use_ema and state.get("G_ema") is not None
    G = load_generator(cfg, state, ema=use_ema, device=device)
    record = evaluate_generator(G, cfg, step=state["step"], device=device, ema=use_ema)
    record["origin"] = "rescore"
    record["checkpoint"] = path.name
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m sagan.evaluate", description=__doc__.splitlines()[0]
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument(
        "overrides",
        nargs="*",
        help="eval.* overrides, e.g. eval.n_samples=10000 eval.metrics=[fid,kid]",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", type=Path, help="a checkpoint file (default: the newest)")
    which.add_argument("--all", action="store_true", help="every checkpoint the run kept")
    which.add_argument(
        "--final",
        action="store_true",
        help="score under the config's final section (its checkpoint choice), as a grid "
        "would; a number already made under the same protocol is not redone",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", type=Path, help="append records here instead of RUN_DIR/eval.jsonl")
    args = p.parse_args(argv)
    from sagan.metrics import MetricsError

    try:
        overrides = parse_overrides(args.overrides)
        bad = [k for k in overrides if not k.startswith("eval.")]
        if bad:
            raise ConfigError(f"only eval.* keys can change when re-scoring; got {', '.join(bad)}")
        if not (args.run_dir / "config.yaml").is_file():
            raise ConfigError(f"{args.run_dir}: not a run directory (no config.yaml)")
        cfg = load_config(args.run_dir / "config.yaml", overrides)
        if args.final:
            return _final(cfg, args.run_dir, pick_device(args.device))
        if args.checkpoint is not None:
            paths = [args.checkpoint]
        else:
            found = [p for _, p in sorted(list_checkpoints(args.run_dir))]
            if not found:
                raise ConfigError(f"{args.run_dir}: the run has no checkpoint to score")
            paths = found if args.all else found[-1:]
        device = pick_device(args.device)
        out = args.out or args.run_dir / "eval.jsonl"
        for path in paths:
            record = score_checkpoint(cfg, path, device)
            rundir.append_jsonl(out, record)
            print(
                json.dumps({"checkpoint": path.name, "step": record["step"], **record["metrics"]})
            )
    except (ConfigError, CheckpointError, DataError, MetricsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _final(cfg, run_dir: Path, device: torch.device) -> int:
    from sagan.metrics.final import score_final

    if cfg.final is None:
        raise ConfigError(f"{run_dir}/config.yaml has no final section to score under")
    made = score_final(cfg, run_dir, device=device, again=True)
    for record in made:
        print(
            json.dumps(
                {
                    "checkpoint": record["checkpoint"],
                    "step": record["step"],
                    "protocol_id": record["protocol_id"],
                    **record["metrics"],
                }
            )
        )
    if not made:
        print(f"{run_dir}: already scored under this final protocol; nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())
