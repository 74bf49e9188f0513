"""What a grid costs before it runs: ``ablations.run GRID --dry-run --cost-from bench.json``.

A cell's training time is its remaining G steps times the median ms per step that
``python -m sagan.bench`` measured for the same step: the same resolution, width,
attention placements, batch, D steps per G step, precision, memory format,
compilation and attention kernel. The benchmark file can come from the target
machine (run ``sagan.bench --out`` on one of its GPUs), or ``--cost`` measures each
distinct cell here with a few steps. Only training steps are counted: evaluation and
scoring come on top.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from ablations.grid import Cell
from sagan.benchmarks.step import STEP_FIELDS as MATCH
from sagan.benchmarks.step import step_fields
from sagan.config import LEGACY_DEFAULTS, to_yaml

# What a benchmark case timed before it recorded these fields: what the config keys
# meant before they existed.
BEFORE_FIELDS = {
    "compile": LEGACY_DEFAULTS["train.compile"],
    "attention_kernel": LEGACY_DEFAULTS["model.attention_kernel"],
}


class CostError(ValueError):
    """An unreadable benchmark file, phrased as ``FILE: what is wrong``."""


def step_key(cell: Cell) -> tuple:
    """The cell's step as a benchmark case records it (:func:`sagan.benchmarks.step.step_fields`)."""
    return _case_key(step_fields(cell.config))


def _case_key(case: dict[str, Any]) -> tuple:
    return tuple(tuple(case[k]) if isinstance(case[k], list) else case[k] for k in MATCH)


def load_bench(path: str | Path) -> tuple[dict[tuple, float], str]:
    """``{step key: ms per step}`` and the machine, from a ``sagan.bench --out`` file.

    Raises:
        CostError: no such file, not JSON, or a case without the fields it needs.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise CostError(f"{path}: cannot read it ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise CostError(f"{path}: not JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise CostError(f"{path}: no 'cases' list: is this a `python -m sagan.bench --out` file?")
    table = {}
    for i, case in enumerate(data["cases"]):
        if isinstance(case, dict):
            # Files written before these fields existed timed what their defaults do.
            for k, v in BEFORE_FIELDS.items():
                case.setdefault(k, v)
        missing = [k for k in (*MATCH, "ms_per_step") if k not in case]
        if missing:
            raise CostError(f"{path}: cases[{i}] lacks {', '.join(missing)}")
        table.setdefault(_case_key(case), float(case["ms_per_step"]))
    from sagan.training.machine import describe

    return table, describe(data.get("machine", {})) or "an unnamed machine"


def measure(cells: list[Cell], steps: int = 3) -> tuple[dict[tuple, float], str]:
    """Time each distinct step of ``cells`` here, with ``sagan.bench``'s timing."""
    from sagan.benchmarks.step import run_cases
    from sagan.training.machine import describe

    table, machine = {}, ""
    with tempfile.TemporaryDirectory() as tmp:
        for i, cell in enumerate(cells):
            key = step_key(cell)
            if key in table:
                continue
            path = Path(tmp) / f"cell{i}.yaml"
            path.write_text(to_yaml(cell.config))
            (case,) = run_cases(str(path), [[]], steps, warmup=1)  # one case: the config as is
            table[key] = case["ms_per_step"]
            machine = describe(case["machine"])
    return table, machine


def estimate(
    cells: list[Cell], done_steps: dict[str, int], table: dict[tuple, float]
) -> dict[str, float | None]:
    """Seconds of training each cell still needs; None where no case matches its step."""
    out: dict[str, float | None] = {}
    for cell in cells:
        ms = table.get(step_key(cell))
        left = max(0, cell.config.train.steps - done_steps.get(cell.run_id, 0))
        out[cell.run_id] = None if ms is None else left * ms / 1000
    return out


def hours(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 3600:.3g}"


__all__ = ["CostError", "estimate", "hours", "load_bench", "measure", "step_key"]
