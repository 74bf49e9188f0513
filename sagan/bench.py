"""Speed you can measure: ``python -m sagan.bench [CONFIG] [key=value ...] [--sweep KEY=A,B ...]``.

Times the real training step (:class:`sagan.training.step.TrainStep`: ``n_dis`` D steps and
one G step, forward, backward, optimizers and EMA) for a config and every
combination of the ``--sweep`` values, each case in a fresh process so that its peak
memory is its own. Per case: the median ms per G step after warm-up, real images/s,
peak memory (CUDA peak allocated on a GPU, peak RSS on the CPU), the step's FLOPs
(torch's FLOP counter: convolutions and matmuls, forward and backward) and the FLOP/s
it achieves as a fraction of a ceiling measured in the same run in the case's own
precision (fp32, TF32 or bf16): the best of a dense matmul and a 3x3 conv. A case
that beats that ceiling gets no share ("above ceiling"), never one above 100%. Prints a table (speed-ups against the first case) and writes
everything, with the machine, to ``--out`` (JSON).

``--eval`` times one FID/IS evaluation instead (:mod:`sagan.metrics.bench`);
``--gpu-check`` runs the GPU check (:mod:`sagan.benchmarks.gpu_check`).

Compare figures only within one run on one machine: the JSON names the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sagan.benchmarks.step import DEFAULT_CONFIG, cases, measure, table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sagan.bench", description=__doc__.splitlines()[0])
    p.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG))
    p.add_argument("overrides", nargs="*", help="dotted.key=value, applied to every case")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=A,B")
    p.add_argument("--steps", type=int, default=10, help="timed G steps per case (median)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", type=Path, help="write the JSON here")
    p.add_argument("--eval", action="store_true", help="time one FID/IS evaluation instead")
    p.add_argument("--gpu-check", action="store_true", help="run #20's GPU check instead")
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--gpu-check" in argv:  # its own flags (--device cpu) are not a config and overrides
        from sagan.benchmarks import gpu_check

        return gpu_check.main([a for a in argv if a != "--gpu-check"])
    args, rest = p.parse_known_args(argv)
    if args.eval:
        from sagan.metrics import bench as eval_bench

        return eval_bench.main(rest)
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if "=" in args.config and not Path(args.config).exists():  # no config: overrides only
        args.overrides.insert(0, args.config)
        args.config = str(DEFAULT_CONFIG)
    from sagan.config import ConfigError, load_config
    from sagan.training.machine import describe
    from sagan.training.setup import pick_device

    todo = cases(args.overrides, args.sweep)
    try:  # every case's config is checked before any is timed
        cfgs = [load_config(args.config, ov) for ov in todo]
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = pick_device(cfgs[0].train.device)
    result = measure(args.config, todo, args.steps, args.warmup, device)
    print(table(result))
    ceil = ", ".join(f"{k} {v / 1e12:.2f} TFLOP/s" for k, v in result["ceiling_flops"].items())
    print(f"ceiling: {ceil} ({result['ceiling_kind']})")
    print(f"machine: {describe(result['machine'])}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
