"""SLURM job states as the planner sees them, read through a fake sacct and squeue.

The fakes are shell scripts put first on PATH: the code under test runs them as the
real subprocesses it runs on a cluster, and reads what they print. No cluster needed.
"""

import os
from types import SimpleNamespace

import pytest
import yaml

from ablations import run as run_cli
from ablations.grid import load_grid
from ablations.store import RunStore, write_job
from sagan.training import rundir
from slurm import jobs

HEADER = "JobID|State|ExitCode|Reason"


@pytest.fixture
def scheduler(tmp_path, monkeypatch):
    """Set what the fake ``sacct`` and ``squeue`` print: ``set(sacct=..., squeue=...)``.

    ``squeue=None`` answers as squeue does for jobs it does not know (exit 1).
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    state = tmp_path / "scheduler"
    state.mkdir()
    (bin_dir / "sacct").write_text(f"#!/bin/sh\ncat {state}/sacct\n")
    (bin_dir / "squeue").write_text(
        "#!/bin/sh\n"
        f"[ -f {state}/squeue_sleep ] && sleep $(cat {state}/squeue_sleep)\n"
        f"if [ -f {state}/squeue ]; then cat {state}/squeue; exit 0; fi\n"
        "echo 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n"
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    def set_(sacct: str = "", squeue: str | None = None, squeue_sleep: float | None = None):
        (state / "sacct").write_text(f"{HEADER}\n{sacct}")
        (state / "squeue").unlink(missing_ok=True)
        if squeue is not None:
            (state / "squeue").write_text(squeue)
        if squeue_sleep is not None:
            (state / "squeue_sleep").write_text(str(squeue_sleep))

    return set_


GRID = {
    "name": "mini",
    "base": {
        "data": {"name": "synthetic", "resolution": 32, "synthetic": {"n_images": 64}},
        "model": {"ch": 8, "z_dim": 8},
        "train": {"steps": 6, "batch_size": 4, "device": "cpu"},
        "eval": {"metrics": []},
    },
    "seeds": [0],
}


@pytest.fixture
def cell_dir(tmp_path):
    """A grid's one cell, its run directory holding a job record of an old submission."""
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(GRID))
    cell = load_grid(path).cells[0]
    store = RunStore(tmp_path / "runs")
    d = store.run_dir(cell.run_id)
    d.mkdir(parents=True)
    write_job(d, {"executor": "slurm", "job_id": "77_0", "submitted_at": 0.0, "log": "x.log"})
    rundir.write_status(d, {"state": "running", "step": 2, "steps": 6, "attempts": 1})
    return cell, store, d


def _args(**kw):
    return SimpleNamespace(
        **{"force": False, "rescore": False, "retry_failed": False, "max_attempts": 3, **kw}
    )


def test_a_preempted_job_is_ended_and_its_run_is_resubmitted_as_interrupted(scheduler, cell_dir):
    # PreemptMode=CANCEL: SLURM does not requeue it, so nothing will ever run it again.
    cell, store, d = cell_dir
    scheduler(sacct="77_0|PREEMPTED|0:0|None\n")
    view = jobs.views([d])[d]
    assert view.state == "preempted" and not view.live
    assert jobs.settle(d, view) == "interrupted"
    status = rundir.read_status(d)
    assert status["state"] == "interrupted" and status.get("failures", 0) == 0
    assert run_cli.plan(cell, store, _args(), None).action is run_cli.Action.RESUME
    assert run_cli.force_refusals([cell], store, {}) == []


def test_a_preempted_job_that_squeue_shows_requeued_is_followed(scheduler, cell_dir):
    _, _, d = cell_dir
    scheduler(sacct="77_0|PREEMPTED|0:0|None\n", squeue="77_0|PENDING\n")
    view = jobs.views([d])[d]
    assert view.live and view.state == "queued"


def test_a_job_sacct_lacks_but_squeue_lists_is_alive_not_vanished(scheduler, cell_dir):
    # slurmdbd restarting, or accounting lagging the controller by more than the grace.
    _, _, d = cell_dir
    scheduler(sacct="", squeue="77_0|RUNNING\n76_1|PENDING\n")
    view = jobs.views([d], grace_s=1.0)[d]
    assert view.live and view.state == "running"
    assert jobs.settle(d, view) == "running"
    assert rundir.read_status(d).get("failures", 0) == 0


def test_a_job_neither_sacct_nor_squeue_knows_is_vanished(scheduler, cell_dir):
    _, _, d = cell_dir
    scheduler(sacct="", squeue=None)
    view = jobs.views([d], grace_s=1.0)[d]
    assert view.state == "vanished" and not view.live


def test_a_squeue_that_does_not_answer_is_an_error_not_a_vanished_job(scheduler, cell_dir):
    _, _, d = cell_dir
    scheduler(sacct="", squeue="", squeue_sleep=5)
    with pytest.raises(RuntimeError, match="squeue did not answer within 1s"):
        jobs.views([d], grace_s=1.0, timeout_s=1.0)


def test_a_timed_out_job_is_an_interruption_and_a_second_one_without_progress_a_failure(
    scheduler, cell_dir
):
    cell, store, d = cell_dir
    (d / "checkpoints").mkdir()
    (d / "checkpoints" / "ckpt-000000002.pt").write_bytes(b"")  # only its step is read
    scheduler(sacct="77_0|TIMEOUT|0:0|TimeLimit\n")
    assert jobs.settle(d, jobs.views([d])[d]) == "interrupted"
    status = rundir.read_status(d)
    assert status.get("failures", 0) == 0 and status["slurm_state"] == "TIMEOUT"
    assert run_cli.plan(cell, store, _args(), None).action is run_cli.Action.RESUME

    # Resubmitted, and timed out again before it could write a checkpoint past step 2.
    write_job(d, {"executor": "slurm", "job_id": "78_0", "submitted_at": 0.0, "log": "y.log"})
    rundir.write_status(d, {**rundir.read_status(d), "state": "running", "attempts": 2})
    scheduler(sacct="78_0|TIMEOUT|0:0|TimeLimit\n")
    assert jobs.settle(d, jobs.views([d])[d]) == "failed"
    status = rundir.read_status(d)
    assert status["failures"] == 1
    assert "no progress between two interruptions" in status["error"]
    assert "G step 2" in status["error"]


def test_a_timed_out_job_after_progress_is_an_interruption_again(scheduler, cell_dir):
    _, _, d = cell_dir
    (d / "checkpoints").mkdir()
    (d / "checkpoints" / "ckpt-000000002.pt").write_bytes(b"")
    scheduler(sacct="77_0|TIMEOUT|0:0|TimeLimit\n")
    assert jobs.settle(d, jobs.views([d])[d]) == "interrupted"
    (d / "checkpoints" / "ckpt-000000004.pt").write_bytes(b"")
    write_job(d, {"executor": "slurm", "job_id": "78_0", "submitted_at": 0.0, "log": "y.log"})
    rundir.write_status(d, {**rundir.read_status(d), "state": "running", "attempts": 2})
    scheduler(sacct="78_0|TIMEOUT|0:0|TimeLimit\n")
    assert jobs.settle(d, jobs.views([d])[d]) == "interrupted"
    assert rundir.read_status(d).get("failures", 0) == 0


def test_status_says_what_uses_up_max_requeues_under_slurm_jobs(
    scheduler, cell_dir, tmp_path, capsys
):
    from ablations import status as status_cli

    scheduler(sacct="77_0|RUNNING|0:0|None\n")
    assert status_cli.main([str(tmp_path / "mini.yaml"), "--out", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "max_requeues counts timeouts only" in out
    assert "min(0.8 x time, time - 10 min)" in out
