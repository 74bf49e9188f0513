"""The grid runner: idempotence, resume, locks, dry runs, and the smoke grid end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ablations import run as run_cli
from ablations import status as status_cli
from ablations.grid import load_grid
from ablations.store import RunLock, RunStore
from sagan import rundir
from sagan.checkpoint import list_checkpoints

REPO = Path(__file__).resolve().parents[1]

GRID = {
    "name": "mini",
    "base": {
        "data": {
            "name": "synthetic",
            "resolution": 32,
            "synthetic": {"n_images": 64, "n_classes": 2},
        },
        "model": {"ch": 8, "z_dim": 8},
        "train": {
            "steps": 6,
            "batch_size": 4,
            "log_every": 2,
            "ckpt_every": 2,
            "sample_every": 6,
            "n_samples": 4,
            "device": "cpu",
        },
        "eval": {"metrics": []},
    },
    "axes": {"attention": {"none": {"model.attn_g": [], "model.attn_d": []}, "feat16": {}}},
    "seeds": [0],
}


@pytest.fixture
def grid_file(tmp_path):
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(GRID, sort_keys=False))
    return path


def test_run_trains_every_cell_then_a_rerun_starts_nothing(grid_file, capsys):
    assert run_cli.main([str(grid_file), "--jobs", "2"]) == 0
    store = RunStore(grid_file.parent / "runs")
    g = load_grid(grid_file)
    assert [store.state(c).state for c in g.cells] == ["done", "done"]
    index = json.loads((store.out / "grid-mini.json").read_text())
    assert {c["run_id"] for c in index["cells"]} == {c.run_id for c in g.cells}
    mtimes = {
        c.run_id: (store.run_dir(c.run_id) / "status.json").stat().st_mtime_ns for c in g.cells
    }
    capsys.readouterr()
    assert run_cli.main([str(grid_file)]) == 0
    out = capsys.readouterr().out
    assert "2 selected, 0 to train" in out
    assert mtimes == {
        c.run_id: (store.run_dir(c.run_id) / "status.json").stat().st_mtime_ns for c in g.cells
    }
    status_cli.main([str(grid_file)])
    table = capsys.readouterr().out
    assert table.count("done") == 2 and "6/6" in table


def test_interrupted_cell_resumes_from_its_checkpoint(grid_file):
    store = RunStore(grid_file.parent / "runs")
    cell = load_grid(grid_file).cells[0]
    # Train to step 4 as a shorter run, then mark it as killed mid-way.
    short = cell.config.model_copy(
        update={"train": cell.config.train.model_copy(update={"steps": 4})}
    )
    from sagan.train import train

    train(short, store.run_dir(cell.run_id), progress=False)
    st = rundir.read_status(store.run_dir(cell.run_id))
    rundir.write_status(store.run_dir(cell.run_id), {**st, "state": "running"})
    assert store.state(cell).state == "interrupted"
    assert "resume" in run_cli.plan(cell, store, run_cli.parse_args([str(grid_file)]))
    assert run_cli.main([str(grid_file), "--only", "attention=none"]) == 0
    st = store.state(cell)
    assert st.state == "done" and st.step == 6 and st.attempts == 2
    assert (
        "resuming from ckpt-000000004.pt" in (store.run_dir(cell.run_id) / "train.log").read_text()
    )


def test_locked_run_is_not_trained_twice(grid_file, capsys):
    store = RunStore(grid_file.parent / "runs")
    cell = load_grid(grid_file).cells[0]
    lock = RunLock(store.run_dir(cell.run_id))
    assert lock.acquire()
    try:
        assert not RunLock(store.run_dir(cell.run_id)).acquire()
        assert store.state(cell).state == "running"
        assert run_cli.main([str(grid_file), "--dry-run"]) == 0
        assert "skip (running elsewhere)" in capsys.readouterr().out
        # Even a worker launched directly refuses a claimed run.
        proc = subprocess.run(
            [sys.executable, "-m", "ablations.worker", str(store.prepare(cell))],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 3 and "already being trained" in proc.stderr
    finally:
        lock.release()
    assert not list_checkpoints(store.run_dir(cell.run_id))


def test_dry_run_prints_the_plan_and_starts_nothing(grid_file, capsys):
    assert run_cli.main([str(grid_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("grid mini: 2 cells, 2 selected, 2 to train")
    assert lines[1].split() == ["attention", "seed", "run_id", "state", "step", "action"]
    assert all(row.split()[-1] == "run" for row in lines[3:])
    assert not (grid_file.parent / "runs").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_failed_cell_does_not_stop_the_others_and_is_retried_on_request(grid_file, capsys):
    g = dict(
        GRID,
        axes={
            "attention": {"none": {"model.attn_g": [], "model.attn_d": []}, "feat16": {}},
        },
    )
    # A device that is not there fails in the run (a compute node may have one), not at validation.
    g["axes"]["data"] = {"ok": {}, "tiny": {"train.device": "cuda", "data.synthetic.n_images": 32}}
    grid_file.write_text(yaml.safe_dump(g, sort_keys=False))
    assert run_cli.main([str(grid_file), "--jobs", "2"]) == 1
    captured = capsys.readouterr()
    assert captured.out.count("done") >= 2
    assert "failed: attention=none,data=tiny" in captured.err
    store = RunStore(grid_file.parent / "runs")
    states = {c.label(): store.state(c) for c in load_grid(grid_file).cells}
    assert sum(s.state == "done" for s in states.values()) == 2
    assert sum(s.state == "failed" for s in states.values()) == 2
    assert run_cli.main([str(grid_file), "--dry-run"]) == 0
    assert "skip (failed 1x; --retry-failed)" in capsys.readouterr().out
    assert run_cli.main([str(grid_file), "--dry-run", "--retry-failed", "--max-attempts", "1"]) == 0
    assert "skip (failed 1x, the limit)" in capsys.readouterr().out


def test_force_moves_the_old_run_aside(grid_file):
    assert run_cli.main([str(grid_file), "--only", "attention=none"]) == 0
    assert run_cli.main([str(grid_file), "--only", "attention=none", "--force"]) == 0
    trash = list((grid_file.parent / "runs" / ".trash").iterdir())
    assert len(trash) == 1 and (trash[0] / "status.json").is_file()


def test_bad_grid_is_one_clear_message_and_nothing_starts(grid_file, capsys):
    g = dict(GRID, axes={"attention": {"feat64": {"model.attn_g": [64]}}})
    grid_file.write_text(yaml.safe_dump(g))
    assert run_cli.main([str(grid_file)]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: ")
        and "axes.attention.feat64: model.attn_g: 64 is not a feature-map size" in err
    )
    assert len(err.strip().splitlines()) == 1
    assert not (grid_file.parent / "runs").exists()


def test_unknown_grid_name_lists_the_bundled_ones(capsys):
    assert run_cli.main(["no-such-grid"]) == 2
    assert "bundled grids: " in capsys.readouterr().err


def test_missing_data_or_weights_stop_the_grid_before_anything_starts(
    grid_file, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no weights there
    g = dict(GRID)
    g["base"] = {**GRID["base"], "eval": {"metrics": ["fid"], "n_samples": 10}}
    g["axes"] = {
        "data": {
            "synth": {},
            "cifar": {
                "data.name": "cifar10",
                "data.root": str(tmp_path / "nowhere"),
                "train.device": "cpu",
            },
        }
    }
    grid_file.write_text(yaml.safe_dump(g, sort_keys=False))
    assert run_cli.main([str(grid_file)]) == 2
    err = capsys.readouterr().err
    assert "CIFAR-10 not found" in err and "python -m sagan.prefetch --data cifar10" in err
    assert "python -m sagan.prefetch --weights" in err
    assert err.rstrip().endswith("nothing was started.")
    assert not any((grid_file.parent / "runs").glob("*/status.json"))


@pytest.mark.slow
def test_smoke_grid_end_to_end(tmp_path):
    """The README's main job: the bundled smoke grid, as a user runs it."""
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "ablations.run", "smoke", "--out", str(out), "--jobs", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # also without `pip install -e .`
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    g = load_grid(REPO / "ablations" / "grids" / "smoke.yaml")
    store = RunStore(out)
    assert len(g.cells) == 8
    for c in g.cells:
        st = store.state(c)
        assert st.state == "done" and st.step == 30, c.label()
        record = rundir.read_jsonl(store.run_dir(c.run_id) / "eval.jsonl")[-1]
        assert record["step"] == 30 and 0.0 <= record["metrics"]["consistency"] <= 1.0
        assert record["protocol"]["n_generated"] == 256
    table = proc.stdout.split("\n\n")[-1]
    assert table.count("done") == 8 and "consist." in table
    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "8 selected, 0 to train" in rerun.stdout
