"""Build a report of a run store: ``python -m reports.build STORE [--out DIR]``.

Writes ``DIR/index.html`` (one self-contained file: figures are inline PNGs), and
beside it ``results.csv`` (every run and evaluation, :mod:`reports.frame`) and every
table three ways: ``<name>.csv`` for machines (a row per value cell, every number in
its own column), ``<name>.md`` and ``<name>.tex`` (a booktabs tabular) for people,
each cell with n of N and why, its CI and its difference from the baseline, and the
table's notes as footnotes. ``<name>`` is ``table-<grid>-<i>`` for a grid's laid-out
tables and ``summary-<grid>-<metric>`` for the per-metric summaries; the data behind
each figure is written as ``figure-<grid>-<metric>-<what>.csv``. The report reads the
store only, whichever executor filled it.

Every table and figure is of one grid: a cell is a cell of one grid (runs that no
grid names are a section of their own, each run its own cell), and a run that two
grids share counts once in each.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from reports import figures as figs
from reports.frame import (
    NO_GRID,
    grid_indexes,
    grid_runs,
    no_grid_index,
    read_envs,
    read_store,
    read_training,
    write_results,
)
from reports.stats import has_value, recorded_nan, reuse, value_ids, value_protocol_columns
from reports.tables import (
    LABELS,
    Layout,
    export_frame,
    pivot,
    resolve,
    wide_frame,
)
from sagan.metrics.protocol import value_block

# The metrics the default summary shows, in this order, when the runs recorded them.
METRICS = (
    "fid", "is_mean", "kid_mean", "swd", "consistency", "mirror", "precision", "recall",
    "fid_inf", "is_inf", "fd_dinov2", "intra_fid", "density", "coverage",
)  # fmt: skip
CANONICAL_INCEPTION = "weights-inception-2015-12-05-6726825d.pth"


def _in_grid_order(runs: pd.DataFrame, order: dict[str, list[str]]) -> pd.DataFrame:
    """Runs sorted by their levels as the grid files list them (unknown levels last)."""
    keys = [f"axis.{a}" for a in order if f"axis.{a}" in runs]

    def rank(col: pd.Series) -> pd.Series:
        levels = order[col.name.removeprefix("axis.")]
        where = {v: i for i, v in reversed(list(enumerate(levels)))}
        return col.map(lambda v: where.get(v, len(levels)))

    return runs.sort_values(keys, key=rank, kind="stable") if keys else runs


def _present_metrics(runs: pd.DataFrame) -> list[str]:
    """The metrics the runs recorded (a NaN value counts as recorded)."""
    return [m for m in METRICS if has_value(runs, m).any()]


def constant_value(runs: pd.DataFrame, metric: str) -> float | None:
    """The one value ``metric`` has in every record of these runs, if it has one."""
    col = f"metric.{metric}"
    values = runs[col].dropna() if col in runs else pd.Series(dtype=float)
    if values.empty or recorded_nan(runs, metric).any():
        return None
    return float(values.iloc[0]) if values.nunique() == 1 else None


def summary_table(runs: pd.DataFrame, axes: dict[str, list[str]], metric: str, baseline):
    """The per-metric summary of one grid: a row per cell (every axis), the cell's
    runs, and its final score (a column per checkpoint role), its best and its last
    monitored value, each under its protocol id."""
    layout = Layout(
        title=f"{LABELS.get(metric, metric)}: every cell",
        rows=list(axes),
        cols=[],
        metrics=[metric],
        values=["final", "best", "last"],
        runs_column=True,
    )
    return pivot(runs, layout, axes, baseline)


def runs_table(df: pd.DataFrame) -> dict[str, Any]:
    """Every run: its levels, state, step, attempts, times and what went wrong. The
    rows come as escaped HTML (``Markup``): a store of 10,000 runs would spend seconds
    in the template's loops."""
    from markupsafe import Markup, escape

    runs = df.drop_duplicates("run_id")
    axes = [c for c in df.columns if c.startswith("axis.")]
    header = [
        "run id",
        *(a.removeprefix("axis.") for a in axes),
        "state",
        "step",
        "attempts",
        "train time",
        "eval time",
        "note",
    ]
    eval_s = df.groupby("run_id")["eval_s"].sum() if "eval_s" in df else pd.Series(dtype=float)
    eval_s = runs["run_id"].map(eval_s).fillna(0)

    def text(col: pd.Series) -> list[str]:
        return ["" if pd.isna(v) else str(v) for v in col]

    def number(col: pd.Series) -> list[str]:
        return ["" if pd.isna(v) else str(int(v)) for v in col]

    notes = [
        f"diverged at G step {int(d)}"
        if state == "diverged" and not pd.isna(d)
        else (e if isinstance(e, str) else "")
        for state, d, e in zip(runs["state"], runs["diverged_step"], runs["error"], strict=True)
    ]
    steps = [
        f"{int(s)}/{int(n)}" if not pd.isna(n) else "–"
        for s, n in zip(runs["step"], runs["steps"], strict=True)
    ]
    columns = [
        [(v, "") for v in text(runs["run_id"])],
        *([(v, "") for v in text(runs[a])] for a in axes),
        [(v, f"state-{v}") for v in text(runs["state"])],
        [(v, "num") for v in steps],
        [(v, "num") for v in number(runs["attempts"])],
        [(_hours(v) if not pd.isna(v) else "", "num") for v in runs["train_s"]],
        [(_hours(v) if v else "", "num") for v in eval_s],
        [(v, "") for v in notes],
    ]
    rows = [
        Markup("".join(f'<td class="{c}">{escape(t)}</td>' for t, c in cells))
        for cells in zip(*columns, strict=True)
    ]
    return {"header": header, "rows": rows}


def protocols(df: pd.DataFrame) -> list[dict[str, str]]:
    """The Protocols section: a row per protocol id a value was recorded under (each
    value's own, :func:`reports.stats.value_ids`), saying the values it holds, the
    shared protocol fields and the block of its metric (no other metric's block)."""
    if "protocol_id" not in df:
        return []
    # pid -> (the row that describes it, the metric whose block it covers, values)
    found: dict[str, tuple[Any, str, list[str]]] = {}
    origins: dict[str, set[str]] = {}
    for col in df.columns:
        if not col.startswith("metric.") or col == "metric_nan":
            continue
        metric = col.removeprefix("metric.")
        present = has_value(df, metric)
        if not present.any():
            continue
        ids = value_ids(df, metric)[present].dropna()
        for first, pid in ids.drop_duplicates().items():
            found.setdefault(pid, (first, metric, []))[2].append(metric)
        for pid, seen in df.loc[ids.index, "origin"].groupby(ids).unique().items():
            origins.setdefault(pid, set()).update(o for o in seen if isinstance(o, str))
    out = []
    for pid in sorted(found):
        first, metric, values = found[pid]
        r = df.loc[first]
        ref = r.get("protocol.reference.split")
        block = value_block(metric)
        fields = [
            f"{c.removeprefix(f'protocol.{block}.')}={r[c]}"
            for c in value_protocol_columns(df.columns, metric)
            if block and c.startswith(f"protocol.{block}.") and not _missing(r[c])
        ]
        parts = [
            "values: " + ", ".join(LABELS.get(v, v) for v in values),
            f"{int(r['protocol.n_generated'])} samples"
            if not _missing(r.get("protocol.n_generated"))
            else "",
            f"{r.get('protocol.g')} G in {r.get('protocol.g_mode')} mode",
            f"sample seed {int(r['protocol.eval_seed'])}"
            if not _missing(r.get("protocol.eval_seed"))
            else "",
            "" if _missing(r.get("protocol.bn_statistics")) else str(r["protocol.bn_statistics"]),
            f"reference: {ref} split, n={r.get('protocol.reference.n')}"
            if isinstance(ref, str)
            else "",
            f"extractor {r['protocol.extractor']}, weights sha256 {str(r.get('protocol.weights_sha256'))[:12]}"
            if isinstance(r.get("protocol.extractor"), str)
            else "",
            f"{LABELS.get(block, block)} settings: {', '.join(fields)}" if fields else "",
            f"origins: {', '.join(sorted(origins.get(pid, ())))}",
        ]
        out.append({"id": pid, "text": "; ".join(p for p in parts if p)})
    return out


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def _markdown(df: pd.DataFrame, notes: list[str] = ()) -> str:
    """A pipe table (pandas' to_markdown needs tabulate; this needs nothing), and the
    table's notes as numbered footnotes under it."""
    esc = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in df.itertuples(index=False)]
    if notes:
        lines.append("")
        lines += [f"{i}. {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(lines) + "\n"


_TEX = {c: "\\" + c for c in "&%$#_{}"} | {
    "~": r"\textasciitilde{}",
    "^": r"\^{}",
    "\\": r"\textbackslash{}",
}


def _tex(v: object) -> str:
    text = "".join(_TEX.get(ch, ch) for ch in str(v))
    return (
        text.replace("±", r"$\pm$")
        .replace("–", "--")
        .replace("Δ", r"$\Delta$")
        .replace("·", r"$\cdot$")
        .replace("↑", r"$\uparrow$")
        .replace("↓", r"$\downarrow$")
    )


def _latex(df: pd.DataFrame, notes: list[str] = ()) -> str:
    """A booktabs tabular of a table (each cell as in the HTML: mean $\\pm$ std, n of N
    and why, CI, $\\Delta$), the notes as rows under the rule, so they travel with it."""
    value_cols = {
        c for c in df.columns if df[c].astype(str).str.contains(r"n=\d", regex=True).any()
    }
    cols = "".join("r" if c in value_cols else "l" for c in df.columns)
    lines = [
        rf"\begin{{tabular}}{{{cols}}}",
        r"\toprule",
        " & ".join(map(_tex, df.columns)) + r" \\",
    ]
    lines.append(r"\midrule")
    lines += [" & ".join(map(_tex, row)) + r" \\" for row in df.itertuples(index=False)]
    lines.append(r"\bottomrule")
    width = max(len(df.columns), 1)
    lines += [
        rf"\multicolumn{{{width}}}{{p{{0.95\linewidth}}}}{{\footnotesize ({i}) {_tex(n)}}} \\"
        for i, n in enumerate(notes, 1)
    ]
    lines.append(r"\end{tabular}")
    return "\n".join(lines) + "\n"


def _warnings(df: pd.DataFrame) -> list[str]:
    out = []
    col = "protocol.weights_canonical"
    if col in df and (df[col] == False).any():  # noqa: E712 - NaN means no Inception metric
        out.append(
            "Some numbers were made with an Inception weights file that is not the canonical "
            f"one (torch-fidelity's {CANONICAL_INCEPTION}, a port of the TF graph of the "
            "original FID/IS code): their FID/IS/KID values are not comparable with "
            "published ones."
        )
    return out


def _hours(seconds: float) -> str:
    """A duration for people: seconds, minutes or hours."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _counted(values: pd.Series) -> str:
    counts = values.value_counts()
    return "; ".join(f"{v} ({n} attempt{'s' if n != 1 else ''})" for v, n in counts.items())


def _provenance(
    store: Path, df: pd.DataFrame, indexes: list[dict[str, Any]]
) -> list[tuple[str, str]]:
    """How the numbers were made: grids, code, packages, machines and time."""
    import torch_fidelity

    from sagan.training.machine import describe, machine
    from sagan.training.provenance import code_version, versions

    rows = [("store", str(store))]
    for index in indexes:
        rows.append((f"grid {index['name']}", str(index.get("grid_file", "unknown file"))))
    runs = df.drop_duplicates("run_id") if len(df) else df
    present = [r for r in runs.get("run_id", []) if (store / r).is_dir()]
    envs = read_envs(store, present)
    if len(envs):
        dirty = envs["dirty"].map({True: " (uncommitted changes)"}).fillna("")
        rows.append(("trained with sagan-bench", _counted(envs["commit"].astype(str) + dirty)))
        pkgs = "torch " + envs["torch"].astype(str)
        if "torch_fidelity" in envs:
            pkgs += ", torch-fidelity " + envs["torch_fidelity"].astype(str)
        rows.append(("trained with packages", _counted(pkgs)))
        gpu = envs["gpu"] if "gpu" in envs else pd.Series([None] * len(envs), index=envs.index)
        world = envs["world_size"].map(lambda w: f" x{int(w)}" if w and w > 1 else "")
        where = (
            gpu.fillna(envs["cpu"]).astype(str) + " (" + envs["device"].astype(str) + world + ")"
        )
        rows.append(("trained on", _counted(where)))
    else:
        rows.append(("trained with", "not recorded (runs older than env.jsonl)"))
    if len(runs):
        train = runs["train_s"].dropna().sum() if "train_s" in runs else 0.0
        evals = df["eval_s"].dropna().sum() if "eval_s" in df else 0.0
        rows.append(
            (
                "device time",
                f"training {_hours(train)}, evaluation {_hours(evals)} over "
                f"{len(present)} runs (per run: the Runs table)",
            )
        )
    v = code_version()
    rows.append(
        (
            "report built with",
            f"sagan-bench {v['commit']}{' (uncommitted changes)' if v['dirty'] else ''}, "
            f"torch {versions()['torch']}, torch-fidelity {torch_fidelity.__version__}, "
            f"pandas {pd.__version__}",
        )
    )
    rows.append(("report built on", describe(machine("cpu"))))
    return rows


def _levels(v: Any) -> str:
    """A level as the grid names it (``true``, ``none``, ``8-16``): see ablations.grid."""
    from ablations.grid import level_name

    return level_name(v)


def grid_tables(
    df: pd.DataFrame,
    index: dict[str, Any],
    extra: list[dict[str, Any]] | None = None,
    runs: pd.DataFrame | None = None,
) -> list[dict[str, Any]]:
    """The laid-out tables of one grid: its ``report.tables`` (or one table with every
    axis as rows), then ``extra`` specs (the command line's). ``runs``: the grid's
    :func:`grid_runs` of ``df``, where the caller has them already."""
    name = index["name"]
    runs = grid_runs(df, index) if runs is None else runs
    if runs.empty:
        return []
    axes = grid_axes(index)
    report = index.get("report") or {}
    baseline = _baseline(index)
    present = _present_metrics(runs)
    has_final = "origin" in runs and (runs["origin"] == "final").any()
    specs = list(report.get("tables") or [])
    if not specs:
        specs = [
            {"rows": list(axes), "metrics": present, "value": "final" if has_final else "last"}
        ]
    specs += extra or []
    out = []
    for spec in specs:
        spec = dict(spec)
        if not spec.get("metrics") and not spec.get("paper"):
            spec["metrics"] = present
        if not spec.get("metrics") and not spec.get("paper"):
            continue
        table = pivot(runs, resolve(spec, axes), axes, baseline)
        table["grid"] = name
        out.append(table)
    return out


def grid_axes(index: dict[str, Any]) -> dict[str, list[str]]:
    """A grid's axes (seed excluded) and their levels, in file order."""
    return {a: [str(v) for v in lv] for a, lv in index.get("axes", {}).items() if a != "seed"}


def _baseline(index: dict[str, Any]) -> dict[str, str]:
    axes = grid_axes(index)
    report = index.get("report") or {}
    baseline = {a: _levels(v) for a, v in (report.get("baseline") or {}).items()}
    if not baseline and axes and index["name"] != NO_GRID:
        first = next(iter(axes))
        baseline = {first: axes[first][0]}
    return baseline


def _export(table: dict[str, Any], out: Path, name: str) -> None:
    """One table as CSV (for machines), Markdown and LaTeX (for people)."""
    export_frame(table, table.get("grid", "")).to_csv(out / f"{name}.csv", index=False)
    wide = wide_frame(table)
    (out / f"{name}.md").write_text(_markdown(wide, table["notes"]))
    (out / f"{name}.tex").write_text(_latex(wide, table["notes"]))


def _slug(name: str) -> str:
    return name or "nogrid"


def grid_section(
    df: pd.DataFrame,
    index: dict[str, Any],
    store: Path,
    out: Path,
    extra: list[dict[str, Any]] | None,
    training: pd.DataFrame,
) -> dict[str, Any]:
    """Everything the report shows of one grid: its laid-out tables, a summary per
    metric (or one line for a metric constant in every record), the figures of its
    cells, and their samples, attention maps and training health."""
    name = index["name"]
    runs = grid_runs(df, index)
    axes = grid_axes(index)
    order = {**axes, "seed": [str(v) for v in index.get("axes", {}).get("seed", [])]}
    runs = _in_grid_order(runs, order)
    baseline = _baseline(index)
    section: dict[str, Any] = {
        "name": name,
        "label": f"grid {name}" if name != NO_GRID else "runs in no grid",
        "layouts": [],
        "summaries": [],
        "constants": [],
        "finals": [],
        "curves": [],
    }
    for i, table in enumerate(grid_tables(df, index, extra, runs)):
        _export(table, out, f"table-{_slug(name)}-{i + 1}")
        section["layouts"].append(table)
    cell_axes = [f"axis.{a}" for a in axes]
    for metric in _present_metrics(runs):
        value = constant_value(runs, metric)
        n_runs = runs.loc[runs[f"metric.{metric}"].notna(), "run_id"].nunique()
        if value is not None:
            section["constants"].append(
                f"{LABELS.get(metric, metric)} is {value:g} in every record of this grid "
                f"({n_runs} runs, every evaluation and final score): no table or figure."
            )
            continue
        table = summary_table(runs, axes, metric, baseline)
        table["grid"] = name
        _export(table, out, f"summary-{_slug(name)}-{metric}")
        section["summaries"].append(table)
        stem = f"figure-{_slug(name)}-{metric}"
        fig, data = figs.finals(runs, metric, cell_axes)
        if fig is not None:
            data.to_csv(out / f"{stem}-values.csv", index=False)
            section["finals"].append(fig)
        curves, data = figs.curves(runs, metric, cell_axes)
        if curves:
            data.to_csv(out / f"{stem}-curves.csv", index=False)
            section["curves"] += curves
    present = [r for r in runs.drop_duplicates("run_id")["run_id"] if (store / r).is_dir()]
    cells = runs.drop_duplicates("run_id")
    section["samples"] = figs.sample_grids(cells, store, out, cell_axes)
    section["attention"] = figs.attention_maps(cells, store, cell_axes)
    train = training[training["run_id"].isin(present)] if len(training) else training
    if len(train):
        train = train.drop(columns=[c for c in train if c.startswith("axis.")])
        if cell_axes:
            train = train.join(cells.set_index("run_id")[cell_axes], on="run_id")
    section["health"] = figs.health(train, cell_axes) if len(train) else None
    return section


def build(
    store: str | Path,
    out: str | Path | None = None,
    *,
    grid: dict[str, Any] | None = None,
    extra: list[dict[str, Any]] | None = None,
) -> Path:
    """Write the report of ``store`` into ``out`` (default ``STORE/report``); returns
    the path of ``index.html``.

    Args:
        grid: a grid's ``{"name", "report"}`` to lay out instead of the store's own
            index of that grid (``--grid FILE``); other grids keep their own.
        extra: more table specs (``--rows/--cols/...``), added to every grid's tables.
    """
    store = Path(store)
    out = Path(out) if out is not None else store / "report"
    df = read_store(store)
    write_results(df, out)
    indexes = grid_indexes(store)
    if grid is not None:
        indexes = [
            i | {"report": grid["report"]} if i["name"] == grid["name"] else i for i in indexes
        ]
    loose = no_grid_index(df)
    if loose is not None:
        indexes.append(loose)
    runs = df.drop_duplicates("run_id") if len(df) else df
    present = [r for r in runs["run_id"] if (store / r).is_dir()] if len(df) else []
    training = read_training(store, present)
    order: dict[str, list[str]] = {}  # the Runs table in the grids' level order
    for index in indexes:
        for axis, levels in index.get("axes", {}).items():
            order.setdefault(axis, [str(v) for v in levels])
    sections = []
    for index in indexes:
        with reuse():  # one grid's runs frame, asked for the same values again and again
            sections.append(grid_section(df, index, store, out, extra, training))
    env = Environment(
        loader=PackageLoader("reports", "templates"), autoescape=select_autoescape(["html", "j2"])
    )
    grids = [i["name"] for i in indexes if i["name"] != NO_GRID]
    started = int((runs["state"] != "missing").sum()) if len(runs) else 0
    html = env.get_template("report.html.j2").render(
        title=f"sagan-bench: {', '.join(grids) or store.name}",
        store=str(store),
        built=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        n_runs=df["run_id"].nunique() if len(df) else 0,
        n_started=started,
        grids=grids,
        empty=_empty_text(len(runs), started),
        warnings=_warnings(df),
        sections=sections,
        runs=runs_table(_in_grid_order(runs, order)) if len(df) else {"header": [], "rows": []},
        protocols=protocols(df),
        provenance=_provenance(store, df, [i for i in indexes if i["name"] != NO_GRID]),
    )
    path = out / "index.html"
    path.write_text(html)
    return path


def _empty_text(n_runs: int, started: int) -> str | None:
    """What the report says when there is nothing to tabulate."""
    if n_runs == 0:
        return "This store holds no runs yet: no run directory and no grid index."
    if started == 0:
        return (
            f"No run of this store has started yet: its grids name {n_runs} runs, all "
            "missing. Start them with python -m ablations.run GRID.yaml."
        )
    return None


def _table_specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The command line's table (``--rows`` ...), checked as a grid's report table is."""
    from pydantic import ValidationError

    from ablations.grid import TableSpec

    if not (args.rows or args.cols):
        return []
    raw: dict[str, Any] = {"rows": args.rows.split(",") if args.rows else None}
    raw["cols"] = args.cols.split(",") if args.cols else []
    if args.metrics:
        raw["metrics"] = args.metrics.split(",")
    raw["value"] = args.value
    if args.checkpoint:
        raw["checkpoint"] = args.checkpoint
    if args.steps:
        raw["steps"] = [int(s) for s in args.steps.split(",")]
    try:
        return [TableSpec.model_validate(raw).model_dump(exclude_defaults=True)]
    except ValidationError as e:
        raise SystemExit(
            "error: "
            + "; ".join(f"--{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        ) from None


def _grid_report(path: Path) -> dict[str, Any]:
    """``--grid FILE``: the grid's name and report section, checked against its axes."""
    from ablations.grid import GridError, load_grid

    try:
        g = load_grid(path)
    except GridError as e:
        raise SystemExit(f"error: {e}") from None
    return {"name": g.name, "report": g.spec.report.model_dump(exclude_defaults=True)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reports.build", description=__doc__.splitlines()[0])
    p.add_argument("store", type=Path, help="a run store (the --out of ablations.run)")
    p.add_argument("--out", type=Path, help="report folder (default: STORE/report)")
    p.add_argument(
        "--grid", type=Path, help="lay out that grid's runs with this file's report: section"
    )
    t = p.add_argument_group("one more table, for every grid (axes comma-separated)")
    t.add_argument("--rows", help="axes as rows, e.g. attention")
    t.add_argument("--cols", help="axes as columns, e.g. sn,lr")
    t.add_argument("--metrics", help="e.g. fid,is (default: every metric recorded)")
    t.add_argument("--value", choices=("final", "best", "last"), default="final")
    t.add_argument(
        "--checkpoint",
        choices=("last", "best"),
        help="with --value final: this checkpoint role only (default: every role scored)",
    )
    t.add_argument("--steps", help="monitored values at these G steps instead, e.g. 1000,2000")
    args = p.parse_args(argv)
    if not args.store.is_dir():
        print(f"error: {args.store}: no such run store", file=sys.stderr)
        return 2
    extra = _table_specs(args)
    grid = _grid_report(args.grid) if args.grid else None
    print(build(args.store, args.out, grid=grid, extra=extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
