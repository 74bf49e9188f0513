"""Statistics over seeds: one value per run, then mean, std, n and a bootstrap CI per
cell, and each arm's difference from a baseline arm with its own CI.

One value per run comes from :func:`per_run`: its ``final`` score (the scoring of
record, at the ``last`` or the ``best`` checkpoint), its ``best`` monitored value, or
its ``last`` monitored value. Values are grouped by protocol id as well, each value
by its own (:func:`value_ids`: the shared protocol fields and its metric's block), so
a column never mixes numbers made under different protocols and never splits numbers
made the same way because their records also held other metrics.

A non-finite value (NaN or infinity: a collapsed G) is a result, not a gap: it is
counted (``n_nonfinite``) and said with its step, and left out of the mean, the std
and the CI, which are over the finite values (``n``).

Every interval is a percentile bootstrap of the mean with :data:`RESAMPLES` resamples
and a fixed seed, so the same values give the same interval in every table, figure
and export, build after build. A difference from the baseline is *paired* (a
bootstrap of the per-seed differences) when both arms have a finite value for the
same seeds, which then share their data order and noise; otherwise it is *unpaired*
(each arm resampled on its own).
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Literal

import numpy as np
import pandas as pd

from sagan.metrics.protocol import BLOCK_METRICS, value_block
from sagan.training.rundir import HIGHER_IS_BETTER

Kind = Literal["final", "best", "last"]
CONFIDENCE = 0.95
RESAMPLES = 9999
SEED = 0
VALUE_COLUMNS = ["run_id", "protocol_id", "value", "value_step", "finite"]


def recorded_nan(df: pd.DataFrame, metric: str) -> pd.Series:
    """Rows whose record gives ``metric`` as NaN (``metric_nan``, :mod:`reports.frame`)."""
    if "metric_nan" not in df or df.empty:
        return pd.Series(False, index=df.index)
    flagged = df["metric_nan"].notna()
    out = pd.Series(False, index=df.index)
    if flagged.any():
        text = df.loc[flagged, "metric_nan"].astype(str)
        out[flagged] = text.str.contains(f"|{metric}|", regex=False).to_numpy()
    return out


def has_value(df: pd.DataFrame, metric: str) -> pd.Series:
    """Rows that hold a value of ``metric``, NaN values included."""
    col = f"metric.{metric}"
    present = df[col].notna() if col in df else pd.Series(False, index=df.index)
    return present | recorded_nan(df, metric)


def value_ids(df: pd.DataFrame, metric: str) -> pd.Series:
    """Each row's protocol id of its ``metric`` value: the value's own
    (``protocol_id.<metric>``, :mod:`reports.frame`), else the record's ``protocol_id``
    (records older than per-value ids)."""
    own = f"protocol_id.{metric}"
    record = df["protocol_id"] if "protocol_id" in df else pd.Series(None, index=df.index)
    return df[own].fillna(record) if own in df else record


def value_protocol_columns(columns, metric: str) -> list[str]:
    """The ``protocol.*`` columns of ``columns`` that apply to a value of ``metric``:
    the shared fields and its own metric's block, not another metric's (as its id,
    :func:`sagan.metrics.protocol.value_protocol`)."""
    block = value_block(metric)
    out = []
    for c in columns:
        if c.startswith("protocol."):
            top = c.split(".", 2)[1]
            if top not in BLOCK_METRICS or top == block:
                out.append(c)
    return out


# (id of the frame, metric, kind, checkpoint) -> (the frame, per_run's result), while
# :func:`reuse` is open; the frame is held so that its id cannot be reused.
_REUSE: dict[tuple, tuple[pd.DataFrame, pd.DataFrame]] | None = None


@contextlib.contextmanager
def reuse():
    """Within this block, :func:`per_run` of the same frame object and arguments is
    computed once: a grid's layout tables, its summaries and its figures all ask for
    the same final values. The frame must not change inside the block, and callers
    must treat what per_run returns as read-only (every caller filters into a new
    frame)."""
    global _REUSE
    outer = _REUSE
    _REUSE = {} if outer is None else outer
    try:
        yield
    finally:
        _REUSE = outer


def per_run(
    df: pd.DataFrame, metric: str, kind: Kind = "final", checkpoint: str = "last"
) -> pd.DataFrame:
    """One row per (run, protocol id of the value, :func:`value_ids`) with ``value``,
    ``value_step``, ``finite`` and the ``protocol.*`` fields that apply to the value.

    ``final``: the record of origin ``final`` at the ``checkpoint`` role (``last`` or
    ``best``); ``best``: the best monitored value over training (by the metric's
    direction; a non-finite value only when a run has no finite one); ``last``: the
    newest monitored value, finite or not. Runs without such a record are left out.

    Computed once per frame and arguments inside :func:`reuse`.
    """
    if _REUSE is None:
        return _per_run(df, metric, kind, checkpoint)
    key = (id(df), metric, kind, checkpoint)
    hit = _REUSE.get(key)
    if hit is None or hit[0] is not df:
        hit = _REUSE[key] = (df, _per_run(df, metric, kind, checkpoint))
    return hit[1]


def _per_run(df: pd.DataFrame, metric: str, kind: Kind, checkpoint: str) -> pd.DataFrame:
    """The uncached :func:`per_run`."""
    col = f"metric.{metric}"
    if col not in df or "origin" not in df:
        return pd.DataFrame(columns=VALUE_COLUMNS)
    # Only what the statistics and the tables read: copying every config column of a
    # store of 10,000 runs per call would cost more than the statistics.
    keep = [
        c
        for c in df.columns
        if c in ("run_id", "eval_step", "origin", "checkpoint", "state", col)
        or c.startswith("axis.")
    ] + value_protocol_columns(df.columns, metric)
    present = has_value(df, metric)
    rows = df.loc[present, keep].assign(protocol_id=value_ids(df, metric)[present])
    if kind == "final":
        rows = rows[(rows["origin"] == "final") & (rows["checkpoint"].fillna("last") == checkpoint)]
    else:
        rows = rows[rows["origin"] == "train"]
    values = rows[col].astype(float)
    finite = np.isfinite(values)
    if kind == "best":
        higher = HIGHER_IS_BETTER.get(metric, True)
        rank = values.where(finite, -np.inf if higher else np.inf)
        order = rows.assign(_rank=rank, _finite=finite).sort_values(
            ["_finite", "_rank"], ascending=[False, not higher], kind="stable"
        )
        rows = order.drop(columns=["_rank", "_finite"])
    else:
        rows = rows.sort_values("eval_step", ascending=False, kind="stable")
    picked = rows.groupby(["run_id", "protocol_id"], sort=True).head(1)
    value = picked[col].astype(float)
    out = picked.drop(columns=[c for c in picked if c.startswith("metric.")])
    out = out.assign(value=value, value_step=picked["eval_step"], finite=np.isfinite(value))
    # In run id order whatever order the rows came in: a cell's bootstrap draws values
    # by position, so the same runs must give the same interval in every table,
    # figure and export.
    return out.sort_values(["run_id", "protocol_id"], kind="stable").reset_index(drop=True)


@functools.lru_cache(maxsize=4)
def _weights(n: int, stream: int) -> np.ndarray:
    """The bootstrap's resamples of ``n`` values as weights, ``[RESAMPLES, n]``: row i
    is how often each value is drawn in resample i, over ``n``. The same for every
    group of ``n`` values (one stream per sample of a two-sample difference), so one
    matrix product gives a group's resampled means."""
    rng = np.random.default_rng((SEED, stream, n))
    # 32-bit draws are four times faster and give the same indices (numpy's bounded
    # integers take the same stream below 2**31); int64 only where the offsets need it.
    dtype = np.int32 if RESAMPLES * n < 2**31 else np.int64
    idx = rng.integers(0, n, size=(RESAMPLES, n), dtype=dtype)
    idx += (np.arange(RESAMPLES, dtype=dtype) * n)[:, None]
    counts = np.bincount(idx.ravel(), minlength=RESAMPLES * n).reshape(RESAMPLES, n)
    return counts / n


def _interval(means: np.ndarray) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def _resampled_means(groups: list[np.ndarray], stream: int) -> list[np.ndarray | None]:
    """Each group's bootstrap means (``RESAMPLES`` of them; None below two values).

    Groups of one size share a resampling, so they go through one matrix product; the
    product is always padded to a multiple of 8 columns so that a group's means do not
    depend on which other groups were computed with it (a lone column would take
    BLAS's matrix-vector kernel, which sums in another order): the same values give
    the same interval in a table, its figure and its exports.
    """
    out: list[np.ndarray | None] = [None] * len(groups)
    by_size: dict[int, list[int]] = {}
    for i, v in enumerate(groups):
        if len(v) >= 2:
            by_size.setdefault(len(v), []).append(i)
    for n, idx in by_size.items():
        width = -(-len(idx) // 8) * 8
        stacked = np.zeros((n, width))
        for j, i in enumerate(idx):
            stacked[:, j] = groups[i]
        means = _weights(n, stream) @ stacked
        for j, i in enumerate(idx):
            out[i] = means[:, j]
    return out


def mean_cis(groups: list[np.ndarray]) -> list[tuple[float, float]]:
    """Percentile bootstrap CI of the mean of each group; NaN for fewer than two
    values, the value itself when all are equal."""
    groups = [np.asarray(v, dtype=float) for v in groups]
    varied = [v if len(v) >= 2 and np.ptp(v) > 0 else v[:0] for v in groups]
    means = _resampled_means(varied, 0)
    out = []
    for v, m in zip(groups, means, strict=True):
        if len(v) < 2:
            out.append((math.nan, math.nan))
        elif m is None:
            out.append((float(v[0]), float(v[0])))
        else:
            out.append(_interval(m))
    return out


def mean_ci(values: np.ndarray) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values``; NaN for fewer than two."""
    return mean_cis([values])[0]


def diff_cis(arms: list[np.ndarray], base: np.ndarray) -> list[tuple[float, float]]:
    """Percentile bootstrap CI of ``mean(arm) - mean(base)`` for each arm, each sample
    resampled on its own; NaN unless both have two values or more."""
    base = np.asarray(base, dtype=float)
    arms = [np.asarray(a, dtype=float) for a in arms]
    if not any(len(a) >= 2 for a in arms):
        return [(math.nan, math.nan)] * len(arms)
    (base_means,) = _resampled_means([base], 2)
    arm_means = _resampled_means(arms, 1)
    out = []
    for arm, m in zip(arms, arm_means, strict=True):
        if m is None or base_means is None:
            out.append((math.nan, math.nan))
        elif np.ptp(np.concatenate([arm, base])) == 0:
            out.append((0.0, 0.0))
        else:
            out.append(_interval(m - base_means))
    return out


def diff_ci(arm: np.ndarray, base: np.ndarray) -> tuple[float, float]:
    """:func:`diff_cis` of one arm."""
    return diff_cis([arm], base)[0]


def _nonfinite_text(sub: pd.DataFrame) -> str:
    """``nan at step 100, inf at step 40`` for the non-finite values of a cell."""
    if sub["finite"].all():
        return ""
    bad = sub[~sub["finite"]]
    steps = bad["value_step"] if "value_step" in bad else [None] * len(bad)
    return ", ".join(
        f"{str(v).lower()} at step {int(s)}" if not pd.isna(s) else str(v).lower()
        for v, s in zip(bad["value"], steps, strict=True)
    )


SUMMARY_COLUMNS = ["n", "n_nonfinite", "nonfinite", "mean", "std", "ci_low", "ci_high"]


def summarize(values: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per group of ``by`` (and protocol id): ``n`` finite values, their mean, std
    (ddof 1) and bootstrap CI, and the non-finite ones (``n_nonfinite``, and
    ``nonfinite``: each value with its step).

    Args:
        values: :func:`per_run` output (one ``value`` per run).
    """
    keys = [*by, "protocol_id"]
    if "finite" not in values:
        values = values.assign(finite=np.isfinite(values["value"].astype(float)))
    groups, finite = [], []
    for group, sub in values.groupby(keys, sort=False, dropna=False):
        groups.append((group, sub))
        finite.append(sub.loc[sub["finite"], "value"].to_numpy(dtype=float))
    rows = []
    for (group, sub), v, (low, high) in zip(groups, finite, mean_cis(finite), strict=True):
        rows.append(
            {
                **dict(zip(keys, group, strict=True)),
                "n": len(v),
                "n_nonfinite": int((~sub["finite"]).sum()),
                "nonfinite": _nonfinite_text(sub),
                "mean": float(v.mean()) if len(v) else math.nan,
                "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
                "ci_low": low,
                "ci_high": high,
            }
        )
    return pd.DataFrame(rows, columns=[*keys, *SUMMARY_COLUMNS])


def _by_seed(rows: pd.DataFrame) -> pd.Series | None:
    """The finite values of one arm by seed, or None when seeds are not known or
    repeat (then the arm cannot be paired)."""
    if "axis.seed" not in rows:
        return None
    finite = rows[rows["finite"]]
    seeds = finite["axis.seed"].astype(str)
    if seeds.duplicated().any() or seeds.eq("nan").any():
        return None
    return pd.Series(finite["value"].to_numpy(dtype=float), index=seeds.to_numpy())


DIFF_COLUMNS = ["diff", "diff_ci_low", "diff_ci_high", "paired"]


def versus(values: pd.DataFrame, by: list[str], baseline: dict[str, str]) -> pd.DataFrame:
    """Each arm's mean minus the baseline arm's over finite values, with a bootstrap CI
    of that difference, paired by seed where both arms have the same seeds.

    Arms and the baseline are compared within the same values of the ``by`` columns
    that ``baseline`` does not name, and the same protocol id. A CI that excludes 0
    says the arm differs from the baseline beyond what its seeds disagree on.
    ``paired`` says which bootstrap was used.
    """
    if "finite" not in values:
        values = values.assign(finite=np.isfinite(values["value"].astype(float)))
    fixed = [k for k in by if k not in baseline]
    rows = []
    for group, sub in values.groupby([*fixed, "protocol_id"], sort=False, dropna=False):
        ctx = dict(zip([*fixed, "protocol_id"], group, strict=True))
        mask = np.all([sub[k].astype(str) == str(v) for k, v in baseline.items()], axis=0)
        base_rows = sub.loc[mask]
        base = base_rows.loc[base_rows["finite"], "value"].to_numpy(dtype=float)
        if len(base) == 0:
            continue
        base_seeds = _by_seed(base_rows)
        arms, paired_diffs, unpaired = [], [], []
        for arm, arm_rows in sub.groupby(list(baseline), sort=False):
            arm = arm if isinstance(arm, tuple) else (arm,)
            v = arm_rows.loc[arm_rows["finite"], "value"].to_numpy(dtype=float)
            if len(v) == 0:
                continue
            arm_seeds = _by_seed(arm_rows)
            paired = (
                base_seeds is not None
                and arm_seeds is not None
                and len(v) > 1
                and set(arm_seeds.index.tolist()) == set(base_seeds.index.tolist())
                and len(arm_rows) == len(base_rows) == len(v) == len(base)
            )
            d = (arm_seeds - base_seeds.reindex(arm_seeds.index)).to_numpy() if paired else None
            arms.append((arm, v, paired))
            paired_diffs.append(d if paired else np.array([]))
            unpaired.append(np.array([]) if paired else v)
        paired_cis = mean_cis(paired_diffs)
        unpaired_cis = diff_cis(unpaired, base)
        for (arm, v, paired), pci, uci in zip(arms, paired_cis, unpaired_cis, strict=True):
            low, high = pci if paired else uci
            rows.append(
                {
                    **ctx,
                    **dict(zip(baseline, arm, strict=True)),
                    "diff": float(v.mean() - base.mean()),
                    "diff_ci_low": low,
                    "diff_ci_high": high,
                    "paired": bool(paired),
                }
            )
    columns = [*fixed, "protocol_id", *baseline, *DIFF_COLUMNS]
    return pd.DataFrame(rows, columns=columns)


__all__ = [
    "CONFIDENCE",
    "RESAMPLES",
    "diff_ci",
    "diff_cis",
    "has_value",
    "recorded_nan",
    "mean_ci",
    "mean_cis",
    "per_run",
    "summarize",
    "value_ids",
    "value_protocol_columns",
    "versus",
]
