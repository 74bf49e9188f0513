"""A run store as one table: a row per run and evaluation, read from run directories alone.

Whatever filled the store (the local or the SLURM executor, any number of grids),
each ``OUT/<run_id>/`` holds the same files (see :mod:`sagan.rundir`), and the
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
  ``protocol_id``, ``eval_s``, ``metric.<name>`` and ``protocol.<field>``, and
  ``metric_nan`` (``|fid|is_mean|``: the metrics recorded as NaN, which pandas cannot
  tell from a metric the record lacks).

A run with no evaluation yet has one row with empty evaluation columns, and a cell
a grid names whose run directory does not exist has one row with state
``missing``: missing, running, failed and diverged runs stay visible.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sagan import rundir
from sagan.config import flatten
from sagan.metrics.protocol import protocol_id

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


_SEEN: dict[Path, tuple[tuple[int, int], list[dict[str, Any]]]] = {}


def _logged(path: Path) -> list[dict[str, Any]]:
    """``rundir.read_jsonl`` of a metrics.jsonl, read once per version of the file: the
    store's table and the training-health figure both need it. Treat as read-only."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return []
    key = (st.st_mtime_ns, st.st_size)
    hit = _SEEN.get(path)
    if hit is None or hit[0] != key:
        hit = _SEEN[path] = (key, _jsonl(path))
    return hit[1]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    """``rundir.read_jsonl``, with one JSON parse per file when every line is whole
    (the common case; a store of 10,000 runs reads 150,000 lines), and that reader's
    line-by-line care (skipping and reporting a torn line) when one is not."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = [line for line in text.split("\n") if line.strip()]
    try:
        records = json.loads("[" + ",".join(lines) + "]")
    except json.JSONDecodeError:
        return rundir.read_jsonl(path)
    if len(records) != len(lines) or not all(isinstance(r, dict) for r in records):
        return rundir.read_jsonl(path)
    return records


def _train_seconds(run_dir: Path) -> float | None:
    """Training wall time, from each logged interval's steps and throughput."""
    total, last = 0.0, 0
    for rec in _logged(run_dir / "metrics.jsonl"):
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


def _cut(lines: list[str], indent: str) -> list[list[str]]:
    """``lines`` cut before each key at exactly ``indent``: lines indented deeper, or
    a block list item at that indent, belong to the key above them."""
    parts: list[list[str]] = []
    width = len(indent)
    for line in lines:
        head = line[width : width + 1]
        starts = line.startswith(indent) and head not in (" ", "-", "#", "\n", "\t", "")
        if starts or not parts:
            parts.append([])
        parts[-1].append(line)
    return parts


def _sections(text: str) -> list[str]:
    """config.yaml cut into small YAML documents of their own: each top-level key, and
    within a block mapping each of its keys under the top-level key's line (``train:``
    then ``  seed: 3``), so that what varies between a grid's runs is a few lines."""
    out = []
    for part in _cut(text.splitlines(keepends=True), ""):
        if not "".join(part).strip():
            continue
        head, body = part[0], part[1:]
        items = _cut(body, "  ")
        if head.rstrip().endswith(":") and body and all(i[0].startswith("  ") for i in items):
            out += [head + "".join(item) for item in items]
        else:
            out.append("".join(part))
    return out


def _read_config(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the ``config.*`` columns, facts the rows need: ``steps``, ``has_final``)."""
    try:
        text = (run_dir / "config.yaml").read_text()
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


def _run_row(run_dir: Path, levels: dict[str, Any] | None) -> dict[str, Any]:
    """A run's columns (state, counts, config, grid levels): its rows all share them."""
    status = rundir.read_status(run_dir)
    config, facts = _read_config(run_dir)
    return {
        "run_id": run_dir.name,
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
    run_dir: Path, seen: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """A run's evaluation records as rows of their own columns (and ``run_id``)."""
    rows = []
    seen = {} if seen is None else seen
    for r in _jsonl(run_dir / "eval.jsonl"):
        pid, protocol = _protocol_columns(r, seen)
        metrics = r.get("metrics", {})
        nan = [k for k, v in metrics.items() if isinstance(v, float) and math.isnan(v)]
        rows.append(
            {
                "run_id": run_dir.name,
                "eval_step": r.get("step"),
                "origin": r.get("origin", "train"),
                "checkpoint": r.get("checkpoint"),
                "protocol_id": pid,
                "eval_s": r.get("wall_s"),
                **{f"metric.{k}": v for k, v in metrics.items()},
                "metric_nan": "|" + "|".join(nan) + "|" if nan else None,
                **protocol,
            }
        )
    return rows


def run_rows(run_dir: Path, levels: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rows of one run directory: one per evaluation record, at least one."""
    run_dir = Path(run_dir)
    base = _run_row(run_dir, levels)
    return [base | r for r in _record_rows(run_dir)] or [base]


def read_store(out: str | Path) -> pd.DataFrame:
    """Every run of the store ``out`` as rows (see the module docstring); sorted by run id
    and evaluation step. An empty store gives an empty frame with the run columns."""
    out = Path(out)
    levels = grid_levels(out)
    present = sorted(p for p in out.iterdir() if (p / "config.yaml").is_file())
    runs = [_run_row(d, levels.get(d.name)) for d in present]
    # Cells a grid names that were never started: shown as missing, not dropped.
    for run_id in sorted(set(levels) - {p.name for p in present}):
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
    extra = {
        f"axis.{a}": rows["run_id"].map(lambda r, a=a: levels[r].get(a)).astype(object)
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


def read_training(out: str | Path, run_ids: list[str] | None = None) -> pd.DataFrame:
    """The logged training records (``metrics.jsonl``) of the store's runs: a row per run
    and logging step with ``run_id``, ``step``, the losses, mean D(x) and D(G(z)),
    ``gamma_g``/``gamma_d`` (the mean over attention blocks; empty without attention)
    and the axis levels."""
    out = Path(out)
    levels = grid_levels(out)
    names = run_ids if run_ids is not None else sorted(p.name for p in out.iterdir())
    columns: dict[str, list[Any]] = {k: [] for k in ("run_id", "step", *HEALTH_KEYS)}
    gammas: dict[str, list[Any]] = {"gamma_g": [], "gamma_d": []}
    for name in names:
        for rec in _logged(out / name / "metrics.jsonl"):
            columns["run_id"].append(name)
            columns["step"].append(rec.get("step"))
            for k in HEALTH_KEYS:
                columns[k].append(rec.get(k))
            for key, found in gammas.items():
                values = list((rec.get(key) or {}).values())
                found.append(sum(values) / len(values) if values else None)
    if not columns["run_id"]:
        return pd.DataFrame()
    df = pd.DataFrame({**columns, **gammas})
    axes = sorted({k for e in levels.values() for k in e if k.startswith("axis.")})
    for axis in axes:
        df[axis] = df["run_id"].map(lambda r, a=axis: levels.get(r, {}).get(a))
    return df


def read_envs(out: str | Path, run_ids: list[str]) -> pd.DataFrame:
    """Each attempt's code and machine (``env.jsonl``, :mod:`sagan.provenance`): a row
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
