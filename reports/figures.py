"""The report's figures (seaborn/matplotlib, Agg): metric curves, final values with
error bars, training health, and per-arm sample grids. Each figure is returned as
``{"src", "alt", "caption"}``, with ``src`` an inline PNG (``data:`` URI) or, for sample
grids, a file copied next to the report; all of it read from the run store alone.
"""

from __future__ import annotations

import base64
import io
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


def _with_cell(df: pd.DataFrame) -> pd.DataFrame:
    axes = cell_axes(df)
    if df.empty:
        return df.assign(cell=pd.Series(dtype=str))
    if not axes:
        return df.assign(cell="all")
    return df.assign(cell=df[axes].astype(str).agg(", ".join, axis=1))


def _legend(ax, n: int) -> None:
    if n <= MAX_LEGEND:
        ax.legend(fontsize=7, title=None, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    elif ax.get_legend() is not None:
        ax.get_legend().remove()


def curves(df: pd.DataFrame, metric: str) -> list[Figure]:
    """The monitored ``metric`` against G steps, one plot per protocol id: per cell, the
    mean over seeds with a 95% CI band."""
    import seaborn as sns

    col = f"metric.{metric}"
    if col not in df or "origin" not in df:
        return []
    mon = _with_cell(df[(df["origin"] == "train") & df[col].notna()])
    out = []
    for pid, part in mon.groupby("protocol_id", sort=True):
        fig, ax = _plt().subplots(figsize=(8, 3.4), dpi=90)
        sns.lineplot(
            data=part, x="eval_step", y=col, hue="cell", hue_order=list(dict.fromkeys(part["cell"])),
            errorbar=("ci", 95), marker="o", ax=ax,
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
                "seeds per cell, with a 95% CI band.",
            }
        )
    return out


def finals(values: pd.DataFrame, metric: str, kind_label: str) -> list[Figure]:
    """One value per run (``reports.stats.per_run``) as a point per cell with 95% CI
    error bars over seeds, and the seeds themselves; one plot per protocol id."""
    import seaborn as sns

    if values.empty:
        return []
    values = _with_cell(values)
    out = []
    for pid, part in values.groupby("protocol_id", sort=True):
        cells = list(dict.fromkeys(part["cell"]))
        fig, ax = _plt().subplots(figsize=(7, 0.9 + 0.32 * len(cells)), dpi=90)
        sns.pointplot(
            data=part, y="cell", x="value", order=cells, errorbar=("ci", 95),
            linestyle="none", capsize=0.3, color="#2a4d8f", ax=ax,
        )  # fmt: skip
        sns.stripplot(data=part, y="cell", x="value", order=cells, color="#999", size=4, ax=ax)
        ax.set_xlabel(LABELS.get(metric, metric))
        ax.set_ylabel("")
        ax.tick_params(axis="y", labelsize=7)
        fig.tight_layout()
        name = LABELS.get(metric, metric)
        out.append(
            {
                "src": _png(fig),
                "alt": f"{name} per cell",
                "caption": f"{name}, {kind_label} (protocol {pid}): each seed in grey, the mean "
                "with its 95% bootstrap CI in blue.",
            }
        )
    return out


HEALTH = (
    (("d_real", "D(x)"), ("d_fake", "D(G(z))")),
    (("loss_d", "D loss"), ("loss_g", "G loss")),
    (("gamma_g", "G attention gamma"), ("gamma_d", "D attention gamma")),
)


def health(train: pd.DataFrame) -> Figure | None:
    """Training health from ``metrics.jsonl``: mean D(x) and D(G(z)), the losses, and the
    attention gammas (each block's gamma, mean over blocks), per cell over G steps."""
    import seaborn as sns

    if train.empty:
        return None
    train = _with_cell(train)
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
                sns.lineplot(
                    data=train, x="step", y=key, hue="cell", errorbar=None, ax=ax,
                    hue_order=list(dict.fromkeys(train["cell"])),
                )  # fmt: skip
                if i or j:
                    if ax.get_legend() is not None:
                        ax.get_legend().remove()
                else:
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


def sample_grids(df: pd.DataFrame, store: Path, out: Path) -> list[Figure]:
    """Per cell, the newest sample grid (the run's fixed z) of its first seed in the
    order of ``df`` (the grids' level order), copied into ``out/samples/``."""
    runs = _with_cell(df.drop_duplicates("run_id"))
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


def attention_maps(df: pd.DataFrame, store: Path) -> list[Figure]:
    """Per cell with attention, the first seed's newest attention maps (``attention/``)."""
    from reports.attention import attention_figure

    runs = _with_cell(df.drop_duplicates("run_id"))
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
