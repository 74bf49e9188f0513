"""Paper-style tables: any axes as rows and columns, the paper's own values beside.

A table is laid out by a spec (a grid file's ``report.tables`` entry, or the command
line): ``rows`` and ``cols`` are axes, ``metrics`` what is shown, ``value`` which one
value each run contributes (``final``, ``best``, ``last``), or ``steps`` for monitored
values at those G steps. Seeds are pooled per cell (mean ± std, n), and every other
axis is kept apart: one not named is added to the rows. A column holds one metric
under one protocol id; a metric scored under several protocols gets a column per
protocol. A cell without a value says why (missing, pending, running, failed,
diverged at its step, not in the grid), and beside each value is its difference from
the baseline arm with a bootstrap CI over seeds.

``paper: table1`` / ``paper: sn_ttur`` take their layout and the paper's values from
``reports/paper.yaml``; those values stand beside the study's own only when its
setup matches the paper's (``setup`` there), and are listed apart otherwise.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from reports.stats import per_run, summarize, versus
from sagan.rundir import HIGHER_IS_BETTER

LABELS = {
    "fid": "FID",
    "is_mean": "IS",
    "kid_mean": "KID",
    "swd": "SWD",
    "consistency": "consistency",
    "precision": "precision",
    "recall": "recall",
}
# Below this many seeds a percentile bootstrap is narrower than the truth (it only
# resamples the few values it has): the report says so.
FEW_SEEDS = 5
VALUE_LABELS = {"final": "final score", "best": "best during training", "last": "last monitored"}


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


def resolve(spec: dict[str, Any], axes: dict[str, list[str]]) -> Layout:
    """A layout from a table spec (see the module docstring) and the grid's axes
    (axis -> levels in file order, seed excluded)."""
    paper = paper_layouts()[spec["paper"]] if spec.get("paper") else None
    rows = list(spec.get("rows") or (paper or {}).get("rows") or [])
    cols = list(spec.get("cols") or [])
    metrics = list(spec.get("metrics") or (paper or {}).get("metrics") or ["fid", "is_mean"])
    steps = spec.get("steps") or (paper or {}).get("steps")
    value = spec.get("value") or "final"
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
    return Layout(f"{title} ({what})", rows, cols, metrics, value, steps, paper, notes)


def values_at_step(df: pd.DataFrame, metric: str, step: int) -> pd.DataFrame:
    """One row per (run, protocol id): the monitored value of ``metric`` at G step ``step``."""
    col = f"metric.{metric}"
    if col not in df or "origin" not in df:
        return pd.DataFrame(columns=["run_id", "protocol_id", "value", "value_step"])
    rows = df[(df["origin"] == "train") & (df["eval_step"] == step) & df[col].notna()]
    rows = rows.drop_duplicates(["run_id", "protocol_id"], keep="last")
    out = rows.drop(columns=[c for c in rows if c.startswith("metric.")])
    return out.assign(value=rows[col].astype(float), value_step=rows["eval_step"]).reset_index(
        drop=True
    )


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.4g}" if abs(x) < 1000 else f"{x:.0f}"


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
    if (runs["state"] == "done").all():
        return ("not scored (no final section)" if value == "final" else "not monitored"), "na"
    return "no value", "na"


def _unwell(runs: pd.DataFrame) -> str:
    """Runs of a cell that did not end done, e.g. ``1 diverged at 1200, 1 failed``:
    said beside the cell's value, which may include a diverged run's best value."""
    parts = []
    for state in ("diverged", "failed", "running", "missing", "pending", "interrupted"):
        sel = runs[runs["state"] == state]
        if sel.empty:
            continue
        text = f"{len(sel)} {state}"
        if state == "diverged":
            steps = sel["diverged_step"].dropna().astype(int)
            text += f" at {', '.join(map(str, sorted(steps)))}" if len(steps) else ""
        parts.append(text)
    return ", ".join(parts)


def _in_cell(frame: pd.DataFrame, key: dict[str, str]) -> pd.Series:
    """Which rows of ``frame`` (runs, or a summary) have the levels ``key``."""
    mask = pd.Series(True, index=frame.index)
    for a, v in key.items():
        col = f"axis.{a}"
        mask &= (frame[col].astype(str) == v) if col in frame else False
    return mask


def _text(v: Any) -> str:
    """A config value as text; 128.0 (a number in a column with gaps) is 128."""
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _combos(axes: dict[str, list[str]], names: list[str]) -> list[tuple[str, ...]]:
    return list(itertools.product(*(axes[a] for a in names))) if names else [()]


def _paper_applies(layout: Layout, runs: pd.DataFrame) -> list[str]:
    """Why the paper's values cannot stand beside this study's ([] when they can)."""
    misses = []
    for key, want in (layout.paper or {}).get("setup", {}).items():
        have = sorted({_text(v) for v in runs.get(key, pd.Series(dtype=str)).dropna()})
        if have != [str(want)]:
            misses.append(
                f"{key.removeprefix('config.')} is {', '.join(have) or 'unknown'}, the paper's {want}"
            )
    return misses


def _paper_value(layout: Layout, key: dict[str, str], metric: str) -> float | None:
    """The paper's value of ``metric`` for the cell ``key``, when it quotes one."""
    for entry in (layout.paper or {}).get("values", []):
        if metric in entry and all(key.get(a) == v for a, v in entry["levels"].items()):
            return float(entry[metric])
    return None


def pivot(
    df: pd.DataFrame,
    layout: Layout,
    axes: dict[str, list[str]],
    baseline: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The table of ``layout`` over the runs in ``df`` (one grid's runs).

    Returns ``{"title", "header": [[{text, span}]...], "rows": [[{text, sub, cls, title}]],
    "notes", "flat": DataFrame}``: a two-level header (metric, then column levels or
    steps), a row per combination of the row axes, and ``flat`` for CSV/Markdown/LaTeX.
    """
    runs = df.drop_duplicates("run_id")
    cell_axes = [f"axis.{a}" for a in axes]
    notes = list(layout.notes)
    paper_misses = _paper_applies(layout, runs) if layout.paper else []
    with_paper = layout.paper is not None and not paper_misses and not layout.cols
    columns: list[dict[str, Any]] = []  # one per shown column
    sums: dict[tuple, pd.DataFrame] = {}
    diffs: dict[tuple, pd.DataFrame] = {}
    for metric in layout.metrics:
        points = layout.steps or [None]
        per_step = {}
        for step in points:
            vals = (
                values_at_step(df, metric, step)
                if step is not None
                else per_run(df, metric, layout.value)  # type: ignore[arg-type]
            )
            per_step[step] = vals[vals["run_id"].isin(runs["run_id"])]
        protocols_seen = {p for v in per_step.values() for p in v["protocol_id"].dropna()}
        for step, vals in per_step.items():
            s = summarize(vals, cell_axes) if len(vals) else None
            d = (
                versus(vals, cell_axes, {f"axis.{a}": v for a, v in baseline.items()})
                if baseline and len(vals)
                else None
            )
            for pid in sorted(protocols_seen) or [None]:
                sums[(metric, step, pid)] = s
                diffs[(metric, step, pid)] = d
                for combo in _combos(axes, layout.cols):
                    columns.append({"metric": metric, "step": step, "pid": pid, "col": combo})
        if len(protocols_seen) > 1:
            notes.append(
                f"{LABELS.get(metric, metric)} was measured under {len(protocols_seen)} protocols "
                f"({', '.join(sorted(protocols_seen))}): each has its own column, never pooled."
            )
        if with_paper:
            columns.append({"metric": metric, "paper": True})

    def head(c: dict[str, Any]) -> str:
        if c.get("paper"):
            return "paper"
        parts = [f"{a}={v}" for a, v in zip(layout.cols, c["col"], strict=True)]
        if c["step"] is not None:
            parts.append(f"step {c['step']}")
        pids = {o["pid"] for o in columns if o["metric"] == c["metric"] and not o.get("paper")}
        if len(pids) > 1:
            parts.append(f"protocol {c['pid']}")
        return ", ".join(parts) or "mean ± std"

    header_top = [{"text": a, "span": 1, "rowspan": 2} for a in layout.rows]
    for metric in layout.metrics:
        span = sum(1 for c in columns if c["metric"] == metric)
        arrow = "↑" if HIGHER_IS_BETTER.get(metric, True) else "↓"
        header_top.append(
            {"text": f"{LABELS.get(metric, metric)} {arrow}", "span": span, "rowspan": 1}
        )
    header_sub = [{"text": head(c), "span": 1, "rowspan": 1} for c in columns]

    body: list[list[dict[str, Any]]] = []
    flat_rows = []
    best: dict[int, float] = {}
    cells: dict[tuple[int, int], float] = {}
    few = False
    for r, row_combo in enumerate(_combos(axes, layout.rows)):
        out_row = [{"text": v, "cls": "level", "sub": "", "title": ""} for v in row_combo]
        flat = list(row_combo)
        for j, c in enumerate(columns):
            key = dict(zip(layout.rows, row_combo, strict=True))
            if c.get("paper"):
                v = _paper_value(layout, key, c["metric"])
                out_row.append(
                    {
                        "text": _fmt(v) if v is not None else "not quoted",
                        "sub": "",
                        "cls": "num paper" if v is not None else "num na",
                        "title": layout.paper["source"],
                    }
                )
                flat.append(_fmt(v) if v is not None else "")
                continue
            key |= dict(zip(layout.cols, c["col"], strict=True))
            mine = runs[_in_cell(runs, key)]
            s = sums[(c["metric"], c["step"], c["pid"])]
            hit = None
            if s is not None:
                at_cell = _in_cell(s, key)
                hit = s[at_cell & (s["protocol_id"] == c["pid"])]
                elsewhere = at_cell & (s["protocol_id"] != c["pid"])
            if hit is not None and hit.empty and elsewhere.any():
                others = ", ".join(sorted(s.loc[elsewhere, "protocol_id"]))
                out_row.append(
                    {"text": f"only under {others}", "sub": "", "cls": "num na", "title": ""}
                )
                flat.append(f"only under {others}")
                continue
            if hit is None or hit.empty:
                text, cls = why_empty(mine, c["step"], layout.value)
                out_row.append({"text": text, "sub": "", "cls": f"num {cls}", "title": ""})
                flat.append(text)
                continue
            h = hit.iloc[0]
            text = _fmt(h["mean"]) + (f" ± {_fmt(h['std'])}" if h["n"] > 1 else "")
            n_runs = len(mine)
            sub = f"n={h['n']}" + (f" of {n_runs}" if n_runs > h["n"] else "")
            unwell = _unwell(mine)
            if unwell:
                sub += f" ({unwell})"
            title = (
                f"95% bootstrap CI [{_fmt(h['ci_low'])}, {_fmt(h['ci_high'])}]"
                if h["n"] > 1
                else "one seed: no CI"
            )
            d = diffs[(c["metric"], c["step"], c["pid"])]
            if d is not None and baseline:
                drow = d[_in_cell(d, key) & (d["protocol_id"] == c["pid"])]
                is_base = all(key.get(a) == v for a, v in baseline.items())
                if is_base:
                    sub += " · baseline"
                elif not drow.empty:
                    dr = drow.iloc[0]
                    sub += f" · Δ {dr['diff']:+.3g}"
                    if not math.isnan(dr["diff_ci_low"]):
                        sub += f" [{dr['diff_ci_low']:+.3g}, {dr['diff_ci_high']:+.3g}]"
            cells[(r, j)] = float(h["mean"])
            few |= 1 < h["n"] < FEW_SEEDS
            out_row.append({"text": text, "sub": sub, "cls": "num", "title": title})
            flat.append(f"{text} (n={h['n']})")
        body.append(out_row)
        flat_rows.append(flat)
    for j, c in enumerate(columns):
        col_vals = [v for (r, jj), v in cells.items() if jj == j and not math.isnan(v)]
        if col_vals and len(set(col_vals)) > 1:  # all equal: nothing stands out
            higher = HIGHER_IS_BETTER.get(c["metric"], True)
            best[j] = max(col_vals) if higher else min(col_vals)
    for (r, j), v in cells.items():
        if best.get(j) == v:
            body[r][len(layout.rows) + j]["cls"] += " best"
    if few:
        notes.append(
            f"Some cells have fewer than {FEW_SEEDS} seeds: a bootstrap over so few values "
            "resamples only what it saw, so their CIs (and those of their Δ) are too narrow. "
            "Read them as hints, not findings."
        )
    if layout.paper:
        src = f"Paper values: {layout.paper['source']} ({layout.paper['protocol']})."
        if paper_misses:
            quoted = "; ".join(
                ", ".join(f"{a}={v}" for a, v in e["levels"].items())
                + ": "
                + ", ".join(f"{LABELS.get(m, m)} {e[m]}" for m in layout.metrics if m in e)
                for e in layout.paper.get("values", [])
            )
            src += (
                " Not set beside this study's numbers, whose setup differs ("
                + "; ".join(paper_misses)
                + ")"
                + (f". The paper's: {quoted}." if quoted else ".")
            )
        if layout.paper.get("also"):
            src += " " + " ".join(layout.paper["also"].split())
        notes.append(src)
    flat_header = list(layout.rows) + [
        f"{LABELS.get(c['metric'], c['metric'])} {head(c)}".strip() for c in columns
    ]
    return {
        "title": layout.title,
        "header": [header_top, header_sub],
        "rows": body,
        "notes": notes,
        "baseline": ", ".join(f"{a}={v}" for a, v in (baseline or {}).items()),
        "flat": pd.DataFrame(flat_rows, columns=flat_header),
    }


__all__ = ["Layout", "paper_layouts", "pivot", "resolve", "values_at_step", "why_empty"]
