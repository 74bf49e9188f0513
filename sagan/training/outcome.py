"""How a run ends other than done: the loop's two exceptions, and the two ways a
status is marked (failed; interrupted and resumable)."""

from __future__ import annotations

from typing import Any


class Diverged(Exception):
    def __init__(self, step: int):
        super().__init__(f"non-finite loss at G step {step}")
        self.step = step


class Stopped(Exception):
    """Stopped on request at a step boundary (or in the evaluation after it, which is
    then owed), with a checkpoint of that step on disk."""

    def __init__(self, step: int):
        super().__init__(f"stopped on request at G step {step}, checkpointed")
        self.step = step


def record_failure(status: dict[str, Any], error: BaseException | str, **fields: Any) -> None:
    """Mark ``status`` failed by ``error`` (an exception, or the reason in words): one
    more failure, the error in one line."""
    status.update(
        state="failed",
        failures=status.get("failures", 0) + 1,
        error=error if isinstance(error, str) else f"{type(error).__name__}: {error}",
        **fields,
    )


def record_interruption(status: dict[str, Any], checkpoint_step: int, **fields: Any) -> str:
    """Mark ``status`` interrupted (resumable, not a failure), its newest checkpoint at
    ``checkpoint_step``; returns the state recorded.

    Every interruption goes through here, the loop's own stops as the jobs SLURM ended
    (preempted, timed out), because only a place that sees them all can tell that two
    in a row left the same newest checkpoint: such a run made no progress in between
    and would be resumed and interrupted forever, so the second is a failure that
    says why (and ``--max-attempts`` bounds it).
    """
    if status.get("interrupted_at_step") == checkpoint_step:
        record_failure(
            status,
            "no progress between two interruptions: both left the newest checkpoint at "
            f"G step {checkpoint_step}. A job's time limit leaves too little to resume and "
            "reach the next checkpoint (with any evaluation owed): raise the profile's time, "
            "or lower signal_delay_s, train.ckpt_every or eval.n_samples",
            **fields,
        )
    else:
        status.update(state="interrupted", **fields)
    status["interrupted_at_step"] = checkpoint_step
    return status["state"]
