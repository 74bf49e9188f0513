"""The project's import graph: no circles, and the rooms of sagan/ in their layers.

Every ``import`` and ``from ... import`` of a project module counts, at the top of a
file or inside a function (a lazy import is still an arrow a reader has to follow).
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sagan", "ablations", "slurm", "reports")


def _modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            reached = set()
            for t in targets:
                # the deepest project module the name reaches: `from pkg import mod`
                # names the module mod, `from pkg import name` the package (its
                # __init__, whose own imports are arrows of the package)
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t:
                    reached.add(t)
            if isinstance(node, ast.ImportFrom) and any(
                t.startswith(node.module + ".") for t in reached
            ):
                reached.discard(node.module)  # only submodules named: not the package
            deps |= reached - {name}
        graph[name] = deps
    return graph


GRAPH = _graph()


def test_no_module_imports_one_that_leads_back_to_it():
    """Tarjan's strongly connected components: every one must be a single module."""
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert circles == [], f"modules that import each other, directly or around a circle: {circles}"


@pytest.mark.parametrize(
    "room, may_import",
    [
        ("sagan.nets", {"sagan.config"}),
        ("sagan.data", {"sagan.config"}),
        # metrics reads checkpoints and status files for final scoring, and the
        # machine and precision flags: the training modules that import no metrics
        (
            "sagan.metrics",
            {
                "sagan.config",
                "sagan.nets",
                "sagan.data",
                "sagan.training.checkpoint",
                "sagan.training.rundir",
                "sagan.training.machine",
                "sagan.training.precision",
            },
        ),
        (
            "sagan.training",
            {"sagan.config", "sagan.nets", "sagan.data", "sagan.metrics"},
        ),
    ],
)
def test_each_room_of_sagan_imports_only_the_rooms_below_it(room, may_import):
    allowed = may_import | {room}
    wrong = {
        m: sorted(
            d
            for d in deps
            if d.startswith("sagan") and not any(d == a or d.startswith(a + ".") for a in allowed)
        )
        for m, deps in GRAPH.items()
        if m == room or m.startswith(room + ".")
    }
    assert {m: d for m, d in wrong.items() if d} == {}


def test_the_core_knows_nothing_of_grids_slurm_or_reports():
    upward = {
        m: sorted(d for d in deps if d.split(".")[0] in {"ablations", "slurm", "reports"})
        for m, deps in GRAPH.items()
        if m.split(".")[0] == "sagan"
    }
    assert {m: d for m, d in upward.items() if d} == {}
    below = {
        m: sorted(d for d in deps if d.startswith("slurm"))
        for m, deps in GRAPH.items()
        if m.startswith("ablations") and m not in {"ablations.run", "ablations.status"}
    }
    assert {m: d for m, d in below.items() if d} == {}, "only the commands may name slurm"
