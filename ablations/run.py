"""Run an ablation grid: ``python -m ablations.run GRID.yaml``.

Expands the grid into cells, validates every one before anything starts, and trains
what is not done yet: done runs are skipped, interrupted ones resume from their
checkpoint, diverged ones are kept as results, failed ones are retried with
``--retry-failed``. Ends with a summary table; exits non-zero unless every selected
cell ended done or diverged, and says which did not and why. The store's HTML report
(``reports.build``) is rebuilt at the end, in ``STORE/report/``.

With ``--executor slurm --profile NAME [slurm.KEY=VALUE ...]`` the cells go to SLURM
as one job array; a cell whose job is still queued or running is followed, never
submitted again.
"""

from __future__ import annotations

import argparse
import enum
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from ablations.cost import MATCH, CostError
from ablations.executors import (
    Detached,
    Executor,
    JobView,
    LocalExecutor,
    Outcome,
    SubmissionError,
    Task,
)
from ablations.grid import Cell, Grid, GridError, load_grid, parse_only, select
from ablations.store import RunBusy, RunStore, holder, is_locked
from ablations.table import cell_table
from sagan.metrics.final import owed
from sagan.training.rundir import FINAL_STATES

BUNDLED = Path(__file__).resolve().parent / "grids"


def make_executor(name: str, **kwargs) -> Executor:
    """The executor a grid names. The command chooses it, not ablations.executors:
    slurm/ builds on ablations, so the layer below never names the one above, and
    submitit is imported only when a grid asks for SLURM."""
    if name == "local":
        return LocalExecutor(**kwargs)
    if name == "slurm":
        from slurm.executor import SlurmExecutor

        return SlurmExecutor(**kwargs)
    raise ValueError(f"unknown executor {name!r} (available: local, slurm)")


def resolve_grid_path(arg: str) -> tuple[Path, bool]:
    """A path, or the name of a bundled grid (``smoke`` -> ablations/grids/smoke.yaml)."""
    p = Path(arg)
    if p.exists():
        return p, False
    bundled = BUNDLED / f"{arg}.yaml"
    if "/" not in arg and bundled.exists():
        return bundled, True
    names = ", ".join(sorted(q.stem for q in BUNDLED.glob("*.yaml")))
    raise GridError(f"{arg}: no such grid file (bundled grids: {names})")


def default_out(grid_path: Path, bundled: bool) -> Path:
    # Bundled grids live inside the package: their runs go to ./runs instead.
    return Path("runs") if bundled else grid_path.parent / "runs"


class Action(enum.Enum):
    RUN = "run"
    RESUME = "resume"
    RETRY = "retry"
    FORCE = "run (forced)"
    FOLLOW = "follow"  # its job is queued or running: wait for it, submit nothing
    SCORE = "score"  # trained; its final scores are owed (or --rescore)
    SKIP = "skip"


@dataclass(frozen=True)
class Plan:
    """What this invocation does with one cell, and why when it skips it."""

    action: Action
    why: str = ""

    @property
    def trains(self) -> bool:
        return self.action not in (Action.SKIP, Action.FOLLOW)

    def __str__(self) -> str:
        if self.action in (Action.SKIP, Action.FOLLOW) or self.why:
            return f"{self.action.value} ({self.why})"
        return self.action.value


def plan(cell: Cell, store: RunStore, args, job: JobView | None = None) -> Plan:
    """What this invocation does with a cell: run, resume, retry, follow its live
    job, or skip (why)."""
    if job is not None:
        return Plan(Action.FOLLOW, f"job {job.job_id} {job.state}")
    st = store.state(cell)
    if args.force:
        return Plan(Action.FORCE)
    if st.state == "pending":
        return Plan(Action.RUN)
    if st.state == "interrupted":
        return Plan(Action.RESUME)
    if st.state == "running":
        return Plan(Action.SKIP, "running elsewhere")
    if st.state == "done":
        if args.rescore and cell.config.final is not None:
            return Plan(Action.SCORE, "again")
        if owed(cell.config, store.run_dir(cell.run_id)):
            return Plan(Action.SCORE)
        return Plan(Action.SKIP, "done")
    if st.state == "diverged":
        return Plan(Action.SKIP, "diverged: a result")
    # failed: only failures count against the limit, not preemptions or requeues
    if st.failures >= args.max_attempts:
        return Plan(Action.SKIP, f"failed {st.failures}x, the limit")
    if args.retry_failed:
        return Plan(Action.RETRY)
    return Plan(Action.SKIP, f"failed {st.failures}x; --retry-failed")


def check_cells(cells: list[Cell]) -> list[str]:
    """What would make these cells fail at start (data, weights): one line each."""
    from sagan.data.folders import DataError
    from sagan.metrics.errors import MetricsError
    from sagan.train import preflight

    problems: dict[str, None] = {}
    seen: set[str] = set()
    for c in cells:
        key = c.config.data.model_dump_json() + c.config.eval.model_dump_json()
        if key in seen:
            continue
        seen.add(key)
        try:
            preflight(c.config)
        except (DataError, MetricsError) as e:
            problems[str(e)] = None
    return list(problems)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m ablations.run", description=__doc__.splitlines()[0])
    p.add_argument("grid", help="grid YAML file, or the name of a bundled grid (smoke, probe, ...)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="slurm.KEY=VALUE",
        help="override a key of the SLURM profile, e.g. slurm.time=240",
    )
    p.add_argument(
        "--executor", choices=("local", "slurm"), help="where cells train (default: the grid's)"
    )
    p.add_argument("--profile", help="SLURM profile: a bundled name (local, gpu) or a YAML file")
    p.add_argument(
        "--detach",
        action="store_true",
        help="SLURM: submit, then leave the jobs running and return (re-run to follow)",
    )
    p.add_argument("--out", type=Path, help="run store (default: runs/ beside the grid file)")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="AXIS=LEVEL[,...]",
        help="run only matching cells",
    )
    p.add_argument("--jobs", type=positive_int, help="cells trained at once (local executor)")
    p.add_argument(
        "--dry-run", action="store_true", help="print the cells and what would run, then exit"
    )
    cost = p.add_mutually_exclusive_group()
    cost.add_argument(
        "--cost-from",
        type=Path,
        metavar="BENCH.json",
        help="with --dry-run: device hours per cell from a `python -m sagan.bench --out` file",
    )
    cost.add_argument(
        "--cost",
        action="store_true",
        help="with --dry-run: device hours per cell, timing each distinct cell here",
    )
    p.add_argument(
        "--force", action="store_true", help="move selected runs aside and train them anew"
    )
    p.add_argument(
        "--retry-failed", action="store_true", help="retry failed runs (up to --max-attempts)"
    )
    p.add_argument(
        "--no-report", action="store_true", help="do not rebuild STORE/report/index.html at the end"
    )
    p.add_argument(
        "--rescore",
        action="store_true",
        help="score every done cell again under the grid's final section (older records stay, "
        "each with its protocol id; a number already made under the same protocol is not redone)",
    )
    p.add_argument(
        "--max-attempts",
        type=positive_int,
        help="failed attempts per run before it stays failed (default: the grid's, 3); "
        "preemptions and requeues do not count",
    )
    return p.parse_intermixed_args(argv)


def open_grid(arg: str, only: list[str], out: Path | None) -> tuple[Grid, list[Cell], RunStore]:
    """The grid named on the command line, its selected cells, and its run store.

    Raises:
        GridError: a bad grid file or filter.
    """
    path, bundled = resolve_grid_path(arg)
    grid = load_grid(path)
    return grid, select(grid, parse_only(only)), RunStore(out or default_out(path, bundled))


def build_executor(args, grid: Grid, store: RunStore, cells: list[Cell]) -> Executor:
    """The executor the command line (or else the grid file) asks for; a SLURM
    profile is checked against ``cells``, the cells selected to run (``--only``).

    Raises:
        GridError: a bad executor choice or SLURM profile; nothing is submitted.
    """
    spec = grid.spec.executor
    name = args.executor or spec.name
    if name == "local":
        if args.overrides:
            raise GridError(f"{' '.join(args.overrides)}: profile overrides need --executor slurm")
        jobs = args.jobs or getattr(spec, "jobs", 1)
        return make_executor("local", jobs=jobs)
    from slurm.profile import ProfileError, bundled_profiles, check_cells, load_profile

    profile_name = args.profile or getattr(spec, "profile", None)
    if profile_name is None:
        raise GridError(
            "--executor slurm needs a profile: --profile NAME_OR_FILE "
            f"(bundled: {', '.join(bundled_profiles())}), or executor.profile in the grid file"
        )
    try:
        profile = load_profile(
            profile_name,
            grid_overrides=getattr(spec, "slurm", {}) if spec.name == "slurm" else {},
            cli_overrides=args.overrides,
            grid_where=str(grid.path),
        )
    except ProfileError as e:
        raise GridError(f"{e}\nnothing was submitted.") from None
    problems = check_cells(profile, [(c.label(), c.config) for c in cells])
    if problems:
        lines = "\n".join(f"{grid.path}: {p}" for p in problems)
        raise GridError(f"{lines}\non the SLURM profile {profile.source}\nnothing was submitted.")
    return make_executor(
        "slurm", out=store.out, profile=profile, detach=args.detach, job_name=f"sagan-{grid.name}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        grid, cells, store = open_grid(args.grid, args.only, args.out)
        executor = build_executor(args, grid, store, cells)
    except GridError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        return _run(args, argv, grid, cells, store, executor)
    finally:
        executor.close()


def _run(args, argv, grid: Grid, cells: list[Cell], store: RunStore, executor: Executor) -> int:
    try:
        # Jobs that ended since we last looked are recorded; live ones are followed.
        live = executor.settle([store.run_dir(c.run_id) for c in cells])
    except RuntimeError as e:  # the scheduler did not answer
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.max_attempts = args.max_attempts or grid.spec.max_attempts
    plans = {c.run_id: plan(c, store, args, live.get(store.run_dir(c.run_id))) for c in cells}
    refusals = force_refusals(cells, store, live) if args.force else []
    if refusals:
        for line in refusals:
            print(f"error: --force: {line}, or leave it out with --only.", file=sys.stderr)
        print("nothing was moved or started.", file=sys.stderr)
        return 2
    todo = [c for c in cells if plans[c.run_id].trains]
    follow = [c for c in cells if plans[c.run_id].action is Action.FOLLOW]
    n_score = sum(plans[c.run_id].action is Action.SCORE for c in cells)
    print(
        f"grid {grid.name}: {len(grid.cells)} cells, {len(cells)} selected, "
        f"{len(todo) - n_score} to train"
        + (f", {n_score} to score" if n_score else "")
        + (f", {len(follow)} to follow" if follow else "")
        + f"; store {store.out}"
    )
    if args.dry_run:
        cost = None
        if args.cost_from or args.cost:
            try:
                cost = _cost(args, [c for c in cells if plans[c.run_id].trains], store)
            except CostError as e:
                print(f"error: --cost-from {e}", file=sys.stderr)
                return 2
        print(cell_table(grid, store, cells, {k: str(v) for k, v in plans.items()}, cost=cost))
        script = executor.preview(len(todo)) if todo else ""
        if script:
            print(f"\nsbatch script for {len(todo)} cell(s):\n{script}")
        return 0
    problems = check_cells(todo)
    if problems:
        print("error: " + "\n".join(problems) + "\nnothing was started.", file=sys.stderr)
        return 2
    store.write_index(grid)
    tasks, refused = [], {}
    for c in todo:
        try:
            if args.force and (moved := store.discard(c.run_id)) is not None:
                print(f"moved {c.run_id} aside to {moved}")
            scoring = plans[c.run_id].action is Action.SCORE
            tasks.append(
                Task(
                    c.run_id,
                    store.prepare(c),
                    c.label(),
                    c.config.train.steps,
                    rescore=scoring and args.rescore,
                    kind="score" if scoring else "train",
                )
            )
        except RunBusy as e:  # claimed since it was planned
            refused[c.run_id] = str(e)
    followed = [
        Task(c.run_id, store.run_dir(c.run_id), c.label(), c.config.train.steps) for c in follow
    ]
    try:
        outcomes = executor.run(tasks, follow=followed)
    except Detached as e:
        again = shlex.join(
            [
                "python",
                "-m",
                "ablations.run",
                *(a for a in (argv if argv is not None else sys.argv[1:]) if a != "--detach"),
            ]
        )
        print(
            f"{e}. Follow them with:\n  {again}\nor look at them with:\n  "
            f"python -m ablations.status {shlex.quote(args.grid)}"
            + (f" --out {shlex.quote(str(args.out))}" if args.out else ""),
            file=sys.stderr,
        )
        return 0 if args.detach else 130
    except SubmissionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return 130
    print()
    print(cell_table(grid, store, cells))
    if not args.no_report:
        _report(store)
    unfinished = summarize(cells, store, {o.task.run_id: o for o in outcomes}, refused)
    for line in unfinished:
        print(line, file=sys.stderr)
    return 1 if unfinished else 0


def _cost(args, todo: list[Cell], store: RunStore) -> dict[str, str]:
    """``--cost-from`` / ``--cost``: each cell's training hours, and a total line."""
    from ablations import cost

    table, where = cost.load_bench(args.cost_from) if args.cost_from else cost.measure(todo)
    done = {c.run_id: store.state(c).step for c in todo}
    secs = cost.estimate(todo, done, table)
    known = [s for s in secs.values() if s is not None]
    unknown = [c.label() for c in todo if secs[c.run_id] is None]
    source = f"{args.cost_from}" if args.cost_from else "timed here"
    print(
        f"estimated training: {sum(known) / 3600:.3g} device hours for {len(known)} cell(s), "
        f"from {source} ({where}); evaluation and scoring come on top"
    )
    if unknown:
        print(
            f"no estimate for {len(unknown)} cell(s) (no benchmark case with their step: "
            f"{', '.join(MATCH)}): {', '.join(unknown)}"
        )
    return {rid: cost.hours(s) for rid, s in secs.items()}


def _report(store: RunStore) -> None:
    """The store's HTML report (``reports.build``), rebuilt at the end of every run.

    Imported here, not at the top: reports build on ablations, not the other way."""
    try:
        from reports.build import build

        print(f"report: {build(store.out)}")
    except Exception as e:  # noqa: BLE001 - the runs are done either way; say so and go on
        print(
            f"warning: the report could not be built ({type(e).__name__}: {e}); "
            f"try: python -m reports.build {store.out}",
            file=sys.stderr,
        )


def force_refusals(cells: list[Cell], store: RunStore, live: dict[Path, JobView]) -> list[str]:
    """Why ``--force`` may not move each of these cells aside: its job is queued or
    running, or a process is training it. One line per such cell."""
    out = []
    for c in cells:
        d = store.run_dir(c.run_id)
        name = f"{c.label()} ({c.run_id})"
        if (job := live.get(d)) is not None:
            out.append(
                f"{name} belongs to job {job.job_id} ({job.state}); "
                f"cancel it first (scancel {job.job_id})"
            )
        elif is_locked(d):
            out.append(f"{name} is being trained by {holder(d)}; not moved. Stop it first")
    return out


def summarize(
    cells: list[Cell], store: RunStore, outcomes: dict[str, Outcome], refused: dict[str, str]
) -> list[str]:
    """One line per selected cell that did not end done or diverged, saying why."""
    lines = []
    for c in cells:
        st = store.state(c)
        d = store.run_dir(c.run_id)
        out = outcomes.get(c.run_id)
        log = out.log if out and out.log else d / "train.log"
        if st.state == "done" and owed(c.config, d):
            lines.append(
                f"unscored: {c.label()} ({c.run_id}) is trained but its final scores are not "
                f"made: {_last_line(log)}; log: {log}"
            )
            continue
        if st.state in FINAL_STATES:
            continue
        name = f"{c.label()} ({c.run_id})"
        if (
            c.run_id in refused
            or (out is not None and out.state == "busy")
            or st.state == "running"
        ):
            lines.append(f"busy: {name} is being trained by {holder(d)}; not trained here")
        elif st.state == "failed":
            err = st.status.get("error", "see the log")
            lines.append(f"failed: {name}: {err}; log: {log}")
        else:
            why = f"the worker exited {out.returncode}: {_last_line(log)}" if out else "not trained"
            lines.append(f"untrained: {name} is {st.state}: {why}; log: {log}")
    return lines


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "empty log"


if __name__ == "__main__":
    sys.exit(main())
