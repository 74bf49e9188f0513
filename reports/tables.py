"""Paper-style tables: any axes as rows and columns, the paper's own values beside.

A table is laid out by a spec (a grid file's ``report.tables`` entry, the command
line, or the report's own per-metric summary): ``rows`` and ``cols`` are axes,
``metrics`` what is shown, ``value`` which one value each run contributes
(``final``, ``best``, ``last``; a summary shows all three), or ``steps`` for
monitored values at those G steps. Seeds are pooled per cell (mean ± std over the
finite values, n of N, a 95% bootstrap CI), and every other axis is kept apart: one
not named is added to the rows. A column holds one metric, one kind of value (and
for final scores one checkpoint role, ``last`` or ``best``) under one protocol id.

Every value cell is one :class:`Cell`; the HTML, the CSV, the Markdown and the
LaTeX are all written from the same cells with the same precision rule
(:func:`decimals`), so no export drops what the HTML says: n of N and what happened
to the other seeds, the CI, the difference from the baseline with its CI (paired or
not), and the table's notes.

``paper: table1`` / ``paper: sn_ttur`` take their layout and the paper's values from
``reports/paper.yaml``; those values stand beside the study's own only when its
setup matches the paper's (``setup`` there), and are listed apart otherwise, with
each difference named.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from reports.stats import CONFIDENCE, has_value, per_run, summarize, value_ids, versus
from sagan.training.rundir import HIGHER_IS_BETTER

LABELS = {
    "fid": "FID",
    "is_mean": "IS",
    "kid_mean": "KID",
    "swd": "SWD",
    "consistency": "consistency",
    "mirror": "mirror",
    "precision": "precision",
    "recall": "recall",
    "fid_inf": "FID∞",
    "is_inf": "IS∞",
    "fd_dinov2": "FD-DINOv2",
    "intra_fid": "intra-FID",
    "density": "density",
    "coverage": "coverage",
}
# Below this many seeds a percentile bootstrap is narrower than the truth (it only
# resamples the few values it has): the report says so.
FEW_SEEDS = 5
VALUE_LABELS = {"final": "final score", "best": "best during training", "last": "last monitored"}
ROLE_LABELS = {"last": "last checkpoint", "best": "best checkpoint"}
ROLES = ("last", "best")
UNWELL = ("diverged", "failed", "running", "missing", "pending", "interrupted")


@cache
def paper_layouts() -> dict[str, dict[str, Any]]:
    """``reports/paper.yaml``: the paper's layouts and values."""
    return yaml.safe_load((Path(__file__).parent / "paper.yaml").read_text())


@dataclass
class Layout:
    """A table spec resolved against a grid's axes."""

    title: str
    rows: list[str]
    cols: list[str]
    metrics: list[str]
    value: str = "final"
    steps: list[int] | None = None
    paper: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    # More than one kind of value, a column each (the per-metric summaries); kinds
    # without a single value are then left out.
    values: list[str] | None = None
    # The final checkpoint roles shown (None: every role recorded).
    checkpoint: str | None = None
    runs_column: bool = False


def resolve(spec: dict[str, Any], axes: dict[str, list[str]]) -> Layout:
    """A layout from a table spec (see the module docstring) and the grid's axes
    (axis -> levels in file order, seed excluded)."""
    paper = paper_layouts()[spec["paper"]] if spec.get("paper") else None
    rows = list(spec.get("rows") or (paper or {}).get("rows") or [])
    cols = list(spec.get("cols") or [])
    metrics = list(spec.get("metrics") or (paper or {}).get("metrics") or ["fid", "is_mean"])
    steps = spec.get("steps") or (paper or {}).get("steps")
    value = spec.get("value") or (paper or {}).get("value") or "final"
    checkpoint = spec.get("checkpoint") or (paper or {}).get("checkpoint")
    notes = []
    rest = [a for a in axes if a not in rows and a not in cols]
    if rest:
        rows += rest
        notes.append(
            f"Axes not laid out ({', '.join(rest)}) are added to the rows: arms are never pooled."
        )
    what = f"at G steps {', '.join(map(str, steps))}" if steps else VALUE_LABELS[value]
    title = (
        spec.get("title")
        or (paper or {}).get("title")
        or (
            f"{', '.join(LABELS.get(m, m) for m in metrics)} by {', '.join(rows)}"
            + (f" and {', '.join(cols)}" if cols else "")
        )
    )
    return Layout(
        f"{title} ({what})", rows, cols, metrics, value, steps, paper, notes, None, checkpoint
    )


def values_at_step(df: pd.DataFrame, metric: str, step: int) -> pd.DataFrame:
    """One row per (run, protocol id of the value, :func:`reports.stats.value_ids`):
    the monitored value of ``metric`` at G step ``step``."""
    col = f"metric.{metric}"
    if col not in df or "origin" not in df:
        return pd.DataFrame(columns=["run_id", "protocol_id", "value", "value_step", "finite"])
    at = (df["origin"] == "train") & (df["eval_step"] == step) & has_value(df, metric)
    rows = df[at].assign(protocol_id=value_ids(df, metric)[at])
    rows = rows.drop_duplicates(["run_id", "protocol_id"], keep="last")
    value = rows[col].astype(float)
    out = rows.drop(columns=[c for c in rows if c.startswith("metric.")])
    return out.assign(
        value=value, value_step=rows["eval_step"], finite=np.isfinite(value)
    ).reset_index(drop=True)


# --- numbers as text: one rule for every table and every export ---------------------


def decimals(std: float, mean: float) -> int:
    """Decimal places of a value: two significant figures of its std when it has one,
    else four of its mean. A column takes the finest of its cells
    (:func:`column_decimals`), and every number of a cell (mean, std, CI, Δ) uses it."""
    if std is not None and math.isfinite(std) and std > 0:
        return int(min(8, max(0, 1 - math.floor(math.log10(std)))))
    if mean is not None and math.isfinite(mean) and mean != 0:
        return int(min(8, max(0, 3 - math.floor(math.log10(abs(mean))))))
    return 0


def column_decimals(cells: list[Cell]) -> int | None:
    """One precision for a column: the finest its cells' spreads need (two significant
    figures of the smallest std), or, without any spread, four significant figures of
    its smallest value."""
    valued = [c for c in cells if c.empty is None and c.paper is None and c.n]
    spread = [decimals(c.std, c.mean) for c in valued if math.isfinite(c.std) and c.std > 0]
    if spread:
        return max(spread)
    plain = [decimals(math.nan, c.mean) for c in valued]
    return max(plain) if plain else None


def fmt(x: float | None, places: int, sign: bool = False) -> str:
    """``x`` with ``places`` decimals (``nan``, ``inf`` as such; ``–`` for none)."""
    if x is None:
        return "–"
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return ("+" if sign and x > 0 else "") + ("inf" if x > 0 else "-inf")
    text = f"{x:{'+' if sign else ''}.{places}f}"
    return "+0" + text[2:] if sign and text.startswith("-0") and float(text) == 0 else text


def _paper_text(v: float) -> str:
    return f"{v:g}"


@dataclass
class Cell:
    """One value cell of a table: the numbers, and why there are none if so."""

    metric: str
    kind: str  # final, best, last, or step
    checkpoint: str | None = None
    step: int | None = None
    protocol_id: str | None = None
    n: int = 0
    n_total: int = 0
    n_nonfinite: int = 0
    nonfinite: str = ""
    mean: float = math.nan
    std: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    is_baseline: bool = False
    delta: float = math.nan
    delta_low: float = math.nan
    delta_high: float = math.nan
    paired: bool | None = None
    unwell: str = ""
    empty: str | None = None  # why the cell has no value
    empty_cls: str = "na"
    paper: float | None = None  # a paper column's value
    best: bool = False
    column_places: int | None = None  # set by the table: one precision per column

    @property
    def places(self) -> int:
        return (
            self.column_places if self.column_places is not None else decimals(self.std, self.mean)
        )

    def text(self) -> str:
        """The cell's main line: the mean (± std), the paper's value, or why none."""
        if self.paper is not None:
            return _paper_text(self.paper)
        if self.empty is not None:
            return self.empty
        if self.n == 0:  # only non-finite values
            return self.nonfinite.split(" at ")[0]
        p = self.places
        return fmt(self.mean, p) + (f" ± {fmt(self.std, p)}" if self.n > 1 else "")

    def sub(self) -> str:
        """The line under it: n of N and what happened to the other seeds, the CI, Δ."""
        if self.paper is not None or self.empty is not None:
            return ""
        p = self.places
        n = f"n={self.n}" + (f" of {self.n_total}" if self.n_total > self.n else "")
        why = [self.unwell] if self.unwell else []
        if self.n_nonfinite:
            why.append(f"{self.n_nonfinite} non-finite: {self.nonfinite}, not in the mean")
        parts = [n + (f" ({'; '.join(why)})" if why else "")]
        if self.n > 1:
            parts.append(f"CI [{fmt(self.ci_low, p)}, {fmt(self.ci_high, p)}]")
        if self.is_baseline:
            parts.append("baseline")
        elif not math.isnan(self.delta):
            d = f"Δ {fmt(self.delta, p, sign=True)}"
            if not math.isnan(self.delta_low):
                d += f" [{fmt(self.delta_low, p, sign=True)}, {fmt(self.delta_high, p, sign=True)}]"
                d += " paired" if self.paired else " unpaired"
            parts.append(d)
        return " · ".join(parts)

    def flat(self) -> str:
        """The cell as one line, for Markdown and LaTeX."""
        sub = self.sub()
        return f"{self.text()} ({sub})" if sub else self.text()

    def cls(self) -> str:
        if self.paper is not None:
            return "num paper"
        if self.empty is not None:
            return f"num {self.empty_cls}"
        return "num bad" if self.n == 0 else "num" + (" best" if self.best else "")

    def record(self) -> dict[str, Any]:
        """The cell for machines: one CSV row's value columns."""
        return {
            "metric": self.metric,
            "value_kind": self.kind,
            "checkpoint": self.checkpoint,
            "step": self.step,
            "protocol_id": self.protocol_id,
            "mean": self.mean,
            "std": self.std,
            "n": self.n,
            "n_total": self.n_total,
            "n_nonfinite": self.n_nonfinite,
            "nonfinite": self.nonfinite,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "is_baseline": self.is_baseline,
            "delta": self.delta,
            "delta_low": self.delta_low,
            "delta_high": self.delta_high,
            "delta_pairing": None
            if self.paired is None or math.isnan(self.delta_low)
            else ("paired" if self.paired else "unpaired"),
            "note": self.unwell,
            "empty": self.empty,
            "decimals": self.places,
            "best": self.best,
        }


# --- why a cell has no value --------------------------------------------------------


def why_empty(runs: pd.DataFrame, step: int | None = None, value: str = "final") -> tuple[str, str]:
    """(text, css class) for a cell without a value, from its runs' states."""
    if runs.empty:
        return "not in grid", "na"
    diverged = runs.loc[runs["state"] == "diverged", "diverged_step"].dropna()
    if len(diverged):
        return f"diverged at {', '.join(str(int(s)) for s in sorted(diverged))}", "bad"
    states = runs["state"].value_counts()
    for state in ("failed", "running", "missing", "pending", "interrupted"):
        if state in states:
            text = state if len(runs) == 1 else f"{states[state]} of {len(runs)} {state}"
            if state == "running":
                done = runs.loc[runs["state"] == "running"]
                text += (
                    " (step "
                    + ", ".join(
                        f"{int(r.step)}/{int(r.steps)}"
                        if not pd.isna(r.steps)
                        else str(int(r.step))
                        for r in done.itertuples()
                    )
                    + ")"
                )
            return text, "bad" if state in ("failed", "missing") else "wait"
    if step is not None:
        if (runs["step"] < step).all():
            return f"not yet at step {step}", "wait"
        return f"not evaluated at step {step}", "na"
    if value != "final":
        return "not monitored", "na"
    return _why_not_scored(runs)


def _why_not_scored(runs: pd.DataFrame) -> tuple[str, str]:
    """Done runs without a final score: no final section, or scoring failed."""
    errors = runs["final_error"].dropna() if "final_error" in runs else pd.Series(dtype=str)
    if len(errors):
        return f"scoring failed: {errors.iloc[0]}", "bad"
    if "has_final" in runs and not runs["has_final"].fillna(False).astype(bool).any():
        return "not scored (no final section)", "na"
    return "not scored yet", "wait"


def _unwell(runs: pd.DataFrame) -> str:
    """Runs of a cell that did not end done, e.g. ``1 diverged at 1200, 1 failed``:
    said beside the cell's value, which may include a diverged run's best value."""
    parts = []
    counts = runs["state"].value_counts()
    for state in UNWELL:
        if state not in counts:
            continue
        text = f"{counts[state]} {state}"
        if state == "diverged":
            steps = runs.loc[runs["state"] == state, "diverged_step"].dropna().astype(int)
            text += f" at {', '.join(map(str, sorted(steps)))}" if len(steps) else ""
        parts.append(text)
    return ", ".join(parts)


def _combos(axes: dict[str, list[str]], names: list[str]) -> list[tuple[str, ...]]:
    return list(itertools.product(*(axes[a] for a in names))) if names else [()]


# --- the paper's values --------------------------------------------------------------


def _paper_applies(layout: Layout, runs: pd.DataFrame, scored: pd.DataFrame) -> list[str]:
    """Why the paper's values cannot stand beside this study's ([] when they can):
    each ``setup`` key of the layout whose value here differs. ``config.*`` keys are
    read from the runs, ``protocol.*`` keys from the records the table shows."""
    misses = []
    for key, want in (layout.paper or {}).get("setup", {}).items():
        rule = want if isinstance(want, dict) else {"equals": want}
        frame = scored if key.startswith("protocol.") else runs
        have = frame[key].dropna() if key in frame else pd.Series(dtype=object)
        name = key.removeprefix("config.").removeprefix("protocol.")
        label = rule.get("label", name)
        if have.empty:
            misses.append(f"{label}: not recorded")
            continue
        if "at_least" in rule:
            low = min(float(v) for v in have)
            if low < float(rule["at_least"]):
                misses.append(f"{label}: {_said(low)} (the paper's: {_said(rule['at_least'])})")
            continue
        got = sorted({_said(v) for v in have})
        if got != [_said(rule["equals"])]:
            misses.append(f"{label}: {', '.join(got)} (the paper's: {_said(rule['equals'])})")
    return misses


def _said(v: Any) -> str:
    """A setup value for people: yes/no, 1,000,000, 128."""
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, int | float) and not isinstance(v, bool) and float(v).is_integer():
        return f"{int(v):,}"
    return str(v)


def _paper_value(layout: Layout, key: dict[str, str], metric: str) -> float | None:
    """The paper's value of ``metric`` for the cell ``key``, when it quotes one."""
    for entry in (layout.paper or {}).get("values", []):
        if metric in entry and all(key.get(a) == v for a, v in entry["levels"].items()):
            return float(entry[metric])
    return None


# --- the columns of a table -------------------------------------------------------


@dataclass
class _Column:
    metric: str
    kind: str
    checkpoint: str | None
    step: int | None
    pid: str | None
    col: tuple[str, ...]
    paper: bool = False


def _kinds(layout: Layout) -> list[str]:
    if layout.steps:
        return ["step"]
    return list(layout.values or [layout.value])


def _roles(finals: dict[str, pd.DataFrame], layout: Layout) -> list[str]:
    """The final checkpoint roles a table shows: those recorded (the layout's
    preferred one alone when it was recorded), ``last`` when none was."""
    recorded = [r for r in ROLES if len(finals[r])]
    if layout.checkpoint in ROLES and layout.checkpoint in recorded:
        return [layout.checkpoint]
    return recorded or ["last"]


def pivot(
    df: pd.DataFrame,
    layout: Layout,
    axes: dict[str, list[str]],
    baseline: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The table of ``layout`` over the runs in ``df`` (one grid's runs, with that
    grid's levels as ``axis.*``, :func:`reports.frame.grid_runs`).

    Returns ``{"title", "header": [[{text, span, rowspan}], [...]], "rows": [[{text,
    sub, cls, title}]], "cells": [[Cell | None]], "notes", "baseline", "levels"}``: a
    two-level header (metric, then kind, role, column levels, steps or protocol), a
    row per combination of the row axes, and the :class:`Cell` behind each value for
    the exports (:func:`exports`).
    """
    runs = df.drop_duplicates("run_id")
    cell_axes = [f"axis.{a}" for a in axes]
    notes = list(layout.notes)
    base_key = {f"axis.{a}": v for a, v in (baseline or {}).items()}
    columns: list[_Column] = []
    # (metric, kind, role, step) -> (values, summary, differences)
    data: dict[tuple, tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None]] = {}
    finals_of: dict[str, dict[str, pd.DataFrame]] = {}
    scored_parts = []
    ids = set(runs["run_id"])
    for metric in layout.metrics:
        finals = {r: per_run(df, metric, "final", r) for r in ROLES}
        finals = {r: v[v["run_id"].isin(ids)] for r, v in finals.items()}
        finals_of[metric] = finals
        specs: list[tuple[str, str | None, int | None]] = []
        for kind in _kinds(layout):
            if kind == "step":
                specs += [("step", None, s) for s in layout.steps or []]
            elif kind == "final":
                specs += [("final", r, None) for r in _roles(finals, layout)]
            else:
                specs.append((kind, None, None))
        added = False
        for kind, role, step in specs:
            if kind == "final":
                vals = finals[role]
                scored_parts.append(vals)
            elif kind == "step":
                vals = values_at_step(df, metric, step)
            else:
                vals = per_run(df, metric, kind)  # type: ignore[arg-type]
            vals = vals[vals["run_id"].isin(ids)]
            if layout.values and vals.empty:
                continue  # a summary shows the kinds that have values
            s = summarize(vals, cell_axes) if len(vals) else None
            d = versus(vals, cell_axes, base_key) if base_key and len(vals) else None
            data[(metric, kind, role, step)] = (vals, s, d)
            pids = sorted(set(vals["protocol_id"].dropna())) or [None]
            if len(pids) > 1:
                notes.append(
                    f"{LABELS.get(metric, metric)} ({_kind_label(kind, role, step)}) was "
                    f"measured under {len(pids)} protocols ({', '.join(pids)}): each has its "
                    "own column, never pooled."
                )
            for pid in pids:
                for combo in _combos(axes, layout.cols):
                    columns.append(_Column(metric, kind, role, step, pid, combo))
            added = True
        if layout.paper is not None and not layout.cols and added:
            columns.append(_Column(metric, "paper", None, None, None, (), paper=True))

    scored = pd.concat(scored_parts) if scored_parts else pd.DataFrame()
    paper_misses = _paper_applies(layout, runs, scored) if layout.paper else []
    with_paper = layout.paper is not None and not paper_misses and not layout.cols
    if not with_paper:
        columns = [c for c in columns if not c.paper]

    multi = _varying(columns)

    def head(c: _Column) -> str:
        if c.paper:
            return "paper"
        parts = [f"{a}={v}" for a, v in zip(layout.cols, c.col, strict=True)]
        if "kind" in multi.get(c.metric, ()):
            parts.append(_kind_label(c.kind, c.checkpoint, None))
        elif "role" in multi.get(c.metric, ()):
            parts.append(ROLE_LABELS[c.checkpoint or "last"])
        if c.step is not None:
            parts.append(f"step {c.step}")
        if "pid" in multi.get(c.metric, ()):
            parts.append(f"protocol {c.pid}")
        return ", ".join(parts) or "mean ± std"

    header_top = [{"text": a, "span": 1, "rowspan": 2} for a in layout.rows]
    if layout.runs_column:
        header_top.append({"text": "runs", "span": 1, "rowspan": 2})
    for metric in layout.metrics:
        span = sum(1 for c in columns if c.metric == metric)
        if not span:
            continue
        arrow = "↑" if HIGHER_IS_BETTER.get(metric, True) else "↓"
        header_top.append(
            {"text": f"{LABELS.get(metric, metric)} {arrow}", "span": span, "rowspan": 1}
        )
    header_sub = [{"text": head(c), "span": 1, "rowspan": 1} for c in columns]

    grid_cells: list[list[Cell]] = []
    levels: list[dict[str, str]] = []
    runs_text: list[str] = []
    names = list(axes)
    by_cell = _runs_by_cell(runs, names)
    no_runs = runs.iloc[:0]
    lookups = {k: (_Lookup(s, names), _Lookup(d, names)) for k, (_, s, d) in data.items()}
    final_ids = {
        m: {r: set(v["run_id"].tolist()) for r, v in finals.items()}
        for m, finals in finals_of.items()
    }
    for row_combo in _combos(axes, layout.rows):
        row_key = dict(zip(layout.rows, row_combo, strict=True))
        levels.append(row_key)
        if layout.runs_column:
            mine = [
                by_cell.get(
                    tuple((row_key | dict(zip(layout.cols, cc, strict=True)))[a] for a in names),
                    no_runs,
                )
                for cc in _combos(axes, layout.cols)
            ]
            runs_text.append(_state_counts(pd.concat(mine) if mine else no_runs))
        row = []
        for c in columns:
            if c.paper:
                v = _paper_value(layout, row_key, c.metric)
                cell = Cell(c.metric, "paper")
                if v is None:
                    cell.empty = "not quoted"
                else:
                    cell.paper = v
                row.append(cell)
                continue
            key = row_key | dict(zip(layout.cols, c.col, strict=True))
            tkey = tuple(key[a] for a in names)
            is_base = bool(baseline) and all(key.get(a) == v for a, v in (baseline or {}).items())
            found = lookups[(c.metric, c.kind, c.checkpoint, c.step)]
            mine = by_cell.get(tkey, no_runs)
            row.append(_cell(c, tkey, mine, found, final_ids[c.metric], is_base))
        grid_cells.append(row)

    _mark_best(grid_cells, columns)
    for j in range(len(columns)):
        places = column_decimals([row[j] for row in grid_cells])
        for row in grid_cells:
            row[j].column_places = places
    few = any(1 < cell.n < FEW_SEEDS for row in grid_cells for cell in row if not cell.empty)
    if any(cell.n_nonfinite for row in grid_cells for cell in row):
        notes.append(
            "Some seeds ended with a non-finite value (nan or inf: a collapsed G). They are "
            "counted and named in their cell, left out of its mean, std and CI, and such a "
            "cell is never marked best."
        )
    if any(cell.n == 1 for row in grid_cells for cell in row if cell.empty is None):
        notes.append(
            "Cells of one seed (n=1) have no CI, and a Δ between one-seed cells is one run "
            "against another: it says nothing about how much seeds vary."
        )
    if few:
        notes.append(
            f"Some cells have fewer than {FEW_SEEDS} seeds: a bootstrap over so few values "
            "resamples only what it saw, so their CIs (and those of their Δ) are too narrow. "
            "Read them as hints, not findings."
        )
    if base_key:
        notes.append(
            "Δ: difference of the mean from the baseline arm ("
            + ", ".join(f"{a}={v}" for a, v in (baseline or {}).items())
            + f") with its {CONFIDENCE:.0%} bootstrap CI; paired: a bootstrap of per-seed "
            "differences (both arms have every seed, trained on the same data order and "
            "noise); unpaired: each arm resampled on its own. A CI that includes 0 means "
            "the seeds do not tell the arms apart."
        )
    notes += _value_notes(layout, columns)
    if layout.paper:
        notes.append(_paper_note(layout, paper_misses))
    pids = sorted({c.pid for c in columns if c.pid})
    if pids:
        notes.append(
            "Protocols (the Protocols section says what each is): "
            + "; ".join(
                f"{LABELS.get(m, m)}: {', '.join(sorted({c.pid for c in columns if c.metric == m and c.pid}))}"
                for m in layout.metrics
                if any(c.metric == m and c.pid for c in columns)
            )
            + "."
        )

    body = []
    for i, row in enumerate(grid_cells):
        out_row = [{"text": v, "cls": "level", "sub": "", "title": ""} for v in levels[i].values()]
        if layout.runs_column:
            out_row.append({"text": runs_text[i], "cls": "", "sub": "", "title": ""})
        for cell in row:
            title = layout.paper["source"] if cell.kind == "paper" and layout.paper else ""
            out_row.append(
                {"text": cell.text(), "sub": cell.sub(), "cls": cell.cls(), "title": title}
            )
        body.append(out_row)
    return {
        "title": layout.title,
        "header": [header_top, header_sub],
        "rows": body,
        "cells": grid_cells,
        "levels": levels,
        "runs": runs_text if layout.runs_column else None,
        "column_heads": [f"{LABELS.get(c.metric, c.metric)} {head(c)}".strip() for c in columns],
        "col_levels": [dict(zip(layout.cols, c.col, strict=True)) for c in columns],
        "notes": notes,
        "baseline": ", ".join(f"{a}={v}" for a, v in (baseline or {}).items()),
    }


def _kind_label(kind: str, role: str | None, step: int | None) -> str:
    if kind == "step":
        return f"step {step}"
    if kind == "final":
        return f"final, {ROLE_LABELS[role or 'last']}"
    return VALUE_LABELS[kind]


def _varying(columns: list[_Column]) -> dict[str, set[str]]:
    """Per metric, which of kind, role and protocol differ between its columns (and
    so must be named in the column heads)."""
    out: dict[str, set[str]] = {}
    for metric in {c.metric for c in columns}:
        mine = [c for c in columns if c.metric == metric and not c.paper]
        varying = set()
        if len({c.kind for c in mine}) > 1:
            varying.add("kind")
        if len({c.checkpoint for c in mine if c.kind == "final"}) > 1:
            varying.add("role")
        groups: dict[tuple, set] = {}
        for c in mine:
            groups.setdefault((c.kind, c.checkpoint, c.step, c.col), set()).add(c.pid)
        if any(len(pids) > 1 for pids in groups.values()):
            varying.add("pid")
        out[metric] = varying
    return out


def _state_counts(runs: pd.DataFrame) -> str:
    """``2 done, 1 diverged (at 1200)``: what the cell's runs are."""
    counts = runs.groupby("state").size()
    parts = []
    for state, n in counts.items():
        text = f"{n} {state}"
        if state == "diverged":
            steps = runs.loc[runs["state"] == "diverged", "diverged_step"].dropna().astype(int)
            text += f" (at {', '.join(map(str, steps))})"
        parts.append(text)
    return ", ".join(parts)


class _Lookup:
    """The rows of a summary or difference frame by (cell levels, protocol id), and
    the protocol ids each cell has: found without a scan of the frame per cell."""

    def __init__(self, frame: pd.DataFrame | None, axes: list[str]):
        self.rows: dict[tuple, dict[str, Any]] = {}
        self.pids: dict[tuple, list[str]] = {}
        if frame is None or frame.empty:
            return
        levels = [frame[f"axis.{a}"].astype(str) for a in axes]
        keys = zip(*levels, strict=True) if levels else itertools.repeat((), len(frame))
        for key, rec in zip(keys, frame.to_dict("records"), strict=False):
            self.rows.setdefault((key, rec["protocol_id"]), rec)
            self.pids.setdefault(key, []).append(rec["protocol_id"])


def _runs_by_cell(runs: pd.DataFrame, axes: list[str]) -> dict[tuple, pd.DataFrame]:
    """The runs of each cell, by its levels in ``axes`` order."""
    if not axes:
        return {(): runs}
    cols = [runs[f"axis.{a}"].astype(str).rename(a) if f"axis.{a}" in runs else None for a in axes]
    if any(c is None for c in cols):
        return {}
    return {
        (k if isinstance(k, tuple) else (k,)): g
        for k, g in runs.groupby(cols, sort=False, dropna=False)
    }


def _cell(
    c: _Column,
    key: tuple,
    mine: pd.DataFrame,
    found: tuple[_Lookup, _Lookup],
    finals: dict[str, set[str]],
    is_baseline: bool,
) -> Cell:
    cell = Cell(c.metric, c.kind, c.checkpoint, c.step, c.pid, n_total=len(mine))
    summary, diffs = found
    h = summary.rows.get((key, c.pid))
    if h is None:
        others = [p for p in summary.pids.get(key, []) if p != c.pid]
        if others:
            cell.empty = f"only under {', '.join(sorted(others))}"
            return cell
        if c.kind == "final":
            for role in ROLES:
                if role != c.checkpoint and finals[role] & set(mine["run_id"]):
                    cell.empty = f"scored at the {ROLE_LABELS[role]} only"
                    return cell
        cell.empty, cell.empty_cls = why_empty(
            mine, c.step, "final" if c.kind == "final" else c.kind
        )
        return cell
    cell.n, cell.n_nonfinite, cell.nonfinite = int(h["n"]), int(h["n_nonfinite"]), h["nonfinite"]
    cell.mean, cell.std = float(h["mean"]), float(h["std"])
    cell.ci_low, cell.ci_high = float(h["ci_low"]), float(h["ci_high"])
    cell.unwell = _unwell(mine)
    cell.is_baseline = is_baseline
    dr = diffs.rows.get((key, c.pid))
    if dr is not None and not is_baseline:
        cell.delta = float(dr["diff"])
        cell.delta_low, cell.delta_high = float(dr["diff_ci_low"]), float(dr["diff_ci_high"])
        cell.paired = bool(dr["paired"])
    return cell


def _mark_best(grid_cells: list[list[Cell]], columns: list[_Column]) -> None:
    """Bold the best mean of each column: only cells whose every seed is finite, and
    only when the column's means differ."""
    for j, c in enumerate(columns):
        if c.paper:
            continue
        eligible = [
            row[j]
            for row in grid_cells
            if row[j].empty is None and row[j].n and not row[j].n_nonfinite
        ]
        means = [cell.mean for cell in eligible]
        if len(set(means)) < 2:
            continue
        top = max(means) if HIGHER_IS_BETTER.get(c.metric, True) else min(means)
        for cell in eligible:
            cell.best = cell.mean == top


def _value_notes(layout: Layout, columns: list[_Column]) -> list[str]:
    """What kind of value each column is, when the layout asked for final scores of a
    checkpoint role this grid did not record."""
    notes = []
    want = layout.checkpoint
    if want in ROLES and any(c.kind == "final" and c.checkpoint != want for c in columns):
        notes.append(
            f"This layout asks for final scores at the {ROLE_LABELS[want]}; this grid scored "
            f"only the {ROLE_LABELS['best' if want == 'last' else 'last']}, which is what "
            "its columns show."
        )
    return notes


def _paper_note(layout: Layout, misses: list[str]) -> str:
    paper = layout.paper or {}
    src = f"Paper values: {paper['source']} ({' '.join(paper['protocol'].split())})."
    if paper.get("reports"):
        src += " " + " ".join(paper["reports"].split())
    if misses:
        quoted = "; ".join(
            ", ".join(f"{a}={v}" for a, v in e["levels"].items())
            + ": "
            + ", ".join(f"{LABELS.get(m, m)} {e[m]}" for m in layout.metrics if m in e)
            for e in paper.get("values", [])
        )
        src += (
            " Not set beside this study's numbers, whose setup differs ("
            + "; ".join(misses)
            + ")"
            + (f". The paper's: {quoted}." if quoted else ".")
        )
    if paper.get("also"):
        src += " " + " ".join(paper["also"].split())
    return src


# --- exports ---------------------------------------------------------------------


def export_frame(table: dict[str, Any], grid: str) -> pd.DataFrame:
    """The table for machines: one row per value cell, with its row and column levels
    and every number apart (mean, std, n, n_total, CI, Δ and its CI, pairing, note,
    protocol id, kind of value and checkpoint role)."""
    rows = []
    for levels, cells in zip(table["levels"], table["cells"], strict=True):
        for cell, col_levels, head in zip(
            cells, table["col_levels"], table["column_heads"], strict=True
        ):
            rec = {"grid": grid, **levels, **col_levels, "column": head}
            if cell.kind == "paper":
                rec |= {"metric": cell.metric, "value_kind": "paper", "mean": cell.paper}
                rec["empty"] = cell.empty
            else:
                rec |= cell.record()
            rows.append(rec)
    return pd.DataFrame(rows)


def wide_frame(table: dict[str, Any]) -> pd.DataFrame:
    """The table as people read it: a row per row of levels, a column per value
    column, each cell on one line (value, n of N and why, CI, Δ)."""
    rows = []
    for i, (levels, cells) in enumerate(zip(table["levels"], table["cells"], strict=True)):
        row = list(levels.values())
        if table.get("runs") is not None:
            row.append(table["runs"][i])
        row += [cell.flat() for cell in cells]
        rows.append(row)
    names = list(table["levels"][0]) if table["levels"] else []
    if table.get("runs") is not None:
        names.append("runs")
    return pd.DataFrame(rows, columns=names + table["column_heads"])


__all__ = [
    "Cell",
    "Layout",
    "column_decimals",
    "decimals",
    "export_frame",
    "fmt",
    "paper_layouts",
    "pivot",
    "resolve",
    "values_at_step",
    "why_empty",
    "wide_frame",
]
