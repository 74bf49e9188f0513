"""Statistics over seeds: one value per run, then mean, std, n and a bootstrap CI per
cell, and each arm's difference from a baseline arm with its own CI.

One value per run comes from :func:`per_run`: its ``final`` score (the scoring of
record, checkpoint ``last``), its ``best`` monitored value, or its ``last``
monitored value. Values are grouped by protocol id as well, so a column never mixes
numbers made under different protocols.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from sagan.rundir import HIGHER_IS_BETTER

Kind = Literal["final", "best", "last"]


def per_run(df: pd.DataFrame, metric: str, kind: Kind = "final") -> pd.DataFrame:
    """One row per (run, protocol id) with ``value`` (and ``value_step``) of ``metric``.

    ``final``: the record of origin ``final`` on the last checkpoint; ``best``: the
    best monitored value over training (by the metric's direction); ``last``: the
    newest monitored value. Runs without such a record are left out.
    """
    col = f"metric.{metric}"
    if col not in df or "origin" not in df:
        return pd.DataFrame(columns=["run_id", "protocol_id", "value", "value_step"])
    rows = df[df[col].notna()]
    if kind == "final":
        rows = rows[(rows["origin"] == "final") & (rows["checkpoint"].fillna("last") == "last")]
    else:
        rows = rows[rows["origin"] == "train"]
    if kind == "best":
        rows = rows.sort_values(
            col, ascending=not HIGHER_IS_BETTER.get(metric, True), kind="stable"
        )
    else:
        rows = rows.sort_values("eval_step", ascending=False, kind="stable")
    picked = rows.groupby(["run_id", "protocol_id"], sort=True).head(1)
    out = picked.drop(columns=[c for c in picked if c.startswith("metric.")])
    out = out.assign(value=picked[col].astype(float), value_step=picked["eval_step"])
    return out.reset_index(drop=True)


def _ci(values: np.ndarray, confidence: float, n_resamples: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean; NaN for fewer than two values."""
    if len(values) < 2:
        return math.nan, math.nan
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    res = stats.bootstrap(
        (values,),
        np.mean,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarize(
    values: pd.DataFrame,
    by: list[str],
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> pd.DataFrame:
    """Per group of ``by`` (and protocol id): n, mean, std (ddof 1), and the bootstrap CI.

    Args:
        values: :func:`per_run` output (one ``value`` per run).
    """
    keys = [*by, "protocol_id"]
    rows = []
    for group, sub in values.groupby(keys, sort=False, dropna=False):
        v = sub["value"].to_numpy(dtype=float)
        low, high = _ci(v, confidence, n_resamples, seed)
        rows.append(
            {
                **dict(zip(keys, group, strict=True)),
                "n": len(v),
                "mean": float(v.mean()),
                "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
                "ci_low": low,
                "ci_high": high,
            }
        )
    return pd.DataFrame(rows, columns=[*keys, "n", "mean", "std", "ci_low", "ci_high"])


def versus(
    values: pd.DataFrame,
    by: list[str],
    baseline: dict[str, str],
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> pd.DataFrame:
    """Each arm's mean minus the baseline arm's, with a bootstrap CI of that difference.

    Arms and the baseline are compared within the same values of the ``by`` columns
    that ``baseline`` does not name, and the same protocol id. A CI that excludes 0
    says the arm differs from the baseline beyond what its seeds disagree on.
    """
    fixed = [k for k in by if k not in baseline]
    rows = []
    for group, sub in values.groupby([*fixed, "protocol_id"], sort=False, dropna=False):
        ctx = dict(zip([*fixed, "protocol_id"], group, strict=True))
        mask = np.all([sub[k] == v for k, v in baseline.items()], axis=0)
        base = sub.loc[mask, "value"].to_numpy(dtype=float)
        if len(base) == 0:
            continue
        for arm, arm_rows in sub.groupby(list(baseline), sort=False):
            arm = arm if isinstance(arm, tuple) else (arm,)
            v = arm_rows["value"].to_numpy(dtype=float)
            diff = float(v.mean() - base.mean())
            low = high = math.nan
            if len(v) > 1 and len(base) > 1 and np.ptp(np.concatenate([v, base])) == 0:
                low = high = diff  # no spread at all: nothing to resample
            elif len(v) > 1 and len(base) > 1:
                res = stats.bootstrap(
                    (v, base),
                    lambda a, b, axis=-1: np.mean(a, axis=axis) - np.mean(b, axis=axis),
                    confidence_level=confidence,
                    n_resamples=n_resamples,
                    method="percentile",
                    rng=np.random.default_rng(seed),
                )
                low, high = res.confidence_interval.low, res.confidence_interval.high
            rows.append(
                {
                    **ctx,
                    **dict(zip(baseline, arm, strict=True)),
                    "diff": diff,
                    "diff_ci_low": float(low),
                    "diff_ci_high": float(high),
                }
            )
    columns = [*fixed, "protocol_id", *baseline, "diff", "diff_ci_low", "diff_ci_high"]
    return pd.DataFrame(rows, columns=columns)


__all__ = ["per_run", "summarize", "versus"]
