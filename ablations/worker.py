"""Train one prepared run directory: ``python -m ablations.worker RUN_DIR``.

What every executor launches (a local subprocess today, a SLURM job later). It
claims the run with its lock, so a second worker on the same run exits at once.
It reads ``RUN_DIR/config.yaml`` only once it holds the claim. A run that is done
is then scored under its ``final`` protocol, if it owes that (``--rescore``: look
again even if it does not). Exit status: 0 done
or diverged (both results), 1 failed, 2 bad config or a refused resume (the run is
left as it was), 3 claimed by another process, 4 stopped on request (``stop`` set here
or, under DDP, on a peer rank: checkpointed at a step boundary, or a final scoring
abandoned; resume it later).
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

from ablations.store import EXIT_BUSY, EXIT_STOPPED, RunLock
from sagan.config import ConfigError, load_config
from sagan.data.folders import DataError
from sagan.metrics.errors import EvaluationStopped, MetricsError
from sagan.metrics.final import score_final
from sagan.train import train
from sagan.training import distributed
from sagan.training.checkpoint import CheckpointError
from sagan.training.rundir import FINAL_STATES
from sagan.training.setup import pick_device


def run(run_dir: Path, stop: threading.Event | None = None, rescore: bool = False) -> int:
    """Train ``run_dir`` under its lock; the exit status above.

    Under DDP (a job of several processes) the lock belongs to the job: rank 0 takes
    it and tells the others whether it got it.
    """
    lock = RunLock(run_dir)
    got = distributed.broadcast(lock.acquire() if distributed.is_main() else None)
    if not got:
        print(f"{run_dir}: already being trained by another process", file=sys.stderr)
        return EXIT_BUSY
    try:
        cfg = load_config(run_dir / "config.yaml")
        state = train(cfg, run_dir, progress=False, stop=stop)
        if state == "done" and cfg.final is not None and distributed.is_main():
            # The scoring of record, owed once training is done (sagan.metrics.final).
            device = pick_device(cfg.train.device)
            asked = stop.is_set if stop is not None else None
            score_final(cfg, run_dir, device=device, again=rescore, stop=asked)
    except EvaluationStopped as e:  # the scoring is owed still; the next start does it
        print(f"{run_dir}: {e}", file=sys.stderr)
        return EXIT_STOPPED
    except (ConfigError, DataError, MetricsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:  # train() recorded it in status.json as a failure
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        lock.release()
    if state in FINAL_STATES:
        return 0
    # Training ends "interrupted" only on a stop request: this process's, or under DDP
    # a peer's, which the ranks agreed on together (sagan.training.distributed.StopVote). Every
    # rank is then stopped, not failed, whether or not its own flag was set: SLURM's
    # signal can reach one task after the vote has already passed.
    return EXIT_STOPPED if state == "interrupted" else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rescore = "--rescore" in argv
    args = [a for a in argv if a != "--rescore"]
    if len(args) != 1:
        print("usage: python -m ablations.worker RUN_DIR [--rescore]", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return run(Path(args[0]), rescore=rescore)


if __name__ == "__main__":
    sys.exit(main())
