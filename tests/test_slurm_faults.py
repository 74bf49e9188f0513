"""Cluster faults against the real local cluster (slurm/local_cluster.sh): refused
submissions, a crash between sbatch and job.json, and preemption by a job of a
higher-priority partition, with SLURM requeueing the preempted job or cancelling it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ablations.grid import load_grid
from ablations.store import read_job
from sagan.training import rundir
from sagan.training.checkpoint import list_checkpoints
from tests.test_slurm import (  # noqa: F401 - the fixtures apply to this module too
    REPO,
    assert_same_run,
    cancel_leftovers,
    cli,
    cluster,
    job_of,
    on_slurm,
    run_dirs,
    wait_for,
    write_grid,
)

pytestmark = pytest.mark.slow


def squeue_names(prefix: str) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%j|%i"], capture_output=True, text=True, check=True
    ).stdout
    return [ln for ln in out.splitlines() if ln.startswith(prefix)]


def sacct_row(job: str, fields: str) -> list[str]:
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", job, "-o", fields],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.splitlines()


def cli_faulty(*args: str, fault: str, cwd: Path, timeout: float = 300):
    """:func:`cli` with ``SAGAN_FAULT=fault`` (sagan.training.faults), which the jobs it submits
    inherit (sbatch exports the environment)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", SAGAN_FAULT=fault)
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, env=env,
    )  # fmt: skip


def test_an_unknown_partition_is_one_error_naming_the_key_and_slurms_words(tmp_path):
    grid = write_grid(tmp_path, "nopart", ["ttur"], steps=4)
    r = cli(*on_slurm(grid, "slurm.partition=nope"), cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "sbatch refused the training array of 1 cell(s)" in r.stderr
    assert "invalid partition specified: nope" in r.stderr, r.stderr
    assert "profile key partition = 'nope'" in r.stderr and "command line" in r.stderr
    assert "nothing was submitted." in r.stderr
    (d,) = run_dirs(tmp_path / "runs")
    assert not (d / "job.json").exists()
    assert not list((tmp_path / "runs/.slurm/journal").glob("*.json"))
    assert not squeue_names("sagan-nopart")


def test_a_refused_scoring_array_cancels_the_training_array_accepted_before_it(tmp_path):
    # One cell trained (here, locally) that owes its final scores, one to train.
    grid = write_grid(tmp_path, "mixed", ["ttur"], steps=4)
    text = grid.read_text() + "final: {metrics: [consistency], n_samples: 16}\n"
    grid.write_text(text)
    r = cli("ablations.run", str(grid), "--out", "runs", "--no-report", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    grid.write_text(
        text.replace("n_samples: 16", "n_samples: 24").replace(
            "  lr:\n", "  lr:\n    equal: {train.lr_g: 1.0e-4, train.lr_d: 1.0e-4}\n"
        )
    )
    # Above the partition's MaxTime of a day: sbatch refuses (EnforcePartLimits=ALL).
    r = cli(*on_slurm(grid, "slurm.score_time=2000", "--no-report"), cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "1 to train, 1 to score" in r.stdout
    assert "sbatch refused the scoring array of 1 cell(s)" in r.stderr
    assert "Requested time limit is invalid" in r.stderr
    assert "profile key score_time = 2000" in r.stderr
    assert "accepted before it, was cancelled: nothing was submitted." in r.stderr
    train_job = r.stderr.split("accepted before it")[0].split("job ")[-1].rstrip(", ")
    for d in run_dirs(tmp_path / "runs"):  # the trained cell's names its local worker
        assert (read_job(d) or {}).get("executor") != "slurm", "no job.json names a cancelled job"
    state, elapsed, nodes = sacct_row(train_job, "State,ElapsedRaw,NodeList")[0].split("|")
    assert state.startswith("CANCELLED") and (elapsed, nodes) == ("0", "None assigned")
    assert not list((tmp_path / "runs/.slurm/journal").glob("*.json"))


def test_a_crash_between_sbatch_and_job_json_is_followed_not_submitted_again(tmp_path):
    grid = write_grid(tmp_path, "crash", ["ttur"], steps=4)
    submit = on_slurm(grid, "--no-report")
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 1))
    r = cli_faulty(*submit, fault="after-sbatch", cwd=tmp_path, timeout=120)
    assert r.returncode == -9, r.stdout + r.stderr
    (d,) = run_dirs(tmp_path / "runs")
    assert not (d / "job.json").exists()
    (entry,) = (tmp_path / "runs/.slurm/journal").glob("*.json")
    name = json.loads(entry.read_text())["job_name"]
    (held,) = squeue_names(name)  # held: it cannot start before it is recorded
    job = held.split("|")[1]

    r = cli(*submit, cwd=tmp_path, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"note: job {job} ({name}, 1 cell(s)) was submitted by an invocation" in r.stderr
    assert "0 to train, 1 to follow" in r.stdout and "submitted" not in r.stdout
    assert job_of(d) == job
    assert rundir.read_status(d)["state"] == "done"
    assert not entry.exists()
    # One job since this test began (distinct ids: the accounting database holds a
    # requeued job's record twice); every record is shown if there are two.
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-D", "-S", since, "-o", "JobID,JobName,State,Submit"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    ours = [ln for ln in out.splitlines() if ln.split("|")[1].startswith("sagan-crash")]
    assert {ln.split("|")[0].split("_")[0] for ln in ours} == {job}, "\n".join(ours)


def test_a_cell_longer_than_its_time_limit_ends_done_after_a_requeue(tmp_path):
    """A real time limit: 1 minute, the signal 30 s before it (slurm/profiles/local.yaml).
    The cell waits at its step-20 checkpoint (SAGAN_FAULT stall-step20) until the
    signal comes, so the limit, not the machine's speed, ends the first attempt; the
    requeued job trains the rest. SLURM may signal up to a minute early, so the stop
    can come before step 20 too: the run then needs one more requeue, never a failure."""
    grid = write_grid(tmp_path, "limit", ["ttur"], steps=30)
    submit = on_slurm(grid, "slurm.time=1", "--no-report")
    r = cli_faulty(*submit, fault="stall-step20", cwd=tmp_path, timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    (d,) = run_dirs(tmp_path / "runs")
    status = rundir.read_status(d)
    assert (status["state"], status["step"], status.get("failures", 0)) == ("done", 30, 0)
    assert status["stops"] >= 1 and status["attempts"] == status["stops"] + 1, status
    (state,) = sacct_row(job_of(d), "State")
    assert state == "COMPLETED"
    log = Path(json.loads((d / "job.json").read_text())["log"]).read_text()
    assert "got SIGUSR2" in log and "resuming from" in log, log[-2000:]

    r = cli("ablations.run", str(grid), "--out", "whole", "--no-report", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_same_run(d, tmp_path / "whole" / d.name)


def _partitions() -> set[str]:
    out = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True).stdout
    return set(out.split())


def test_preempted_cells_requeued_or_cancelled_end_bit_identical_to_a_local_run(tmp_path):
    """Two cells at once: one in `debug` (PreemptMode=REQUEUE), one in `debug-cancel`
    (CANCEL); a job of `urgent` that needs the whole node preempts both mid-run.
    The requeued one is followed to its end; the cancelled one is shown as
    interrupted and resubmitted by the next invocation. Both end as a local run.
    Both wait at step 20 (checkpointed; SAGAN_FAULT stall-step20) until preempted, so
    neither can end first however the machine's load spreads their starts."""
    if not {"debug", "debug-cancel", "urgent"} <= _partitions():
        pytest.fail("the cluster has no preemption partitions: restart slurm/local_cluster.sh")
    grid = write_grid(tmp_path, "pre", ["ttur", "equal"], steps=30)
    # Both eligible at the same moment, so that both train when the urgent job comes
    # (a cell submitted alone could end before the other has started).
    begin = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + 20))
    at = f"slurm.sbatch.begin='{begin}'"
    requeue = on_slurm(grid, "--only", "lr=ttur", at, "--no-report")
    cancel = on_slurm(grid, "--only", "lr=equal", "slurm.partition=debug-cancel", at, "--no-report")
    for submit in (requeue, cancel):
        r = cli_faulty(*submit, "--detach", fault="stall-step20", cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
    by_lr = {c.label(): tmp_path / "runs" / c.run_id for c in load_grid(grid).cells}
    a, b = by_lr["lr=ttur,seed=0"], by_lr["lr=equal,seed=0"]
    job_a, job_b = job_of(a), job_of(b)
    # Past the second checkpoint (ckpt_every 10), waiting there to be preempted.
    for d in (a, b):
        wait_for(
            lambda d=d: [s for s, _ in list_checkpoints(d)][:1] == [20], 180, f"{d.name} at 20"
        )
    subprocess.run(
        ["sbatch", "-p", "urgent", "-n", "4", "-J", "sagan-test-urgent", "--wrap", "sleep 3"],
        check=True, capture_output=True,
    )  # fmt: skip

    def ended(job: str):  # preempted, and its processes gone (KillWait after SIGTERM)
        listed = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True)
        row = sacct_row(job, "State")
        return row and row[0] == "PREEMPTED" and not listed.stdout.strip()

    wait_for(lambda: ended(job_b), 60, f"job {job_b} preempted")
    r = cli("ablations.status", str(grid), "--out", "runs", "--only", "lr=equal", cwd=tmp_path)
    assert re.search(rf"\binterrupted\b.*\b{job_b}\s+preempted\b", r.stdout), r.stdout

    env = dict(os.environ, OMP_NUM_THREADS="1")
    follow_a = subprocess.Popen(
        [sys.executable, "-m", *requeue], cwd=tmp_path, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    r = cli(*cancel, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 to train" in r.stdout and "submitted 1 cell(s)" in r.stdout
    assert job_of(b) != job_b
    out_a = follow_a.communicate(timeout=300)[0]
    assert follow_a.returncode == 0, out_a
    # Followed, or already done by the time it looked: either way never submitted again.
    assert "0 to train" in out_a and "submitted" not in out_a, out_a
    assert job_of(a) == job_a
    log_a = Path(json.loads((a / "job.json").read_text())["log"]).read_text()
    assert f"job {job_a} (restart 1)" in log_a, "SLURM itself requeued it"
    for d in (a, b):
        status = rundir.read_status(d)
        assert (status["state"], status["attempts"], status.get("failures", 0)) == ("done", 2, 0)

    r = cli(
        "ablations.run", str(grid), "--out", "whole", "--jobs", "2", "--no-report", cwd=tmp_path
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for d in (a, b):
        assert_same_run(d, tmp_path / "whole" / d.name)


def test_a_failing_ddp_rank_ends_its_job_names_itself_and_the_run_resumes(tmp_path):
    """Two 2-process gloo cells at once: in one, rank 1 raises after G step 5; in the
    other, rank 0 raises as its monitoring evaluation at step 4 starts (rank 1 waits
    for it). Each job ends within seconds, its run's error is the failing rank's own,
    and once the cause is gone each resumes from its last checkpoint (step 4)."""
    from tests.test_slurm import GRID

    levels = {
        "rank1": "{train.lr_g: 1.0e-4, train.lr_d: 4.0e-4}",
        "rank0eval": "{train.lr_g: 1.0e-4, train.lr_d: 1.0e-4, eval.metrics: [consistency], "
        "eval.n_samples: 16, eval.every: 4}",
    }
    text = GRID.format(
        name="dead", steps=8, levels="\n".join(f"    {k}: {v}" for k, v in levels.items())
    )
    grid = tmp_path / "dead.yaml"
    grid.write_text(text.replace("ckpt_every: 10", "ckpt_every: 2"))
    by_level = {c.label(): tmp_path / "runs" / c.run_id for c in load_grid(grid).cells}
    a, b = by_level["lr=rank1,seed=0"], by_level["lr=rank0eval,seed=0"]
    submit = on_slurm(grid, "slurm.tasks_per_node=2", "--no-report")
    r = cli_faulty(*submit, fault="rank1-step5,rank0-eval", cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    for d, rank, point in ((a, 1, "rank1-step5"), (b, 0, "rank0-eval")):
        status = rundir.read_status(d)
        assert status["state"] == "failed" and status["failures"] == 1, status
        assert status["error"].startswith(
            f"rank {rank}: FaultInjected: SAGAN_FAULT asked for a failure at {point}"
        ), status["error"]
        (elapsed,) = sacct_row(job_of(d), "ElapsedRaw")
        assert int(elapsed) < 120, "the surviving rank did not hold the job"

    r = cli(*submit, "--retry-failed", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    for d in (a, b):
        status = rundir.read_status(d)
        assert (status["state"], status["step"], status["failures"]) == ("done", 8, 1)
        log = Path(json.loads((d / "job.json").read_text())["log"]).read_text()
        assert "resuming from step-4" in log or "(G step 4)" in log, log[-2000:]
