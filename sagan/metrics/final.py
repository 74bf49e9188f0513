"""Final scoring: a done run under its config's ``final`` protocol, each number once.

Training only monitors (``eval``: cheap evaluations every N steps). The number of
record is made here, after training, under ``final`` (say FID-50k of the EMA G
against the training set), on the checkpoint(s) it names: the ``last`` one, the
``best`` one by a monitored metric (kept out of checkpoint rotation for this), or
both. Each record goes to ``eval.jsonl`` with ``"origin": "final"``, the checkpoint's
role and step, and its protocol ids (the record's, and each value's own:
:func:`sagan.metrics.protocol.metric_protocol_ids`); ``status.json`` keeps the values
under ``final[value's protocol_id][role]``, merged across records.

A value already recorded under its planned protocol id for the same checkpoint is
never computed again: scoring may be killed and started again at any moment,
scoring again under a changed ``final`` section adds records beside the old ones,
and a metric added to ``final.metrics`` is computed on its own (a record holding
just its values), unless leaving the others out would change its protocol; then
the whole section is.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sagan.config import Config, EvalConfig, to_dict
from sagan.metrics.errors import EvaluationStopped
from sagan.nets.models import load_generator
from sagan.training import rundir
from sagan.training.checkpoint import CheckpointError, list_checkpoints, load_checkpoint

log = logging.getLogger("sagan.metrics.final")

ROLES = {"last": ("last",), "best": ("best",), "both": ("last", "best")}


def final_key(cfg: Config) -> str | None:
    """A short hash of what the final protocol asks for, as the config says it (no file
    is read): how a planner tells, cheaply, whether a run was scored under this
    ``final`` section. None when the config has no ``final`` section."""
    if cfg.final is None:
        return None
    what = {"final": to_dict(cfg)["final"], "bn_momentum": cfg.model.bn_momentum}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


def final_as_eval(cfg: Config) -> Config:
    """``cfg`` with its ``final`` section in the place of ``eval``, for the evaluator."""
    fields = cfg.final.model_dump(exclude={"checkpoint", "best_by"})
    return cfg.model_copy(update={"eval": EvalConfig(**fields, every=None, at_end=True)})


def owed(cfg: Config, run_dir: Path) -> bool:
    """Whether this run's final scores under ``cfg.final`` are still to be made."""
    key = final_key(cfg)
    return key is not None and key not in rundir.read_status(run_dir).get("final_keys", [])


def _targets(cfg: Config, run_dir: Path) -> list[tuple[str, int, Path]]:
    """``(role, step, path)`` of each checkpoint to score.

    Raises:
        CheckpointError: the run has no checkpoint, or its best one is gone.
    """
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"{run_dir}: no checkpoint to score")
    out = []
    for role in ROLES[cfg.final.checkpoint]:
        if role == "last":
            out.append(("last", *found[0]))
            continue
        best = rundir.read_status(run_dir).get("best_checkpoint")
        paths = dict(found)
        if best is None or best["step"] not in paths:
            raise CheckpointError(
                f"{run_dir}: final.checkpoint asks for the best checkpoint by "
                f"{cfg.final.best_by}, but "
                + ("no evaluation named one" if best is None else f"step {best['step']} is gone")
            )
        out.append(("best", best["step"], paths[best["step"]]))
    return out


def score_final(
    cfg: Config,
    run_dir: Path,
    device: torch.device | str = "cpu",
    again: bool = False,
    stop: Callable[[], bool] | None = None,
) -> list[dict[str, Any]]:
    """Score the run under ``cfg.final``; return the records made (none if all were there).

    Args:
        again: look again even if the status says this ``final`` section was scored
            (``--rescore``: catches what the config does not show, a new weights file).
        stop: asked before each batch; when it says True the scoring in progress is
            abandoned (what was recorded before it stays) and the rest is still owed.

    Raises:
        CheckpointError, MetricsError, DataError: nothing could be scored.
        EvaluationStopped: ``stop`` said True; not recorded as a failure.
    """
    from sagan.metrics.evaluate import reference_set

    run_dir = Path(run_dir)
    if cfg.final is None or (not again and not owed(cfg, run_dir)):
        return []
    ecfg = final_as_eval(cfg)
    device = torch.device(device)
    made = []
    try:
        targets = _targets(cfg, run_dir)
        reference = reference_set(ecfg)  # built once, for every plan and score below
        for role, step, path in targets:
            for record in _score_checkpoint(
                cfg, ecfg, run_dir, role, step, path, device, reference, stop
            ):
                rundir.append_jsonl(run_dir / "eval.jsonl", record)
                _record_in_status(run_dir, cfg, record, role)
                made.append(record)
    except EvaluationStopped:
        raise  # owed still, and no failure: the next start scores it
    except Exception as e:
        # Said in status.json so that a report tells "scoring failed" from "not
        # scored"; the run stays done, and the next invocation tries again.
        status = rundir.read_status(run_dir)
        status["final_error"] = {
            "error": f"{type(e).__name__}: {e}".splitlines()[0],
            "final_key": final_key(cfg),
            "at": rundir.now(),
        }
        rundir.write_status(run_dir, status)
        raise
    _record_in_status(run_dir, cfg, None, None, finished=True)
    return made


def _made(records: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """``(value, protocol id)`` of every value in ``records``: each value's own id,
    the record's for records older than per-value ids."""
    from sagan.metrics.protocol import protocol_id

    out = set()
    for r in records:
        pid = r.get("protocol_id") or protocol_id(r.get("protocol") or {})
        ids = r.get("protocol_ids") or {}
        out |= {(v, ids.get(v, pid)) for v in r.get("metrics", {})}
    return out


def _score_checkpoint(
    cfg: Config,
    ecfg: Config,
    run_dir: Path,
    role: str,
    step: int,
    path: Path,
    device: torch.device,
    reference: Any,
    stop: Callable[[], bool] | None,
) -> list[dict[str, Any]]:
    """The records still to append for one checkpoint role: nothing when each value
    ``final`` asks for has a final record for this role and step under its planned
    protocol id; else copies of the other role's records at the same step that hold
    missing values (best == last: one computation serves both), and one evaluation
    of the metrics still missing."""
    from sagan.metrics import evaluate_generator
    from sagan.metrics.plan import planned_protocol, planned_values
    from sagan.metrics.protocol import METRIC_VALUES, metric_protocol_ids, protocol_id

    state = load_checkpoint(path)
    use_ema = ecfg.eval.use_ema and state.get("G_ema") is not None
    planned = planned_protocol(ecfg, ema=use_ema, device=device, reference=reference)
    here = [
        r
        for r in rundir.read_jsonl(run_dir / "eval.jsonl")
        if r.get("origin") == "final" and r["step"] == step
    ]
    mine = [r for r in here if r.get("checkpoint", "last") == role]
    values = planned_values(ecfg)
    ids = metric_protocol_ids(planned, values)
    wanted = {(v, ids[v]) for v in values}
    if values:
        missing = wanted - _made(mine)
    else:
        # Nothing this data defines: one record (saying what was skipped) per protocol.
        pid = protocol_id(planned)
        missing = set() if any(r.get("protocol_id") == pid for r in mine) else {("", pid)}
    if not missing:
        log.info("final %s (step %d): every value already scored", role, step)
        return []
    out = []
    if values:
        for r in here:
            if r.get("checkpoint", "last") != role and _made([r]) & missing:
                missing -= _made([r])
                out.append({**r, "checkpoint": role, "checkpoint_file": path.name})
    if not missing:
        return out
    part = ecfg
    if values:
        todo = {v for v, _ in missing}
        metrics = [
            m for m in dict.fromkeys(ecfg.eval.metrics) if todo & set(METRIC_VALUES.get(m, (m,)))
        ]
        reduced = ecfg.model_copy(
            update={"eval": ecfg.eval.model_copy(update={"metrics": metrics})}
        )
        # Leaving a metric out can change a shared field of the others (IS alone
        # samples no reference set, so its record names none): then the whole section
        # is computed again, so that what is recorded has the planned ids.
        reduced_ids = metric_protocol_ids(
            planned_protocol(reduced, ema=use_ema, device=device, reference=reference),
            sorted(todo),
        )
        if all(reduced_ids[v] == ids[v] for v in todo):
            part = reduced
    G = load_generator(cfg, state, ema=use_ema, device=device)
    record = evaluate_generator(
        G, part, step=step, device=device, ema=use_ema, reference=reference, stop=stop
    )
    record.update(origin="final", checkpoint=role, checkpoint_file=path.name)
    return [*out, record]


def _record_in_status(
    run_dir: Path, cfg: Config, record: dict | None, role: str | None, finished: bool = False
) -> None:
    status = rundir.read_status(run_dir)
    if record is not None:
        # Under each value's own protocol id, the values of several records merged
        # (a metric added to ``final`` later is scored on its own).
        final = status.setdefault("final", {})
        ids = record.get("protocol_ids") or {}
        # A record of no value (every metric skipped for this data) under its own id.
        pairs = list(record["metrics"].items()) or [(None, None)]
        for value, number in pairs:
            entry = final.setdefault(ids.get(value, record["protocol_id"]), {})
            held = entry.get(role)
            if held is None or held["step"] != record["step"]:
                held = entry[role] = {"step": record["step"], "metrics": {}}
            if value is not None:
                held["metrics"][value] = number
    if finished:
        status.pop("final_error", None)
        keys = status.setdefault("final_keys", [])
        if final_key(cfg) not in keys:
            keys.append(final_key(cfg))
    rundir.write_status(run_dir, status)
