"""Grid files: a base config, axes of named levels, seeds -> validated cells.

A grid file::

    name: attention
    base: ../configs/cifar10.yaml     # a sagan.train config file, or an inline mapping
    overrides: {train.steps: 50000}   # optional, applied to the base
    axes:
      attention:                      # axis -> level -> config overrides
        none:   {model.attn_g: [], model.attn_d: []}
        feat16: {model.attn_g: [16], model.attn_d: [16]}
      train.n_dis: [1, 5]             # shorthand: a config key and its values
    seeds: [0, 1, 2]
    mode: product                     # or zip (axes advance together)
    exclude: [{attention: none, train.n_dis: 5}]
    eval: {n_samples: 10000}          # defaults merged into every cell's eval section
    final: {n_samples: 50000, checkpoint: last}  # the scoring of record, once trained
    executor: {name: local, jobs: 2}  # or {name: slurm, profile: gpu, slurm: {time: 240}}
    report:                           # how reports.build lays out this grid's tables
      baseline: {attention: none}     # each arm's difference is taken from this one
      tables:
        - {rows: [attention], cols: [train.n_dis], metrics: [fid, is], value: final}
        - {paper: table1}             # a layout of the paper, its values beside

Every cell is validated against the training config before anything runs; each
problem is one line naming the file and the path inside it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails

from ablations.runid import run_id
from sagan.config import (
    Config,
    ConfigError,
    YamlLoader,
    build_config,
    describe_errors,
    flatten,
    load_yaml,
    set_dotted,
    yaml_load,
)
from sagan.data.folders import DataError
from sagan.data.identity import data_identity
from sagan.training.rundir import HIGHER_IS_BETTER


class GridError(ValueError):
    """A problem in a grid file, phrased as ``FILE: path.in.file: what is wrong``."""


SEED_AXIS = "seed"


class LocalExecutorSpec(BaseModel):
    """``executor: {name: local, jobs: 2}``: cells train as subprocesses of this machine."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["local"] = "local"
    jobs: int = Field(1, ge=1)


class SlurmExecutorSpec(BaseModel):
    """``executor: {name: slurm, profile: gpu, slurm: {time: 240}}``: cells run as SLURM jobs.

    ``profile`` is a bundled profile's name or a YAML file (a relative path is taken
    from the grid file's folder); null leaves it to the command line. ``slurm``
    overrides the profile's keys. Both are checked by ``slurm.profile.load_profile``
    when the grid is run, so that reading a grid needs no SLURM code.
    """

    model_config = ConfigDict(extra="forbid")
    name: Literal["slurm"]
    profile: str | None = None
    slurm: dict[str, Any] = {}


EXECUTORS = ("local", "slurm")

# Metric names a report table may ask for: as recorded, or as in eval.metrics.
METRIC_ALIASES = {"is": "is_mean", "kid": "kid_mean"}
# The paper's layouts that reports.build knows, and the axes each lays out (as the
# bundled paper_* grids name them); their values are in reports/paper.yaml.
PAPER_LAYOUTS = {"table1": ("block", "placement"), "sn_ttur": ("arm",)}


class TableSpec(BaseModel):
    """One table of the report: a pivot of cells, or one of the paper's layouts.

    ``rows``/``cols``: axes (seed excluded; seeds are pooled). An axis in neither is
    added to the rows, so that arms are never pooled. ``value``: each run's ``final``
    score (``checkpoint``: at the ``last`` or the ``best`` checkpoint only; by default
    a column per role scored), ``best`` or ``last`` monitored value; ``steps``:
    monitored values at these G steps instead, a column per step. ``paper``: one of the paper's layouts, which
    fixes rows, metrics and steps unless given here.
    """

    model_config = ConfigDict(extra="forbid")
    title: str | None = None
    paper: Literal[tuple(PAPER_LAYOUTS)] | None = None  # type: ignore[valid-type]
    rows: list[str] | None = None
    cols: list[str] = []
    metrics: list[str] | None = None
    value: Literal["final", "best", "last"] = "final"
    # With value final: the checkpoint role shown (None: a column per role scored).
    checkpoint: Literal["last", "best"] | None = None
    steps: list[int] | None = None

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, metrics: list[str] | None) -> list[str] | None:
        if metrics is None:
            return None
        out = []
        for m in metrics:
            name = METRIC_ALIASES.get(m, m)
            if name not in HIGHER_IS_BETTER:
                known = ", ".join([*HIGHER_IS_BETTER, *METRIC_ALIASES])
                raise ValueError(f"no metric named {m!r} (metrics: {known})")
            out.append(name)
        return out


class ReportSpec(BaseModel):
    """``report:``: the baseline arm and the tables of the grid's report."""

    model_config = ConfigDict(extra="forbid")
    baseline: dict[str, Any] | None = None
    tables: list[TableSpec] = []


def _executor_name(spec: Any) -> str | None:
    """Which executor spec a grid's ``executor:`` is; a mapping without a name is local."""
    if isinstance(spec, dict):
        name = spec.get("name", "local")
        return name if name in EXECUTORS else None
    return getattr(spec, "name", None)


ExecutorSpec = Annotated[
    Annotated[LocalExecutorSpec, Tag("local")] | Annotated[SlurmExecutorSpec, Tag("slurm")],
    Discriminator(_executor_name, custom_error_type="executor_name", custom_error_message="-"),
]


class GridSpec(BaseModel):
    """The schema of a grid file (after YAML parsing)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    base: str | dict[str, Any]
    overrides: dict[str, Any] = {}  # applied to the base, e.g. a base file's training length
    axes: dict[str, dict[str, dict[str, Any] | None] | list[Any]] = {}
    seeds: list[int] = [0]
    mode: Literal["product", "zip"] = "product"
    include: list[dict[str, Any]] = []
    exclude: list[dict[str, Any]] = []
    executor: ExecutorSpec = LocalExecutorSpec()
    eval: dict[str, Any] = {}
    final: dict[str, Any] | None = None  # the scoring of record, merged into every cell
    max_attempts: int = Field(3, ge=1)
    report: ReportSpec = ReportSpec()

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds:
            raise ValueError("needs at least one seed")
        dup = sorted({s for s in seeds if seeds.count(s) > 1})
        if dup:
            raise ValueError(f"seed {dup[0]} is listed twice")
        return seeds


@dataclass
class Cell:
    """One run of the grid: its axis levels, seed, resolved config and run id."""

    levels: dict[str, str]  # axis -> level name, seed included
    config: Config
    run_id: str

    def label(self) -> str:
        return label(self.levels)


def label(levels: dict[str, str]) -> str:
    """``attention=feat16,seed=0``: how a cell is named to people and in ``--only``."""
    return ",".join(f"{k}={v}" for k, v in levels.items())


@dataclass
class Grid:
    name: str
    path: Path
    spec: GridSpec
    axes: dict[str, list[str]]  # axis -> level names, in file order (seed last)
    cells: list[Cell] = field(default_factory=list)


class _RunIds:
    """Run ids of one grid's configs, identifying each distinct dataset once."""

    def __init__(self):
        self.digests: dict[str, str | DataError] = {}

    def __call__(self, cfg: Config) -> str:
        key = cfg.data.model_dump_json(exclude={"num_workers"})
        if key not in self.digests:
            try:
                self.digests[key] = data_identity(cfg.data)["digest"]
            except DataError as e:
                self.digests[key] = e
        found = self.digests[key]
        if isinstance(found, DataError):
            raise found
        return run_id(cfg, found)


def _axis_levels(name: str, axis: dict | list) -> dict[str, dict[str, Any]]:
    """Normalise an axis to ``{level name: {dotted key: value}}``."""
    if isinstance(axis, list):  # shorthand: `train.n_dis: [1, 5]`
        return {level_name(v): {name: v} for v in axis}
    # Nested sections (`model: {attn_g: [8]}`) and dotted keys mean the same thing.
    return {level: flatten(ov or {}) for level, ov in axis.items()}


def _repeated_values(axis: str, values: list[Any], path: Path) -> list[str]:
    """An error per level of a list axis that names a value listed before it.

    Two spellings of one number (``1.0e-4``, ``0.0001``) get one level name, so
    without this the grid would silently have one cell fewer than its file lists.
    """
    first: dict[str, int] = {}
    errors = []
    spelled: list[str] | None = None
    for i, v in enumerate(values):
        name = level_name(v)
        if name not in first:
            first[name] = i
            continue
        spelled = spelled or _spellings(path, axis, len(values)) or list(map(level_name, values))
        a, b = spelled[first[name]], spelled[i]
        errors.append(
            f"{path}: axes.{axis}: level {a} is listed twice; list each value once"
            if a == b
            else f"{path}: axes.{axis}: levels {a} and {b} are the same value ({name}); "
            "list each value once"
        )
    return errors


def _spellings(path: Path, axis: str, n: int) -> list[str] | None:
    """The levels of list axis ``axis`` as the file spells them, or None if not found.

    Parsed values have lost their spelling; only an error message needs it back.
    """
    try:
        text = path.read_text()
        root = yaml.compose(text, Loader=YamlLoader)
    except (OSError, yaml.YAMLError):
        return None
    node = _child(_child(root, "axes"), axis)
    if isinstance(node, yaml.SequenceNode) and len(node.value) == n:
        return [text[v.start_mark.index : v.end_mark.index] for v in node.value]
    return None


def _child(node: Any, key: str) -> Any:
    """The value under ``key`` of a composed YAML mapping, or None."""
    if not isinstance(node, yaml.MappingNode):
        return None
    return next((v for k, v in node.value if getattr(k, "value", None) == key), None)


def level_name(v: Any) -> str:
    """The name of a level given as a value: ``true``, ``none``, ``8-16``, ``0.0001``.

    The one normalisation for level names and for the values that filters
    (``include``, ``exclude``, ``--only``) compare with them.
    """
    if isinstance(v, list):
        return "-".join(map(level_name, v)) or "none"
    if isinstance(v, bool):
        return str(v).lower()
    return "none" if v is None else str(v)


def _wanted(want: Any) -> list[str]:
    """A filter's value as level names; a list means any of its items."""
    return [level_name(w) for w in want] if isinstance(want, list) else [level_name(want)]


def _matches(levels: dict[str, str], flt: dict[str, Any]) -> bool:
    return all(levels.get(axis) in _wanted(want) for axis, want in flt.items())


def load_grid(path: str | Path) -> Grid:
    """Parse, expand and validate a grid file.

    Raises:
        GridError: every problem found, one per line, nothing started.
    """
    path = Path(path)
    where = str(path)
    try:
        raw = load_yaml(path)
    except ConfigError as e:
        raise GridError(str(e)) from None
    try:
        spec = GridSpec.model_validate(raw)
    except ValidationError as e:
        raise GridError(describe_errors(_spec_errors(e), f"{where}: ")) from None
    if isinstance(spec.executor, SlurmExecutorSpec) and spec.executor.profile:
        spec.executor.profile = _profile_path(spec.executor.profile, path)

    base = _load_base(spec, path)
    ids = _RunIds()
    errors: list[str] = []
    axes: dict[str, dict[str, dict[str, Any]]] = {}
    for axis, levels in spec.axes.items():
        if axis == SEED_AXIS:
            errors.append(
                f"{where}: axes.{axis}: '{SEED_AXIS}' is reserved; list seeds under 'seeds:'"
            )
            continue
        if isinstance(levels, list):
            errors += _repeated_values(axis, levels, path)
        norm = _axis_levels(axis, levels)
        if not norm:
            errors.append(f"{where}: axes.{axis}: the axis has no levels")
            continue
        axes[axis] = norm
        seen: dict[str, str] = {}
        for level, ov in norm.items():
            cfg = _build(base, ov, f"{where}: axes.{axis}.{level}", errors)
            if cfg is None:
                continue
            try:
                key = ids(cfg)
            except DataError:
                continue  # reported once per cell below
            if key in seen and len(norm) > 1:
                errors.append(
                    f"{where}: axes.{axis}: levels '{seen[key]}' and '{level}' resolve to the same config"
                )
            seen.setdefault(key, level)
    if spec.mode == "zip":
        sizes = {a: len(v) for a, v in axes.items()}
        if len(set(sizes.values())) > 1:
            errors.append(f"{where}: mode: zip needs axes of equal length, got {sizes}")
    for i, flt in enumerate(spec.include + spec.exclude):
        kind, j = ("include", i) if i < len(spec.include) else ("exclude", i - len(spec.include))
        for axis, want in flt.items():
            names = [str(s) for s in spec.seeds] if axis == SEED_AXIS else list(axes.get(axis, {}))
            if axis != SEED_AXIS and axis not in axes:
                errors.append(f"{where}: {kind}[{j}]: no axis named '{axis}'")
                continue
            for w in _wanted(want):
                if w not in names:
                    errors.append(
                        f"{where}: {kind}[{j}].{axis}: no level named '{w}' (levels: {', '.join(names)})"
                    )
    errors += _report_errors(spec.report, axes, where)
    if errors:
        raise GridError("\n".join(errors))

    grid = Grid(
        spec.name,
        path,
        spec,
        {a: list(v) for a, v in axes.items()} | {SEED_AXIS: [str(s) for s in spec.seeds]},
    )
    names = list(axes)
    combos = (
        list(zip(*(list(axes[a]) for a in names), strict=True))
        if spec.mode == "zip" and names
        else list(itertools.product(*(list(axes[a]) for a in names)))
    )
    by_id: dict[str, str] = {}
    for combo in combos:
        for seed in spec.seeds:
            levels = dict(zip(names, combo, strict=True)) | {SEED_AXIS: str(seed)}
            if spec.include and not any(_matches(levels, f) for f in spec.include):
                continue
            if any(_matches(levels, f) for f in spec.exclude):
                continue
            overrides: dict[str, Any] = {}
            for a, lv in zip(names, combo, strict=True):
                overrides.update(axes[a][lv])
            overrides["train.seed"] = seed
            name = label(levels)
            cfg = _build(base, overrides, f"{where}: cell {name}", errors)
            if cfg is None:
                continue
            try:
                rid = ids(cfg)
            except DataError as e:
                if f"{where}: {e}" not in errors:
                    errors.append(f"{where}: {e}")
                continue
            if rid in by_id:
                errors.append(f"{where}: cells {by_id[rid]} and {name} resolve to the same config")
                continue
            by_id[rid] = name
            grid.cells.append(Cell(levels, cfg, rid))
    if errors:
        raise GridError("\n".join(errors))
    if not grid.cells:
        raise GridError(f"{where}: include/exclude leave no cell to run")
    return grid


def _report_errors(report: ReportSpec, axes: dict[str, Any], where: str) -> list[str]:
    """Axes and levels a ``report:`` section names that the grid does not have."""
    errors = []
    for axis, level in (report.baseline or {}).items():
        if axis not in axes:
            errors.append(
                f"{where}: report.baseline: no axis named '{axis}' (axes: {', '.join(axes)})"
            )
        elif level_name(level) not in axes[axis]:
            errors.append(
                f"{where}: report.baseline.{axis}: no level named '{level_name(level)}' "
                f"(levels: {', '.join(axes[axis])})"
            )
    for i, table in enumerate(report.tables):
        for key in ("rows", "cols"):
            for axis in getattr(table, key) or []:
                if axis not in axes:
                    errors.append(
                        f"{where}: report.tables.{i}.{key}: no axis named '{axis}' "
                        f"(axes: {', '.join(axes) or 'none'})"
                    )
        if table.paper is not None:
            need = [a for a in PAPER_LAYOUTS[table.paper] if a not in axes]
            if need:
                errors.append(
                    f"{where}: report.tables.{i}.paper: {table.paper} lays out the axes "
                    f"{', '.join(PAPER_LAYOUTS[table.paper])}; the grid has no axis "
                    f"{', '.join(repr(a) for a in need)} (axes: {', '.join(axes) or 'none'})"
                )
        elif table.rows is None and not table.cols:
            errors.append(f"{where}: report.tables.{i}: give rows (axes), or a paper layout")
    return errors


def _spec_errors(err: ValidationError) -> list[ErrorDetails]:
    """A grid's validation errors, keyed as the file spells them.

    pydantic puts the executor's name into the path (``executor.slurm.bogus``); the
    file says ``executor.bogus``. A name that is no executor is reported at ``name``.
    """
    out: list[ErrorDetails] = []
    for e in err.errors():
        loc = e["loc"]
        if e["type"] == "executor_name":
            found = e["input"]
            if isinstance(found, dict):
                e = e | {
                    "loc": (*loc, "name"),
                    "msg": f"Value error, no executor named {found.get('name')!r} "
                    f"(executors: {', '.join(EXECUTORS)})",
                }
            else:
                e = e | {
                    "msg": f"Value error, expected a mapping such as {{name: local, jobs: 2}} "
                    f"(got {found!r})"
                }
        elif loc[:1] == ("executor",) and len(loc) > 1 and loc[1] in EXECUTORS:
            e = e | {"loc": loc[:1] + loc[2:]}
            if loc[1:] == ("slurm", "jobs"):
                e = e | {
                    "type": "jobs_on_slurm",
                    "msg": "only for name: local; under SLURM the profile's "
                    "array_parallelism sets how many cells run at once",
                }
        out.append(e)
    return out


def _profile_path(profile: str, grid_path: Path) -> str:
    """A profile that looks like a path is taken relative to the grid file; a name stays."""
    if "/" in profile or profile.endswith((".yaml", ".yml")):
        return str((grid_path.parent / profile).resolve())
    return profile


def _build(
    base: dict[str, Any], overrides: dict[str, Any], where: str, errors: list[str]
) -> Config | None:
    """The config of ``base`` plus ``overrides``; on failure, its problems go to ``errors``."""
    try:
        return build_config(base, overrides)
    except ConfigError as e:
        errors += [f"{where}: {line}" for line in str(e).splitlines()]
        return None


def _load_base(spec: GridSpec, path: Path) -> dict[str, Any]:
    """The base config as a nested dict, with the grid's eval defaults merged in."""
    if isinstance(spec.base, str):
        base_path = (path.parent / spec.base).resolve()
        try:
            base = load_yaml(base_path)
        except ConfigError as e:
            raise GridError(f"{path}: base: {e}") from None
    else:
        base = {}
        for k, v in spec.base.items():  # dotted keys allowed inline
            if isinstance(v, dict) and "." not in k:
                for kk, vv in flatten(v).items():
                    set_dotted(base, f"{k}.{kk}", vv)
            else:
                set_dotted(base, k, v)
    for k, v in flatten(spec.overrides).items():
        set_dotted(base, k, v)
    for k, v in flatten(spec.eval).items():
        set_dotted(base, f"eval.{k}", v)
    if spec.final is not None:
        base["final"] = {}
        for k, v in flatten(spec.final).items():
            set_dotted(base, f"final.{k}", v)
    try:
        build_config(base)
    except ConfigError as e:
        raise GridError(
            "\n".join(f"{path}: base: {line}" for line in str(e).splitlines())
        ) from None
    return base


def parse_only(items: list[str]) -> dict[str, list[str]]:
    """``['attention=feat32,seed=0']`` -> ``{'attention': ['feat32'], 'seed': ['0']}``."""
    out: dict[str, list[str]] = {}
    for item in items:
        for part in item.split(","):
            key, sep, value = part.partition("=")
            if not sep:
                raise GridError(f"--only {item}: expected axis=level[,axis=level...]")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _only_level(levels: list[str], value: str) -> str | None:
    """The level ``--only`` means by ``value``: as typed, or as YAML (``True`` -> ``true``)."""
    if value in levels:
        return value
    try:
        parsed = level_name(yaml_load(value))
    except Exception:  # noqa: BLE001 - not YAML: no other spelling to try
        return None
    return parsed if parsed in levels else None


def select(grid: Grid, only: dict[str, list[str]]) -> list[Cell]:
    """The cells that match every ``--only`` filter (levels of one axis are alternatives)."""
    chosen: dict[str, set[str]] = {}
    for axis, wanted in only.items():
        if axis not in grid.axes:
            raise GridError(f"--only: no axis named '{axis}' (axes: {', '.join(grid.axes)})")
        for w in wanted:
            level = _only_level(grid.axes[axis], w)
            if level is None:
                raise GridError(
                    f"--only: axis '{axis}' has no level '{w}' (levels: {', '.join(grid.axes[axis])})"
                )
            chosen.setdefault(axis, set()).add(level)
    return [c for c in grid.cells if all(c.levels[a] in w for a, w in chosen.items())]


__all__ = [
    "Cell",
    "Grid",
    "GridError",
    "GridSpec",
    "LocalExecutorSpec",
    "SlurmExecutorSpec",
    "load_grid",
    "parse_only",
    "run_id",
    "select",
    "yaml_load",
]
