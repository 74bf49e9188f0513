"""A run store as one table: a row per run and evaluation, read from run directories alone.

Whatever filled the store (the local or the SLURM executor, any number of grids),
each ``OUT/<run_id>/`` holds the same files (see :mod:`sagan.training.rundir`), and the
``OUT/grid-<name>.json`` indexes map run ids to their grids' axis levels. Columns:

- ``run_id``, ``grid`` (the grids naming the run, comma-separated), ``state``,
  ``step`` (G steps done), ``steps`` (asked for), ``attempts``, ``failures``,
  ``diverged_step``, ``error``, ``has_final`` (whether its config has a ``final``
  section), ``final_error`` (why its final scoring failed, if it did), ``train_s``
  (training wall time, from the logged throughput);
- ``axis.<name>``: the run's level on each axis of its grids (seed included);
- ``config.<dotted.key>``: the resolved config, flattened;
- per evaluation record: ``eval_step``, ``origin`` (``train`` monitoring, ``final``
  scoring, ``rescore``), ``checkpoint`` (``last``/``best`` for final scores),
  ``protocol_id`` (the record's), ``eval_s``, ``metric.<name>``,
  ``protocol_id.<name>`` (that value's own id, ``metric_protocol_ids``: what its
  values are grouped by; the record's id for records older than per-value ids),
  ``protocol.<field>``, and ``metric_nan`` (``|fid|is_mean|``: the metrics recorded
  as NaN, which pandas cannot tell from a metric the record lacks).

A run with no evaluation yet has one row with empty evaluation columns, and a cell
a grid names whose run directory does not exist has one row with state
``missing``: missing, running, failed and diverged runs stay visible.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sagan.config import flatten
from sagan.metrics.protocol import protocol_id
from sagan.training import rundir

# libyaml's safe loader when PyYAML was built with it: 1,000 configs in well under a second.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
RUN_COLUMNS = (
    "run_id",
    "grid",
    "state",
    "step",
    "steps",
    "attempts",
    "failures",
    "diverged_step",
    "error",
    "has_final",
    "final_error",
    "train_s",
)


def grid_indexes(out: Path) -> list[dict[str, Any]]:
    """The store's grid indexes (``OUT/grid-<name>.json``: name, axes in file order,
    cells, and the grid's ``report`` section), by name."""
    found = []
    for index in sorted(Path(out).glob("grid-*.json")):
        try:
            found.append(json.loads(index.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return found


def grid_levels(out: Path) -> dict[str, dict[str, Any]]:
    """run id -> ``{"grid": names, "axis.<name>": level, ...}`` from the store's grid indexes."""
    found: dict[str, dict[str, Any]] = {}
    for data in grid_indexes(out):
        for cell in data.get("cells", []):
            entry = found.setdefault(cell["run_id"], {"grid": []})
            entry["grid"].append(data["name"])
            for axis, level in cell.get("levels", {}).items():
                entry.setdefault(f"axis.{axis}", level)
    return {rid: {**e, "grid": ",".join(e["grid"])} for rid, e in found.items()}


_SEEN: dict[str, tuple[tuple[int, int], list[dict[str, Any]]]] = {}


@contextlib.contextmanager
def _no_gc():
    """Python's cycle collector paused while a store is read. Reading builds a few
    dicts per record and frees none, so every collection it triggers finds nothing;
    at 10,000 runs the full ones, which walk every object the report holds, cost up to
    a second. Any cycle made meanwhile (pandas builds a few) is collected once the
    collector runs again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def forget_reads() -> None:
    """Empty this module's read caches, so that the next read of a store is cold (the
    report benchmark times what a fresh ``python -m reports.build`` does)."""
    _SEEN.clear()
    _config_section.cache_clear()


def _records(path: str) -> list[dict[str, Any]]:
    """``rundir.read_jsonl`` of a run's file, its whole records only."""
    return [r for r in rundir.read_jsonl(path) if isinstance(r, dict)]


def _logged(path: str) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl, read once per version of the file: the store's
    table and the training-health figure both need it. Treat as read-only."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return []
    key = (st.st_mtime_ns, st.st_size)
    hit = _SEEN.get(path)
    if hit is None or hit[0] != key:
        hit = _SEEN[path] = (key, _records(path))
    return hit[1]


def _train_seconds(run_dir: str) -> float | None:
    """Training wall time, from each logged interval's steps and throughput."""
    total, last = 0.0, 0
    for rec in _logged(os.path.join(run_dir, "metrics.jsonl")):
        rate = rec.get("it_per_s")
        if rate:
            total += (rec["step"] - last) / rate
        last = rec["step"]
    return round(total, 3) if last else None


def _flat(prefix: str, d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in flatten(d).items():
        # Lists and mappings left by flatten (attention placements) as text, hashable.
        out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list | dict) else v
    return out


@functools.lru_cache(maxsize=8192)
def _config_section(text: str) -> tuple[str | None, bool, dict[str, Any]]:
    """One part of a config.yaml (see :func:`_sections`), parsed and flattened: (its
    top-level key, whether that key's value is null, its ``config.*`` columns). Parts
    repeat across a grid's runs (only the varied keys differ), so each distinct one is
    parsed once: libyaml's loader builds Python objects at about a third of a
    millisecond per config, which at 10,000 runs would be most of a report."""
    data = yaml.load(text, Loader=_LOADER)
    if not isinstance(data, dict) or len(data) != 1:
        raise yaml.YAMLError("not one top-level key")
    ((key, value),) = data.items()
    if text.count("\n") > 1 and not isinstance(value, dict):
        raise yaml.YAMLError("a key with a block under it that is not a mapping")
    return str(key), value is None, _flat("config.", data)


# A line that starts a key at the top level, or at two spaces under one: anything but
# indentation, a block list item, a comment or a blank line.
_TOP_KEY = re.compile(r"^(?=[^ \-#\n\t])", re.M)
_SUB_KEY = re.compile(r"^(?=  [^ \-#\n\t])", re.M)


def _sections(text: str) -> list[str]:
    """config.yaml cut into small YAML documents of their own: each top-level key, and
    within a block mapping each of its keys under the top-level key's line (``train:``
    then ``  seed: 3``), so that what varies between a grid's runs is a few lines.
    Lines indented deeper, comments and block list items belong to the key above."""
    out = []
    for part in _TOP_KEY.split(text):
        if not part.strip():
            continue
        head, newline, body = part.partition("\n")
        head += newline
        if head.rstrip().endswith(":") and body.startswith("  "):
            out += [head + item for item in _SUB_KEY.split(body) if item]
        else:
            out.append(part)
    return out


def _read_config(run_dir: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the ``config.*`` columns, facts the rows need: ``steps``, ``has_final``)."""
    try:
        with open(os.path.join(run_dir, "config.yaml")) as f:
            text = f.read()
    except OSError:
        return {}, {"steps": None, "has_final": False}
    try:
        sections = [_config_section(part) for part in _sections(text)]
    except yaml.YAMLError:
        # Anything the section cut cannot take (anchors across sections, flow style at
        # the top): the whole file at once.
        try:
            config = yaml.load(text, Loader=_LOADER) or {}
        except yaml.YAMLError:
            return {}, {"steps": None, "has_final": False}
        train = config.get("train") or {}
        facts = {"steps": train.get("steps"), "has_final": config.get("final") is not None}
        return _flat("config.", config), facts
    flat: dict[str, Any] = {}
    has_final = False
    for key, is_null, columns in sections:
        flat.update(columns)
        has_final |= key == "final" and not is_null
    return flat, {"steps": flat.get("config.train.steps"), "has_final": has_final}


def _protocol_columns(
    record: dict[str, Any], seen: dict[str, dict[str, Any]]
) -> tuple[str, dict[str, Any]]:
    """(protocol id, ``protocol.*`` columns) of an evaluation record; the columns of one
    protocol id are flattened once per store read (``seen``: the id is a hash of the
    protocol)."""
    protocol = record.get("protocol") or {}
    # Records older than protocol ids get theirs from the protocol they carry.
    pid = record.get("protocol_id") or protocol_id(protocol)
    columns = seen.get(pid)
    if columns is None:
        columns = seen[pid] = _flat("protocol.", protocol)
    return pid, columns


def _run_row(run_dir: str, levels: dict[str, Any] | None) -> dict[str, Any]:
    """A run's columns (state, counts, config, grid levels): its rows all share them."""
    status = rundir.read_status(run_dir)
    config, facts = _read_config(run_dir)
    return {
        "run_id": os.path.basename(run_dir),
        "grid": "",
        "state": status.get("state", "pending"),
        "step": int(status.get("step", 0)),
        "steps": status.get("steps", facts["steps"]),
        "attempts": int(status.get("attempts", 0)),
        "failures": int(status.get("failures", 0)),
        "diverged_step": status.get("diverged_step"),
        "error": status.get("error"),
        "has_final": facts["has_final"],
        "final_error": (status.get("final_error") or {}).get("error"),
        "train_s": _train_seconds(run_dir),
        **(levels or {}),
        **config,
    }


def _record_rows(
    run_dir: str, seen: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """A run's evaluation records as rows of their own columns (and ``run_id``)."""
    rows = []
    seen = {} if seen is None else seen
    run_id = os.path.basename(run_dir)
    for r in _records(os.path.join(run_dir, "eval.jsonl")):
        pid, protocol = _protocol_columns(r, seen)
        metrics = r.get("metrics", {})
        ids = r.get("protocol_ids") or {}
        nan = [k for k, v in metrics.items() if isinstance(v, float) and math.isnan(v)]
        rows.append(
            {
                "run_id": run_id,
                "eval_step": r.get("step"),
                "origin": r.get("origin", "train"),
                "checkpoint": r.get("checkpoint"),
                "protocol_id": pid,
                "eval_s": r.get("wall_s"),
                **{f"metric.{k}": v for k, v in metrics.items()},
                **{f"protocol_id.{k}": ids.get(k, pid) for k in metrics},
                "metric_nan": "|" + "|".join(nan) + "|" if nan else None,
                **protocol,
            }
        )
    return rows


def run_rows(run_dir: Path, levels: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rows of one run directory: one per evaluation record, at least one."""
    run_dir = os.fspath(run_dir)
    base = _run_row(run_dir, levels)
    return [base | r for r in _record_rows(run_dir)] or [base]


def read_store(out: str | Path) -> pd.DataFrame:
    """Every run of the store ``out`` as rows (see the module docstring); sorted by run id
    and evaluation step. An empty store gives an empty frame with the run columns."""
    with _no_gc():
        return _read_store(Path(out))


def _read_store(out: Path) -> pd.DataFrame:
    levels = grid_levels(out)
    names = sorted(
        e.name for e in os.scandir(out) if os.path.isfile(os.path.join(e.path, "config.yaml"))
    )
    present = [os.path.join(out, name) for name in names]
    runs = [_run_row(d, levels.get(name)) for d, name in zip(present, names, strict=True)]
    # Cells a grid names that were never started: shown as missing, not dropped.
    for run_id in sorted(set(levels) - set(names)):
        runs.append({"run_id": run_id, "state": "missing", "step": 0, **levels[run_id]})
    seen: dict[str, dict[str, Any]] = {}
    records = [row for d in present for row in _record_rows(d, seen)]
    df = pd.DataFrame(runs)
    if records:
        df = df.merge(pd.DataFrame(records), on="run_id", how="left", sort=False)
    for col in RUN_COLUMNS:
        if col not in df:
            df[col] = pd.Series(dtype=object)
    if df.empty:
        return df
    order = ["run_id", "eval_step"] if "eval_step" in df else ["run_id"]
    return df.sort_values(order, kind="stable", na_position="first").reset_index(drop=True)


NO_GRID = ""


def grid_runs(df: pd.DataFrame, index: dict[str, Any]) -> pd.DataFrame:
    """The rows of one grid's runs, with that grid's own levels as the ``axis.*``
    columns (and no other grid's): a cell is a cell of one grid, and a run that two
    grids share counts once in each. ``index["name"] == NO_GRID`` stands for the runs
    that no grid names, each its own cell (axis ``run``)."""
    if index["name"] == NO_GRID:
        rows = df[df["grid"].fillna("") == ""]
        rows = rows.drop(columns=[c for c in rows if c.startswith("axis.")])
        return rows.assign(**{"axis.run": rows["run_id"]})
    levels = {c["run_id"]: c.get("levels", {}) for c in index.get("cells", [])}
    rows = df[df["run_id"].isin(levels)]
    rows = rows.drop(columns=[c for c in rows if c.startswith("axis.")])
    axes = list(dict.fromkeys([*index.get("axes", {}), *(k for lv in levels.values() for k in lv)]))
    ids = rows["run_id"].tolist()
    extra = {
        f"axis.{a}": pd.Series([levels[r].get(a) for r in ids], index=rows.index, dtype=object)
        for a in axes
    }
    return rows.assign(**extra) if extra else rows


def no_grid_index(df: pd.DataFrame) -> dict[str, Any] | None:
    """A stand-in index for the runs no grid names (None when there are none)."""
    ids = sorted(set(df.loc[df["grid"].fillna("") == "", "run_id"])) if len(df) else []
    if not ids:
        return None
    return {"name": NO_GRID, "axes": {"run": ids}, "cells": []}


HEALTH_KEYS = ("loss_d", "loss_g", "d_real", "d_fake")


def _mean_over_blocks(per_block: dict[str, float] | None) -> float | None:
    values = list((per_block or {}).values())
    return sum(values) / len(values) if values else None


def read_training(out: str | Path, run_ids: list[str] | None = None) -> pd.DataFrame:
    """The logged training records (``metrics.jsonl``) of the store's runs: a row per run
    and logging step with ``run_id``, ``step``, the losses, mean D(x) and D(G(z)),
    ``gamma_g``/``gamma_d`` (the mean over attention blocks; empty without attention)
    and the axis levels."""
    with _no_gc():
        return _read_training(Path(out), run_ids)


def _read_training(out: Path, run_ids: list[str] | None) -> pd.DataFrame:
    levels = grid_levels(out)
    names = run_ids if run_ids is not None else sorted(p.name for p in out.iterdir())
    columns: dict[str, list[Any]] = {k: [] for k in ("run_id", "step", *HEALTH_KEYS)}
    gammas: dict[str, list[Any]] = {"gamma_g": [], "gamma_d": []}
    for name in names:
        recs = _logged(os.path.join(out, name, "metrics.jsonl"))
        columns["run_id"] += [name] * len(recs)
        for k in ("step", *HEALTH_KEYS):
            columns[k] += [rec.get(k) for rec in recs]
        for key, found in gammas.items():
            found += [_mean_over_blocks(rec.get(key)) for rec in recs]
    if not columns["run_id"]:
        return pd.DataFrame()
    df = pd.DataFrame({**columns, **gammas})
    axes = sorted({k for e in levels.values() for k in e if k.startswith("axis.")})
    ids = columns["run_id"]
    for axis in axes:
        df[axis] = pd.Series([levels.get(r, {}).get(axis) for r in ids], dtype=object)
    return df


def read_envs(out: str | Path, run_ids: list[str]) -> pd.DataFrame:
    """Each attempt's code and machine (``env.jsonl``, :mod:`sagan.training.provenance`): a row
    per run and attempt."""
    rows = [
        {"run_id": r, **rec}
        for r in run_ids
        for rec in rundir.read_jsonl(Path(out) / r / "env.jsonl")
    ]
    return pd.DataFrame(rows)


def write_results(df: pd.DataFrame, folder: str | Path) -> list[Path]:
    """``results.csv``, and ``results.parquet`` when pyarrow is installed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "results.csv"]
    df.to_csv(written[0], index=False)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return written
    df.to_parquet(folder / "results.parquet", index=False)
    written.append(folder / "results.parquet")
    return written


__all__ = [
    "NO_GRID",
    "forget_reads",
    "grid_indexes",
    "grid_runs",
    "no_grid_index",
    "grid_levels",
    "read_envs",
    "read_training",
    "read_store",
    "run_rows",
    "write_results",
]
