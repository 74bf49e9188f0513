"""Build a report of a run store: ``python -m reports.build STORE [--out DIR]``.

Writes ``DIR/index.html`` (one self-contained file: figures are inline PNGs), and
beside it ``results.csv`` (every run and evaluation, :mod:`reports.frame`) and
``summary-<metric>-<protocol id>.csv`` / ``.md`` / ``.tex`` (the cell tables; the
LaTeX is a booktabs tabular). The report reads the store
only, whichever executor filled it.

Per metric, one table: a row per cell (its axis levels, seeds pooled), with how many
of its runs are done, failed, diverged or missing, and for the final score, the best
and the last monitored value: mean ± std over seeds, n, and a 95% bootstrap CI.
Numbers made under different protocols are never pooled: each protocol gets its own
table. The best mean of each column is highlighted.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from reports import figures as figs
from reports.frame import grid_indexes, read_envs, read_store, read_training, write_results
from reports.stats import per_run, summarize
from reports.tables import pivot, resolve
from sagan.rundir import HIGHER_IS_BETTER

METRICS = ("fid", "is_mean", "kid_mean", "swd", "consistency", "precision", "recall")
KINDS = (("final", "final score"), ("best", "best during training"), ("last", "last monitored"))


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


_cells = figs.cell_axes


def _state_counts(runs: pd.DataFrame) -> str:
    counts = runs.groupby("state").size()
    parts = []
    for state, n in counts.items():
        text = f"{n} {state}"
        if state == "diverged":
            steps = runs.loc[runs["state"] == "diverged", "diverged_step"].dropna().astype(int)
            text += f" (at {', '.join(map(str, steps))})"
        parts.append(text)
    return ", ".join(parts)


def _in_grid_order(runs: pd.DataFrame, order: dict[str, list[str]]) -> pd.DataFrame:
    """Runs sorted by their levels as the grid files list them (unknown levels last)."""
    keys = [f"axis.{a}" for a in order if f"axis.{a}" in runs]

    def rank(col: pd.Series) -> pd.Series:
        levels = order[col.name.removeprefix("axis.")]
        return col.map(lambda v: levels.index(v) if v in levels else len(levels))

    return runs.sort_values(keys, key=rank, kind="stable") if keys else runs


def metric_tables(
    df: pd.DataFrame, metric: str, order: dict[str, list[str]] | None = None
) -> list[dict[str, Any]]:
    """The cell tables of one metric, one per protocol id of its final scores (or of
    its monitoring when there is no final score); rows in the grids' level order."""
    axes = _cells(df)
    runs = _in_grid_order(df.drop_duplicates("run_id"), order or {})
    values = {kind: per_run(df, metric, kind) for kind, _ in KINDS}
    summaries = {kind: summarize(v, axes) if len(v) else None for kind, v in values.items()}
    protocols = sorted(
        {p for s in summaries.values() if s is not None for p in s["protocol_id"].dropna()}
    )
    tables = []
    higher = HIGHER_IS_BETTER.get(metric, True)
    groups = runs.groupby(axes, sort=False, dropna=False) if axes else [((), runs)]
    for pid in protocols:
        kinds = [
            (kind, label)
            for kind, label in KINDS
            if summaries[kind] is not None and (summaries[kind]["protocol_id"] == pid).any()
        ]
        header = [a.removeprefix("axis.") for a in axes] + ["runs"]
        header += [f"{label} (mean ± std, n, 95% CI)" for _, label in kinds]
        best = {}
        for kind, _ in kinds:
            s = summaries[kind][summaries[kind]["protocol_id"] == pid]
            # All equal (or one cell): nothing stands out.
            best[kind] = (
                (s["mean"].max() if higher else s["mean"].min())
                if s["mean"].nunique() > 1
                else None
            )
        rows = []
        for key, group in groups:
            key = key if isinstance(key, tuple) else (key,)
            row = [{"text": str(k), "cls": ""} for k in key]
            row.append({"text": _state_counts(group), "cls": ""})
            for kind, _ in kinds:
                s = summaries[kind]
                mask = s["protocol_id"] == pid
                for a, k in zip(axes, key, strict=True):
                    mask &= s[a] == k
                hit = s[mask]
                if hit.empty:
                    row.append({"text": "no value", "cls": "num"})
                    continue
                r = hit.iloc[0]
                if r["n"] > 1:
                    text = f"{_fmt(r['mean'])} ± {_fmt(r['std'])}, n={r['n']}"
                    text += f", [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
                else:
                    text = f"{_fmt(r['mean'])}, n=1"
                cls = "num best" if r["mean"] == best[kind] else "num"
                row.append({"text": text, "cls": cls})
            rows.append(row)
        tables.append(
            {
                "title": f"{metric} (protocol {pid})",
                "metric": metric,
                "protocol_id": pid,
                "note": f"{'Higher' if higher else 'Lower'} is better; the best mean of each "
                "column is in bold. Seeds are pooled per cell; the CI is a percentile "
                "bootstrap of the mean over seeds (none with one seed).",
                "header": header,
                "rows": rows,
            }
        )
    return tables


def runs_table(df: pd.DataFrame) -> dict[str, Any]:
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
    rows = []
    for _, r in runs.iterrows():
        note = r.get("error") if isinstance(r.get("error"), str) else ""
        if r["state"] == "diverged" and not pd.isna(r.get("diverged_step")):
            note = f"diverged at G step {int(r['diverged_step'])}"
        steps = r.get("steps")
        step = f"{int(r['step'])}/{int(steps)}" if not pd.isna(steps) else "–"
        rows.append(
            [{"text": r["run_id"], "cls": ""}]
            + [{"text": "" if pd.isna(r.get(a)) else str(r[a]), "cls": ""} for a in axes]
            + [
                {"text": r["state"], "cls": f"state-{r['state']}"},
                {"text": step, "cls": "num"},
                {
                    "text": "" if pd.isna(r.get("attempts")) else str(int(r["attempts"])),
                    "cls": "num",
                },
                {
                    "text": _hours(r["train_s"]) if not pd.isna(r.get("train_s")) else "",
                    "cls": "num",
                },
                {
                    "text": _hours(eval_s[r["run_id"]]) if eval_s.get(r["run_id"], 0) else "",
                    "cls": "num",
                },
                {"text": note, "cls": ""},
            ]
        )
    return {"header": header, "rows": rows}


def protocols(df: pd.DataFrame) -> list[dict[str, str]]:
    if "protocol_id" not in df:
        return []
    out = []
    for pid, g in df.dropna(subset=["protocol_id"]).groupby("protocol_id"):
        r = g.iloc[0]
        ref = r.get("protocol.reference.split")
        parts = [
            f"{int(r['protocol.n_generated'])} samples" if "protocol.n_generated" in r else "",
            f"{r.get('protocol.g')} G in {r.get('protocol.g_mode')} mode",
            str(r.get("protocol.bn_statistics", "")),
            f"reference: {ref} split, n={r.get('protocol.reference.n')}"
            if isinstance(ref, str)
            else "",
            f"extractor {r['protocol.extractor']}, weights sha256 {str(r.get('protocol.weights_sha256'))[:12]}"
            if isinstance(r.get("protocol.extractor"), str)
            else "",
            f"origins: {', '.join(sorted(g['origin'].dropna().unique()))}",
        ]
        out.append({"id": pid, "text": "; ".join(p for p in parts if p)})
    return out


def _markdown(df: pd.DataFrame) -> str:
    """A pipe table (pandas' to_markdown needs tabulate; this needs nothing)."""
    esc = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


_TEX = {c: "\\" + c for c in "&%$#_{}"} | {
    "~": r"\textasciitilde{}",
    "^": r"\^{}",
    "\\": r"\textbackslash{}",
}


def _tex(v: object) -> str:
    text = "".join(_TEX.get(ch, ch) for ch in str(v))
    return text.replace("±", r"$\pm$").replace("–", "--")


def _latex(df: pd.DataFrame) -> str:
    """A booktabs tabular of a cell table (mean $\\pm$ std, n, CI as in the HTML)."""
    cols = "".join("r" if "mean" in str(c) else "l" for c in df.columns)
    lines = [
        rf"\begin{{tabular}}{{{cols}}}",
        r"\toprule",
        " & ".join(map(_tex, df.columns)) + r" \\",
    ]
    lines.append(r"\midrule")
    lines += [" & ".join(map(_tex, row)) + r" \\" for row in df.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _warnings(df: pd.DataFrame) -> list[str]:
    out = []
    col = "protocol.weights_canonical"
    if col in df and (df[col] == False).any():  # noqa: E712 - NaN means no Inception metric
        out.append(
            "Some numbers were made with an Inception weights file that is not the canonical "
            "pt_inception-2015-12-05 file: their FID/IS/KID values are not comparable with "
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

    from sagan.benchmarks.machine import describe, machine
    from sagan.provenance import code_version, versions

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
    df: pd.DataFrame, index: dict[str, Any], extra: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The laid-out tables of one grid: its ``report.tables`` (or one table with every
    axis as rows), then ``extra`` specs (the command line's)."""
    name = index["name"]
    runs = df[df["grid"].fillna("").str.split(",").apply(lambda gs: name in gs)]
    if runs.empty:
        return []
    axes = {a: [str(v) for v in lv] for a, lv in index.get("axes", {}).items() if a != "seed"}
    report = index.get("report") or {}
    baseline = {a: _levels(v) for a, v in (report.get("baseline") or {}).items()}
    if not baseline and axes:
        first = next(iter(axes))
        baseline = {first: axes[first][0]}
    present = [m for m in METRICS if f"metric.{m}" in runs and runs[f"metric.{m}"].notna().any()]
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
        table = pivot(runs, resolve(spec, axes), axes, baseline)
        table["grid"] = name
        out.append(table)
    return out


def _export(flat: pd.DataFrame, out: Path, name: str) -> None:
    flat.to_csv(out / f"{name}.csv", index=False)
    (out / f"{name}.md").write_text(_markdown(flat))
    (out / f"{name}.tex").write_text(_latex(flat))


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
    order: dict[str, list[str]] = {}
    for index in indexes:
        for axis, levels in index.get("axes", {}).items():
            order.setdefault(axis, [str(v) for v in levels])
    layouts = []
    for index in indexes:
        for i, table in enumerate(grid_tables(df, index, extra)):
            _export(table.pop("flat"), out, f"table-{index['name']}-{i + 1}")
            layouts.append(table)
    tables, figures, finals = [], [], []
    for metric in METRICS:
        if f"metric.{metric}" not in df:
            continue
        for table in metric_tables(df, metric, order):
            tables.append(table)
            flat = pd.DataFrame(
                [[c["text"] for c in r] for r in table["rows"]], columns=table["header"]
            )
            _export(flat, out, f"summary-{metric}-{table['protocol_id']}")
        figures += figs.curves(_in_grid_order(df, order), metric)
        kind, label = next(
            ((k, lab) for k, lab in KINDS if len(per_run(df, metric, k))), (None, None)
        )
        if kind is not None:
            finals += figs.finals(_in_grid_order(per_run(df, metric, kind), order), metric, label)
    runs = _in_grid_order(df.drop_duplicates("run_id"), order) if len(df) else df
    present = [r for r in runs["run_id"] if (store / r).is_dir()] if len(df) else []
    health = figs.health(_in_grid_order(read_training(store, present), order))
    env = Environment(
        loader=PackageLoader("reports", "templates"), autoescape=select_autoescape(["html", "j2"])
    )
    grids = sorted(
        {g for gs in df.get("grid", pd.Series(dtype=str)).dropna() for g in str(gs).split(",") if g}
    )
    html = env.get_template("report.html.j2").render(
        title=f"sagan-bench: {', '.join(grids) or store.name}",
        store=str(store),
        built=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        n_runs=df["run_id"].nunique() if len(df) else 0,
        grids=grids,
        warnings=_warnings(df),
        layouts=layouts,
        tables=tables,
        figures=figures,
        finals=finals,
        health=health,
        samples=figs.sample_grids(runs, store, out) if len(df) else [],
        attention=figs.attention_maps(runs, store) if len(df) else [],
        runs=runs_table(df) if len(df) else {"header": [], "rows": []},
        protocols=protocols(df),
        provenance=_provenance(store, df, indexes),
    )
    path = out / "index.html"
    path.write_text(html)
    return path


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
