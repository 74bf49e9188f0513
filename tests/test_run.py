"""The grid runner: idempotence, resume, locks, dry runs, and the smoke grid end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ablations import run as run_cli
from ablations import status as status_cli
from ablations.grid import load_grid
from ablations.store import RunBusy, RunLock, RunStore
from sagan.training import rundir
from sagan.training.checkpoint import list_checkpoints

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
    assert (
        run_cli.plan(cell, store, run_cli.parse_args([str(grid_file)])).action
        is run_cli.Action.RESUME
    )
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
        # The store does not rewrite its config under it...
        with pytest.raises(RunBusy, match="is being trained by host"):
            store.prepare(cell)
        # ...and a worker launched directly refuses it.
        proc = subprocess.run(
            [sys.executable, "-m", "ablations.worker", str(store.run_dir(cell.run_id))],
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
    swd = []
    for c in g.cells:
        st = store.state(c)
        assert st.state == "done" and st.step == 30, c.label()
        records = rundir.read_jsonl(store.run_dir(c.run_id) / "eval.jsonl")
        # Monitoring at steps 15 and 30, then the final score of record.
        assert [(r["step"], r["origin"]) for r in records] == [
            (15, "train"),
            (30, "train"),
            (30, "final"),
        ]
        final = records[-1]
        assert 0.0 <= final["metrics"]["consistency"] <= 1.0 and final["metrics"]["swd"] > 0
        assert final["protocol"]["n_generated"] == 256
        swd.append(final["metrics"]["swd"])
    # The smoke grid's numbers differ between cells (no column of equal values).
    assert len({round(v, 3) for v in swd}) == 8
    table = proc.stdout.split("\n\n")[-1]
    assert table.count("done") == 8 and "SWD" in table
    report = out / "report" / "index.html"
    assert f"report: {report}" in proc.stdout and report.is_file()
    assert (out / "report" / "results.csv").read_text().count("\n") == 1 + 8 * 3
    # The grid's table, as machines read it: one row per cell, the cell's one seed.
    table = pd.read_csv(out / "report" / "table-smoke-1.csv")
    assert sorted(table["mean"]) == pytest.approx(sorted(swd), rel=1e-12)
    assert set(table["n"]) == {1} and set(table["value_kind"]) == {"final"}
    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "8 selected, 0 to train" in rerun.stdout


# --- the store under concurrency -------------------------------------------------------

HOLD = """
import sys, time
from ablations.store import RunLock
lock = RunLock(sys.argv[1])
assert lock.acquire()
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def held_elsewhere():
    """Hold a run's lock from another process, as a worker on another node would."""
    procs = []

    def hold(run_dir):
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(run_dir)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def test_probing_a_lock_never_takes_it(grid_file, held_elsewhere, monkeypatch):
    from ablations import store as store_mod

    d = RunStore(grid_file.parent / "runs").run_dir(load_grid(grid_file).cells[0].run_id)
    taken = []
    real = store_mod._try_lock
    monkeypatch.setattr(store_mod, "_try_lock", lambda fd: taken.append(fd) or real(fd))
    assert not store_mod.is_locked(d)  # no lock file yet
    d.mkdir(parents=True)
    (d / ".lock").write_text("")
    assert not store_mod.is_locked(d)
    assert taken == []  # a worker starting during the probe finds its run free
    proc = held_elsewhere(d)
    assert store_mod.is_locked(d) and taken == []
    assert store_mod.holder(d).endswith(f"pid {proc.pid}")
    proc.kill()
    proc.wait()
    assert not store_mod.is_locked(d)


def test_force_refuses_to_move_a_run_being_trained(grid_file, held_elsewhere, capsys):
    assert run_cli.main([str(grid_file), "--only", "attention=none"]) == 0
    store = RunStore(grid_file.parent / "runs")
    cell = next(c for c in load_grid(grid_file).cells if c.levels["attention"] == "none")
    proc = held_elsewhere(store.run_dir(cell.run_id))
    capsys.readouterr()
    assert run_cli.main([str(grid_file), "--only", "attention=none", "--force"]) == 2
    err = capsys.readouterr().err
    assert f"--force: attention=none,seed=0 ({cell.run_id}) is being trained by" in err
    assert f"pid {proc.pid}" in err and "nothing was moved or started" in err
    assert store.state(cell).state == "running"  # still there, still held
    assert not (store.out / ".trash").exists()


def test_a_cell_claimed_by_another_process_fails_the_command(grid_file, held_elsewhere, capsys):
    store = RunStore(grid_file.parent / "runs")
    cells = load_grid(grid_file).cells
    proc = held_elsewhere(store.run_dir(cells[0].run_id))
    assert run_cli.main([str(grid_file)]) == 1
    captured = capsys.readouterr()
    assert "1 to train" in captured.out  # the held one is planned as running elsewhere
    busy = [ln for ln in captured.err.splitlines() if ln.startswith("busy: ")]
    assert busy == [
        f"busy: {cells[0].label()} ({cells[0].run_id}) is being trained by "
        f"host {os.uname().nodename}, pid {proc.pid}; not trained here"
    ]
    assert store.state(cells[1]).state == "done"


def test_a_run_claimed_between_plan_and_start_is_reported_busy(grid_file, capsys, monkeypatch):
    """The BUSY race: the plan saw the run free, then another process claimed it."""
    store_cls = RunStore
    cells = load_grid(grid_file).cells
    lock = RunLock(store_cls(grid_file.parent / "runs").run_dir(cells[0].run_id))
    real_prepare = store_cls.prepare

    def prepare_after_a_claim(self, cell):
        if cell.run_id == cells[0].run_id:
            assert lock.acquire()  # another process gets there first
        return real_prepare(self, cell)

    monkeypatch.setattr(store_cls, "prepare", prepare_after_a_claim)
    try:
        assert run_cli.main([str(grid_file)]) == 1
    finally:
        lock.release()
    err = capsys.readouterr().err
    assert f"busy: {cells[0].label()} ({cells[0].run_id})" in err
    assert "untrained" not in err and "failed" not in err


def test_a_cell_whose_worker_refuses_to_resume_fails_the_command(grid_file, capsys):
    from sagan.train import train

    store = RunStore(grid_file.parent / "runs")
    cell = next(c for c in load_grid(grid_file).cells if c.levels["attention"] == "none")
    d = store.run_dir(cell.run_id)
    other = cell.config.model_copy(
        update={"train": cell.config.train.model_copy(update={"steps": 2, "lr_d": 1e-3})}
    )
    train(other, d, progress=False)  # a checkpoint computed from another config
    rundir.write_status(d, {**rundir.read_status(d), "state": "running"})
    capsys.readouterr()
    assert run_cli.main([str(grid_file), "--only", "attention=none"]) == 1
    err = capsys.readouterr().err
    assert f"untrained: {cell.label()} ({cell.run_id}) is interrupted: the worker exited 2" in err
    assert "train.lr_d" in (d / "train.log").read_text()


def test_only_failures_count_against_max_attempts(grid_file):
    store = RunStore(grid_file.parent / "runs")
    cell = load_grid(grid_file).cells[0]
    d = store.run_dir(cell.run_id)
    d.mkdir(parents=True)
    # Preempted and requeued four times, failed once.
    rundir.write_status(d, {"state": "failed", "step": 2, "attempts": 5, "failures": 1})
    args = run_cli.parse_args([str(grid_file), "--max-attempts", "3"])
    assert str(run_cli.plan(cell, store, args)) == "skip (failed 1x; --retry-failed)"
    args = run_cli.parse_args([str(grid_file), "--max-attempts", "3", "--retry-failed"])
    assert run_cli.plan(cell, store, args).action is run_cli.Action.RETRY
    rundir.write_status(d, {"state": "failed", "step": 2, "attempts": 5, "failures": 3})
    assert str(run_cli.plan(cell, store, args)) == "skip (failed 3x, the limit)"


@pytest.mark.parametrize("flag", ["--jobs", "--max-attempts"])
@pytest.mark.parametrize("value", ["-1", "0", "two"])
def test_bad_counts_are_refused_before_anything_starts(grid_file, flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli.main([str(grid_file), flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: " in err and value in err.splitlines()[-1]
    assert not (grid_file.parent / "runs").exists()


def _kill_the_worker_once_training(d, attempt=1, timeout_s=60.0):
    """SIGKILL the worker of run ``d`` (not the executor) once its ``attempt``-th start
    has said in train.log that it trains (its state is written before that line)."""
    import signal
    import time

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        job = json.loads((d / "job.json").read_text()) if (d / "job.json").is_file() else None
        log = (d / "train.log").read_text() if (d / "train.log").is_file() else ""
        started = log.count("training from G step") >= attempt
        if job and started and rundir.read_status(d).get("state") == "running":
            os.kill(int(job["job_id"].rsplit(":", 1)[1]), signal.SIGKILL)
            return
        time.sleep(0.02)
    raise AssertionError(f"the worker of {d} never started training")


def test_a_worker_killed_alone_is_a_failure_bounded_by_max_attempts(grid_file, capsys):
    import threading

    long = dict(GRID, base={**GRID["base"], "train": {**GRID["base"]["train"], "steps": 100000}})
    grid_file.write_text(yaml.safe_dump(long, sort_keys=False))
    cell = next(c for c in load_grid(grid_file).cells if c.levels["attention"] == "none")
    d = RunStore(grid_file.parent / "runs").run_dir(cell.run_id)
    argv = [str(grid_file), "--only", "attention=none", "--no-report", "--max-attempts", "2"]
    for attempt in (1, 2):
        rc: list[int] = []
        t = threading.Thread(
            target=lambda rc=rc: rc.append(run_cli.main([*argv, "--retry-failed"]))
        )
        t.start()
        _kill_the_worker_once_training(d, attempt)
        t.join(60)
        assert rc == [1]
        status = rundir.read_status(d)
        assert (status["state"], status["failures"], status["attempts"]) == (
            "failed",
            attempt,
            attempt,
        )
        assert "killed by SIGKILL" in status["error"] and str(d / "train.log") in status["error"]
        assert any("training from G step" in ln for ln in status["log_tail"])
    capsys.readouterr()
    job = (d / "job.json").read_text()
    assert run_cli.main(argv + ["--retry-failed"]) == 1
    assert "0 to train" in capsys.readouterr().out
    assert (d / "job.json").read_text() == job, "not started a third time"


def test_a_worker_ended_by_ctrl_c_is_an_interruption_not_a_failure(tmp_path):
    import signal

    from ablations.executors import record_dead_worker

    rundir.write_status(tmp_path, {"state": "interrupted", "step": 2, "attempts": 1})
    # Caught by the Ctrl-C while importing, before its attempt began.
    assert not record_dead_worker(tmp_path, -signal.SIGINT, attempts_before=1)
    assert rundir.read_status(tmp_path)["state"] == "interrupted"
    assert record_dead_worker(tmp_path, -signal.SIGKILL, attempts_before=1)
    status = rundir.read_status(tmp_path)
    assert (status["state"], status["failures"], status["attempts"]) == ("failed", 1, 2)
