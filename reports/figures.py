"""The report's figures (matplotlib, Agg): metric curves, final values with
error bars, training health, and per-arm sample grids. Each figure is returned as
``{"src", "alt", "caption"}``, with ``src`` an inline PNG (``data:`` URI) or, for sample
grids, a file copied next to the report; all of it read from the run store alone.
"""

from __future__ import annotations

import base64
import io
import math
import shutil
from pathlib import Path

import pandas as pd

from reports.tables import LABELS

Figure = dict[str, str]
# Past this many cells a legend would bury the plot; colours still tell cells apart.
MAX_LEGEND = 16


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def cell_axes(df: pd.DataFrame) -> list[str]:
    """The axis columns that name a cell: every axis but the seed."""
    return [c for c in df.columns if c.startswith("axis.") and c != "axis.seed"]


def _with_cell(df: pd.DataFrame, axes: list[str] | None = None) -> pd.DataFrame:
    """``df`` with a ``cell`` column: its levels as ``a, b`` (``all`` without axes)."""
    axes = cell_axes(df) if axes is None else [a for a in axes if a in df]
    if df.empty:
        return df.assign(cell=pd.Series(dtype=str))
    if not axes:
        return df.assign(cell="all")
    cell = df[axes[0]].astype(str)
    for a in axes[1:]:
        cell = cell + ", " + df[a].astype(str)
    return df.assign(cell=cell)


def _legend(ax, n: int) -> None:
    if n <= MAX_LEGEND:
        ax.legend(fontsize=7, title=None, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    elif ax.get_legend() is not None:
        ax.get_legend().remove()


def _first_kind(runs: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, str]:
    """The values a figure of one value per run shows: the final score (last
    checkpoint, else best), else the best monitored value; with its label."""
    from reports.stats import per_run

    for kind, role, label in (
        ("final", "last", "final score, last checkpoint"),
        ("final", "best", "final score, best checkpoint"),
        ("best", "last", "best during training"),
    ):
        values = per_run(runs, metric, kind, role)
        values = values[values["run_id"].isin(runs["run_id"])]
        if len(values):
            return values, label
    return pd.DataFrame(), ""


def finals(runs: pd.DataFrame, metric: str, axes: list[str]) -> tuple[Figure | None, pd.DataFrame]:
    """One value per run as a point per cell with the tables' 95% CI
    (:func:`reports.stats.summarize`), and the seeds themselves; a plot per protocol
    id. Returns the figure and the data it draws (a row per cell and protocol)."""
    from reports.stats import summarize

    values, label = _first_kind(runs, metric)
    if values.empty:
        return None, pd.DataFrame()
    summary = summarize(values, axes)
    summary = _with_cell(summary, axes).assign(value_kind=label)
    values = _with_cell(values, axes)
    plt = _plt()
    pids = list(dict.fromkeys(summary["protocol_id"].tolist()))
    cells = list(dict.fromkeys(summary["cell"].tolist()))
    fig, axs = plt.subplots(
        len(pids), 1, figsize=(7, (0.9 + 0.32 * len(cells)) * len(pids)), dpi=90, squeeze=False
    )
    for ax, pid in zip(axs[:, 0], pids, strict=True):
        s = summary[summary["protocol_id"] == pid].set_index("cell").reindex(cells)
        y = range(len(cells))
        seeds = values[values["protocol_id"] == pid]
        finite = seeds[seeds["finite"]]
        ax.scatter(finite["value"], finite["cell"].map(cells.index), s=12, color="#999", zorder=1)
        err = [
            (s["mean"] - s["ci_low"]).fillna(0).clip(lower=0),
            (s["ci_high"] - s["mean"]).fillna(0).clip(lower=0),
        ]
        ax.errorbar(s["mean"], y, xerr=err, fmt="o", color="#2a4d8f", capsize=3, zorder=2)
        ax.set_yticks(list(y), cells, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(LABELS.get(metric, metric) + (f" (protocol {pid})" if len(pids) > 1 else ""))
    fig.tight_layout()
    name = LABELS.get(metric, metric)
    figure = {
        "src": _png(fig),
        "alt": f"{name} per cell",
        "caption": f"{name}, {label} (protocol {', '.join(pids)}): each finite seed in grey, "
        "the mean with the 95% bootstrap CI of the tables in blue.",
    }
    return figure, summary


def curves(runs: pd.DataFrame, metric: str, axes: list[str]) -> tuple[list[Figure], pd.DataFrame]:
    """The monitored ``metric`` against G steps, one plot per protocol id: per cell, the
    mean over seeds with the tables' 95% CI as a band. Returns the figures and the
    data they draw (a row per cell, step and protocol)."""
    from reports.stats import summarize, value_ids

    col = f"metric.{metric}"
    if col not in runs or "origin" not in runs:
        return [], pd.DataFrame()
    at = (runs["origin"] == "train") & runs[col].notna()
    mon = runs[at]
    if mon.empty:
        return [], pd.DataFrame()
    values = mon.assign(
        value=mon[col].astype(float),
        value_step=mon["eval_step"],
        protocol_id=value_ids(runs, metric)[at],
    )
    values = values.assign(finite=values["value"].map(math.isfinite))
    summary = _with_cell(summarize(values, [*axes, "eval_step"]), axes)
    out = []
    plt = _plt()
    for pid, part in summary.groupby("protocol_id", sort=True):
        fig, ax = plt.subplots(figsize=(8, 3.4), dpi=90)
        for cell, line in part.groupby("cell", sort=False):
            line = line.sort_values("eval_step")
            (drawn,) = ax.plot(line["eval_step"], line["mean"], marker="o", label=cell)
            band = line.dropna(subset=["ci_low"])
            ax.fill_between(
                band["eval_step"], band["ci_low"], band["ci_high"], alpha=0.2,
                color=drawn.get_color(), linewidth=0,
            )  # fmt: skip
        ax.set_xlabel("G steps")
        ax.set_ylabel(LABELS.get(metric, metric))
        _legend(ax, part["cell"].nunique())
        fig.tight_layout()
        name = LABELS.get(metric, metric)
        out.append(
            {
                "src": _png(fig),
                "alt": f"{name} against G steps",
                "caption": f"{name} during training (monitoring protocol {pid}): mean over "
                "seeds per cell, with the 95% bootstrap CI of the tables as a band.",
            }
        )
    return out, summary


HEALTH = (
    (("d_real", "D(x)"), ("d_fake", "D(G(z))")),
    (("loss_d", "D loss"), ("loss_g", "G loss")),
    (("gamma_g", "G attention gamma"), ("gamma_d", "D attention gamma")),
)


def health(train: pd.DataFrame, axes: list[str] | None = None) -> Figure | None:
    """Training health from ``metrics.jsonl``: mean D(x) and D(G(z)), the losses, and the
    attention gammas (each block's gamma, mean over blocks), per cell over G steps."""
    if train.empty:
        return None
    train = _with_cell(train, axes)
    rows = [r for r in HEALTH if any(k in train and train[k].notna().any() for k, _ in r)]
    if not rows:
        return None
    plt = _plt()
    fig, axs = plt.subplots(len(rows), 2, figsize=(8, 2.3 * len(rows)), dpi=80, squeeze=False)
    n_cells = train["cell"].nunique()
    for i, row in enumerate(rows):
        for j, (key, label) in enumerate(row):
            ax = axs[i][j]
            if key in train and train[key].notna().any():
                means = train.groupby(["cell", "step"], sort=False)[key].mean()
                for cell in dict.fromkeys(train["cell"].tolist()):
                    line = means.loc[cell].sort_index() if cell in means.index else None
                    if line is not None:
                        ax.plot(line.index, line.to_numpy(), label=cell)
                if not (i or j):
                    _legend(ax, n_cells)
            else:
                ax.text(0.5, 0.5, "none (no attention)", ha="center", transform=ax.transAxes)
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("G steps" if i == len(rows) - 1 else "")
            ax.set_ylabel("")
    fig.tight_layout()
    return {
        "src": _png(fig),
        "alt": "training health",
        "caption": "Training health per cell, averaged over seeds: D's mean output on real "
        "and generated images, the hinge losses, and the attention blocks' gamma (0 at init).",
    }


def sample_grids(
    df: pd.DataFrame, store: Path, out: Path, axes: list[str] | None = None
) -> list[Figure]:
    """Per cell, the newest sample grid (the run's fixed z) of its first seed in the
    order of ``df`` (the grid's level order), copied into ``out/samples/``."""
    runs = _with_cell(df.drop_duplicates("run_id"), axes)
    figs = []
    for cell, group in runs.groupby("cell", sort=False):
        for run_id in group["run_id"]:
            found = sorted((store / run_id / "samples").glob("step-*.png"))
            if not found:
                continue
            (out / "samples").mkdir(parents=True, exist_ok=True)
            dest = out / "samples" / f"{run_id}.png"
            shutil.copyfile(found[-1], dest)
            step = int(found[-1].stem.removeprefix("step-"))
            figs.append(
                {
                    "src": f"samples/{dest.name}",
                    "alt": f"samples of {cell}",
                    "caption": f"{cell}: run {run_id}, G step {step}",
                }
            )
            break
    return figs


def attention_maps(df: pd.DataFrame, store: Path, axes: list[str] | None = None) -> list[Figure]:
    """Per cell with attention, the first seed's newest attention maps (``attention/``)."""
    from reports.attention import attention_figure

    runs = _with_cell(df.drop_duplicates("run_id"), axes)
    figs = []
    for cell, group in runs.groupby("cell", sort=False):
        for run_id in group["run_id"]:
            found = sorted((store / run_id / "attention").glob("step-*.npz"))
            fig = attention_figure(found[-1]) if found else None
            if fig is not None:
                fig["caption"] = f"{cell}: {fig['caption']}"
                figs.append(fig)
                break
    return figs


__all__ = ["attention_maps", "cell_axes", "curves", "finals", "health", "sample_grids"]
