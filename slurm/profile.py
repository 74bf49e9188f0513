"""Cluster profiles: how a grid's cells are submitted to SLURM.

A profile is a YAML file of the keys of :class:`Profile`. Bundled profiles live in
``slurm/profiles/NAME.yaml`` and are named by ``NAME``; any other profile is named
by its path. Values are layered, later wins::

    profile file  <  grid file's executor.slurm section  <  command line (slurm.KEY=VALUE)

Every layer is validated on its own before they are merged, so each problem is
reported against the place that holds it, one line each::

    slurm/profiles/bad.yaml: time: Input should be greater than or equal to 1 (got 0)
"""

from __future__ import annotations

import signal as _signal
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
)

from sagan.config import ConfigError, error_message, flatten, parse_overrides, set_dotted, yaml_load

BUNDLED = Path(__file__).resolve().parent / "profiles"
COLLECTIVE_TIMEOUT_S = 300  # collective_timeout_s's default; also a cell pickled without one
CLI_PREFIX = "slurm."

# Offered when a signal name is wrong; any catchable name in Python's `signal` is accepted.
COMMON_SIGNALS = ("USR1", "USR2", "TERM", "INT", "HUP")
# Keys the profile (or submitit) writes itself: an `sbatch:` entry would silently fight them.
_OWNED_SBATCH_KEYS = {
    "partition": "partition",
    "account": "account",
    "qos": "qos",
    "constraint": "constraint",
    "nodes": "nodes",
    "gpus-per-node": "gpus_per_node",
    "ntasks-per-node": "tasks_per_node",
    "cpus-per-task": "cpus_per_task",
    "mem": "mem_gb",
    "time": "time",
    "signal": "signal",
}
_SUBMITIT_SBATCH_KEYS = ("array", "output", "error", "open-mode")


class ProfileError(ValueError):
    """Profile problems, one line each: ``WHERE: KEY: what is wrong (got VALUE)``."""


def _sbatch_key(key: str) -> str:
    if key.startswith("-"):
        raise ValueError(f"write the key without leading dashes, as {key.lstrip('-')!r}")
    norm = key.replace("_", "-")
    if norm in _OWNED_SBATCH_KEYS:
        raise ValueError(f"set by the profile's own key '{_OWNED_SBATCH_KEYS[norm]}'; use that")
    if norm in _SUBMITIT_SBATCH_KEYS:
        raise ValueError("written by submitit itself; it cannot be set here")
    return key


def _sbatch_value(value: Any) -> Any:
    if not isinstance(value, str | int | float | bool):
        raise ValueError("must be a string, a number or true/false")
    return value


class Profile(BaseModel):
    """How one cell becomes a SLURM job (one job, or one task of an array).

    =====================  ===========  ===================================================
    key                    default      meaning
    =====================  ===========  ===================================================
    partition              null         ``--partition``; null = the cluster's default
    account                null         ``--account`` charged for the job
    qos                    null         ``--qos``
    constraint             null         ``--constraint`` (node features, e.g. ``a100``)
    nodes                  1            nodes per job
    gpus_per_node          0            GPUs per node (0 = none requested)
    tasks_per_node         1            tasks per node; for DDP one task per GPU
    cpus_per_task          1            CPUs per task; also the job's OMP/MKL threads
    mem_gb                 null         memory per node in GB; null = the cluster's default
    time                   60           the job's time limit, minutes
    score_time             60           the time limit of a job that only scores a trained
                                        run under its final protocol, minutes
    array_parallelism      64           cells of one array running at once
    signal                 USR2         signal SLURM sends before a time limit or
                                        preemption (a name from Python's ``signal``
                                        without ``SIG``); the job checkpoints and requeues
    signal_delay_s         120          seconds before the limit that the signal arrives
    max_requeues           100          timeouts requeued before the job is given up: a
                                        signal after min(0.8 x time, time - 10 min) of
                                        the job's run is a timeout (every one when
                                        time <= 10); an earlier one (a preemption) is
                                        requeued without counting
    setup                  []           shell lines run in the job before python (module
                                        loads, environment activation)
    sbatch                 {}           extra sbatch parameters, keys without dashes, e.g.
                                        ``{mail-type: END}``; ``false`` leaves a flag off
    python                 null         shell command starting python in the job;
                                        null = the submitting interpreter
    collective_timeout_s   300          DDP (several tasks): seconds a collective waits
                                        for a peer before the job fails, so a rank that
                                        hangs or is gone ends every rank within it; rank
                                        0's lone work (evaluation, checkpoint, samples)
                                        is waited for with a heartbeat every quarter of
                                        it, however long it takes. Raise it only if the
                                        ranks' own steps drift further apart (compile)
    poll_s                 5.0          how often the submitter reads job states
    vanish_grace_s         120          how long a job we submitted may be unknown to
                                        sacct before it is taken as vanished
    =====================  ===========  ===================================================

    ``name`` (the bundled name or the file's stem) and ``source`` (where the values
    came from) are set by :func:`load_profile` and are not part of the dump.
    """

    model_config = ConfigDict(extra="forbid")

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    tasks_per_node: int = Field(1, ge=1)
    cpus_per_task: int = Field(1, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    time: int = Field(60, ge=1)
    score_time: int = Field(60, ge=1)
    array_parallelism: int = Field(64, ge=1)
    signal: str = "USR2"
    signal_delay_s: int = Field(120, ge=1)
    max_requeues: int = Field(100, ge=0)
    setup: list[str] = []
    sbatch: dict[
        Annotated[str, AfterValidator(_sbatch_key)], Annotated[Any, AfterValidator(_sbatch_value)]
    ] = {}
    python: str | None = None
    collective_timeout_s: int = COLLECTIVE_TIMEOUT_S
    poll_s: float = Field(5.0, gt=0)
    vanish_grace_s: float = Field(120.0, ge=0)

    _name: str = PrivateAttr("custom")
    _source: str = PrivateAttr("built in code")

    @field_validator("signal", mode="before")
    @classmethod
    def _signal_name(cls, value: Any) -> Any:
        """``SIGUSR2``, ``usr2`` -> ``USR2``; a name the job's Python could not install fails."""
        if not isinstance(value, str):
            return value  # pydantic's own type error
        name = value.strip().upper().removeprefix("SIG")
        if name in ("KILL", "STOP"):
            raise ValueError(f"SIG{name} cannot be caught, so the job could not checkpoint")
        if f"SIG{name}" not in _signal.Signals.__members__:
            raise ValueError(f"not a signal name; use one of {', '.join(COMMON_SIGNALS)}")
        return name

    @field_validator("collective_timeout_s")
    @classmethod
    def _collective_timeout(cls, value: int) -> int:
        """At least a minute: one rank may reach a step's collective seconds to tens of
        seconds after another (data loading, a slower node), which is no failure."""
        if value < 60:
            raise ValueError(
                "must be at least 60 seconds: a shorter wait fails healthy DDP jobs whose "
                f"ranks reach a collective seconds apart (default {COLLECTIVE_TIMEOUT_S})"
            )
        return value

    @property
    def name(self) -> str:
        """The bundled name or the profile file's stem."""
        return self._name

    @property
    def source(self) -> str:
        """Where the values came from: the file, then each layer of overrides."""
        return self._source


def bundled_profiles() -> list[str]:
    """Names of the profiles shipped in ``slurm/profiles``, sorted."""
    return sorted(p.stem for p in BUNDLED.glob("*.yaml"))


def _shown(path: Path) -> str:
    """A path as people should read it: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _find(name_or_path: str) -> Path | None:
    """A profile file: an existing file, else a bundled name; None if neither."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = BUNDLED / f"{name_or_path}.yaml"
    if "/" not in name_or_path and bundled.is_file():
        return bundled
    return None


def _read(path: Path, where: str, errors: list[str]) -> dict[str, Any]:
    """The profile file as a dict; an unreadable file adds one line to ``errors``."""
    try:
        data = yaml_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        errors.append(f"{where}: not valid YAML{at}: {problem}")
        return {}
    except OSError as e:
        errors.append(f"{where}: cannot be read ({e.strerror})")
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        errors.append(f"{where}: expected a mapping of profile keys (got {data!r})")
        return {}
    return data


def _nested(flat: dict[str, Any], where: str, errors: list[str], prefix: str = "") -> dict:
    """``{'sbatch.mail-type': 'END'}`` -> ``{'sbatch': {'mail-type': 'END'}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        try:
            set_dotted(out, key, value)
        except ConfigError as e:
            errors.append(f"{where}: {prefix}{e}")
    return out


def _cli_layer(items: list[str], errors: list[str]) -> dict[str, Any]:
    """``['slurm.time=240']`` -> ``{'time': 240}``, values read as YAML."""
    flat: dict[str, Any] = {}
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key.startswith(CLI_PREFIX) or key == CLI_PREFIX:
            errors.append(f"command line: {item!r}: expected slurm.KEY=VALUE, e.g. slurm.time=240")
            continue
        try:
            flat.update(parse_overrides([item]))
        except ConfigError:
            errors.append(f"command line: {key}: not valid YAML (got {item.partition('=')[2]!r})")
    stripped = {k.removeprefix(CLI_PREFIX): v for k, v in flat.items()}
    return _nested(stripped, "command line", errors, prefix=CLI_PREFIX)


def _check(layer: dict[str, Any], where: str, prefix: str, errors: list[str]) -> None:
    """Validate one layer on its own; each problem becomes ``WHERE: KEY: msg (got VALUE)``."""
    try:
        Profile.model_validate(layer)
    except ValidationError as e:
        for err in e.errors():
            # A bad dict key is reported at '[key]' below the key itself; name the key.
            loc = [str(p) for p in err["loc"] if p != "[key]"]
            msg = error_message(err)
            if "(got " not in msg and " is not one of " not in msg:
                msg = f"{msg} (got {err['input']!r})"  # every profile line names its value
            key = prefix + ".".join(loc)
            errors.append(f"{where}: {key}: {msg}")


def _merge(into: dict[str, Any], layer: dict[str, Any]) -> None:
    """Later layers win key by key; ``sbatch`` entries merge, lists are replaced."""
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            into[key] = into[key] | value
        else:
            into[key] = value


def load_profile(
    name_or_path: str,
    grid_overrides: dict[str, Any] | None = None,
    cli_overrides: list[str] | None = None,
    grid_where: str = "grid",
) -> Profile:
    """Load a profile and apply the grid file's and the command line's overrides.

    Args:
        name_or_path: a bundled profile's name (``local``, ``gpu``) or a YAML file.
        grid_overrides: the grid file's ``executor.slurm`` mapping (nested or dotted keys).
        cli_overrides: ``slurm.KEY=VALUE`` items from the command line.
        grid_where: the grid file's path, for messages (``GRID: executor.slurm: KEY: ...``).

    Returns:
        The validated profile, with ``name`` and ``source`` set.

    Raises:
        ProfileError: every problem of every layer, one per line, if there is any.
    """
    errors: list[str] = []
    path = _find(name_or_path)
    file_layer: dict[str, Any] = {}
    if path is None:
        errors.append(
            f"no such profile {name_or_path!r} (bundled: {', '.join(bundled_profiles())}) "
            "and no file of that name"
        )
        where = name_or_path
    else:
        where = _shown(path)
        file_layer = _read(path, where, errors)
        _check(file_layer, where, "", errors)

    grid_at = f"{grid_where}: executor.slurm"
    grid_layer = _nested(flatten(grid_overrides or {}), grid_at, errors)
    _check(grid_layer, grid_at, "", errors)
    cli_layer = _cli_layer(cli_overrides or [], errors)
    _check(cli_layer, "command line", CLI_PREFIX, errors)
    if errors:
        raise ProfileError("\n".join(errors))

    merged: dict[str, Any] = {}
    for layer in (file_layer, grid_layer, cli_layer):
        _merge(merged, layer)
    profile = Profile.model_validate(merged)  # every layer passed alone, so this does too
    profile._name = path.stem
    parts = [where]
    if grid_layer:
        parts.append(f"{grid_at} ({', '.join(flatten(grid_layer))})")
    if cli_layer:
        parts.append(f"command line ({', '.join(CLI_PREFIX + k for k in flatten(cli_layer))})")
    profile._source = " < ".join(parts)
    problems = _contradictions(profile)
    if problems:
        raise ProfileError("\n".join(f"{profile.source}: {p}" for p in problems))
    return profile


def _contradictions(profile: Profile) -> list[str]:
    """Keys that are each valid but together make a job that can only fail once it
    runs (so they are checked on the merged layers): ``KEY: why (got VALUE)``."""
    out = []
    delay = profile.signal_delay_s
    for key, does in (("time", "train"), ("score_time", "score")):
        minutes = getattr(profile, key)
        if delay >= minutes * 60:
            out.append(
                f"signal_delay_s: {delay} s is not shorter than {key} ({minutes} min = "
                f"{minutes * 60} s): the signal would come as the job starts, before it "
                f"could {does} (got {delay})"
            )
    if profile.gpus_per_node and profile.tasks_per_node > profile.gpus_per_node:
        out.append(
            f"tasks_per_node: {profile.tasks_per_node} processes per node for "
            f"{profile.gpus_per_node} GPUs per node: each process trains on a GPU of its "
            f"own (got {profile.tasks_per_node})"
        )
    return out


def check_cells(profile: Profile, cells: list[tuple[str, Any]]) -> list[str]:
    """What in each cell's config this profile's jobs could not run, one line each:
    ``LABEL: KEY: why (got VALUE)``; empty when every cell fits.

    Args:
        cells: ``(label, config)`` of each cell to submit (:class:`sagan.config.Config`).
    """
    world = profile.tasks_per_node * profile.nodes
    out = []
    for label, cfg in cells:
        tc = cfg.train
        if tc.batch_size % world:
            out.append(
                f"{label}: train.batch_size: {tc.batch_size} is not divisible by the "
                f"{world} processes of the profile's tasks_per_node x nodes = "
                f"{profile.tasks_per_node} x {profile.nodes} (got {tc.batch_size})"
            )
        if tc.device == "cuda" and not profile.gpus_per_node:
            out.append(
                f"{label}: train.device: 'cuda' needs a GPU, but the profile's "
                f"gpus_per_node is 0 (got 'cuda')"
            )
        if tc.sync_bn and world > 1 and not profile.gpus_per_node:
            out.append(
                f"{label}: train.sync_bn: SyncBatchNorm needs CUDA, but the profile's "
                f"gpus_per_node is 0 (got True)"
            )
    return out


def _mem(mem_gb: float) -> str:
    """sbatch's ``--mem``: whole GB as ``64GB``, fractions in MB (as submitit's own)."""
    return f"{int(mem_gb)}GB" if mem_gb == int(mem_gb) else f"{round(mem_gb * 1024)}MB"


def sbatch_parameters(profile: Profile) -> dict[str, Any]:
    """Keyword arguments for ``submitit.SlurmExecutor.update_parameters``.

    The signal is written as an explicit ``--signal`` because submitit otherwise takes
    it from ``SUBMITIT_PREEMPT_SIGNAL`` in the *submitter's* environment at import
    time; the same variable is exported in the job so that submitit there installs
    its handler for that signal. Thread counts are exported from the job's own CPU
    allocation so a job never inherits the submitter's; the profile's setup lines
    come after them and may override them.
    """
    params: dict[str, Any] = {
        "partition": profile.partition,
        "account": profile.account,
        "qos": profile.qos,
        "constraint": profile.constraint,
        "nodes": profile.nodes,
        # Asked for only when wanted: some clusters reject a GPU request of 0.
        "gpus_per_node": profile.gpus_per_node or None,
        "ntasks_per_node": profile.tasks_per_node,
        "cpus_per_task": profile.cpus_per_task,
        "mem": None if profile.mem_gb is None else _mem(profile.mem_gb),
        "time": profile.time,
        "array_parallelism": profile.array_parallelism,
        "signal_delay_s": profile.signal_delay_s,
        "setup": [
            f"export SUBMITIT_PREEMPT_SIGNAL={profile.signal}",
            "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
            "export MKL_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
            *profile.setup,
        ],
        "additional_parameters": {k: v for k, v in profile.sbatch.items() if v is not False}
        | {"signal": f"{profile.signal}@{profile.signal_delay_s}"},
        "stderr_to_stdout": True,
        # Several tasks (DDP): one that dies ends the others, which would otherwise wait
        # in a collective until the process group's timeout.
        "srun_args": ["--kill-on-bad-exit=1"]
        if profile.nodes * profile.tasks_per_node > 1
        else None,
    }
    return {k: v for k, v in params.items() if v is not None}


__all__ = [
    "BUNDLED",
    "Profile",
    "ProfileError",
    "bundled_profiles",
    "check_cells",
    "load_profile",
    "sbatch_parameters",
]
