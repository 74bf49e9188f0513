"""Plain-text tables of cells: what --dry-run, status and the run summary print."""

from __future__ import annotations

from ablations.executors import JobView
from ablations.grid import Cell, Grid
from ablations.store import RunStore

# Metric columns, in the order a paper's table would show them.
METRIC_COLUMNS = (
    ("fid", "FID"),
    ("is_mean", "IS"),
    ("kid_mean", "KID"),
    ("swd", "SWD"),
    ("consistency", "consist."),
    ("mirror", "mirror"),
)


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def render(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def cell_table(
    grid: Grid,
    store: RunStore,
    cells: list[Cell],
    actions: dict[str, str] | None = None,
    jobs: dict[str, JobView] | None = None,
    cost: dict[str, str] | None = None,
) -> str:
    """One row per cell: its levels, run id, state, step and latest metrics, then
    what to do with it (``actions``) or its job (``jobs``: id, scheduler state, log)."""
    axes = list(grid.axes)
    metrics = {c.run_id: store.latest_metrics(c.run_id) for c in cells}
    shown = [(k, h) for k, h in METRIC_COLUMNS if any(k in m for m in metrics.values())]
    header = [*axes, "run_id", "state", "step", *(h for _, h in shown)]
    if actions is not None:
        header.append("action")
    if cost is not None:
        header.append("est. hours")
    if jobs is not None:
        header += ["job", "job state", "log"]
    rows = []
    for c in cells:
        st = store.state(c)
        row = [c.levels[a] for a in axes] + [c.run_id, st.state, f"{st.step}/{st.steps}"]
        row += [_fmt(metrics[c.run_id].get(k)) for k, _ in shown]
        if actions is not None:
            row.append(actions.get(c.run_id, ""))
        if cost is not None:
            row.append(cost.get(c.run_id, "-"))
        if jobs is not None:
            job = jobs.get(c.run_id)
            row += [job.job_id, job.state, str(job.log)] if job else ["-", "-", "-"]
        rows.append(row)
    return render(rows, header)
