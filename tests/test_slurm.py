"""The SLURM executor against a real cluster: slurm/local_cluster.sh on 127.0.0.1.

Every test submits real jobs through submitit and reads real states from sacct. The
cluster is started if it is not up (as root, with apt). Where it cannot be, the tests
skip and say why; in CI (``SAGAN_REQUIRE_SLURM=1``) that is a failure instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sagan.training import rundir
from sagan.training.checkpoint import list_checkpoints, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

GRID = """
name: {name}
base:
  data: {{name: synthetic, resolution: 32, synthetic: {{n_images: 256, n_classes: 4}}}}
  model: {{ch: 8, z_dim: 16, attn_g: [16], attn_d: [16]}}
  train:
    steps: {steps}
    batch_size: 8
    log_every: 2
    ckpt_every: 10
    sample_every: 1000
    n_samples: 4
    device: cpu
eval: {{metrics: []}}
axes:
  lr:
{levels}
seeds: [0]
"""
LEVELS = {
    "ttur": "{train.lr_g: 1.0e-4, train.lr_d: 4.0e-4}",
    "equal": "{train.lr_g: 1.0e-4, train.lr_d: 1.0e-4}",
    "fast": "{train.lr_g: 2.0e-4, train.lr_d: 4.0e-4}",
}


def _cluster_up() -> bool:
    return (
        subprocess.run(
            ["bash", str(REPO / "slurm/local_cluster.sh"), "status"], capture_output=True
        ).returncode
        == 0
    )


@pytest.fixture(scope="module", autouse=True)
def cluster():
    why = None
    if shutil.which("sbatch") is None and os.geteuid() != 0:
        why = "SLURM is not installed and installing it needs root"
    elif not _cluster_up():
        if os.geteuid() != 0:
            why = "the local SLURM cluster is down and starting it needs root"
        else:
            r = subprocess.run(
                ["bash", str(REPO / "slurm/local_cluster.sh")],
                capture_output=True,
                text=True,
                timeout=900,
            )
            if r.returncode != 0:
                why = f"slurm/local_cluster.sh failed: {r.stderr.strip()[-500:]}"
    if why:
        if os.environ.get("SAGAN_REQUIRE_SLURM") == "1":
            pytest.fail(f"SLURM tests cannot run: {why}")
        pytest.skip(f"SLURM TESTS SKIPPED: {why}")


@pytest.fixture(autouse=True)
def cancel_leftovers(tmp_path):
    """A failing test leaves no job of its own behind on the cluster."""
    yield
    ids = [json.loads(p.read_text())["job_id"] for p in tmp_path.glob("**/job.json")]
    ids = [i for i in ids if ":" not in i]  # local executor records are host:pid
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)


def write_grid(tmp_path: Path, name: str, levels: list[str], steps: int = 12) -> Path:
    text = GRID.format(
        name=name,
        steps=steps,
        levels="\n".join(f"    {lv}: {LEVELS[lv]}" for lv in levels),
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m ablations.run|status ...`` as a user types it; never waits forever."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def on_slurm(grid: Path, *extra: str, out: str = "runs", profile: str = "local") -> tuple:
    """``ablations.run GRID --out OUT --executor slurm --profile PROFILE EXTRA...``."""
    return (
        "ablations.run",
        str(grid),
        "--out",
        out,
        "--executor",
        "slurm",
        "--profile",
        profile,
        *extra,
    )


def run_dirs(store: Path) -> list[Path]:
    return sorted(p.parent for p in store.glob("*/config.yaml"))


def job_of(run_dir: Path) -> str:
    return json.loads((run_dir / "job.json").read_text())["job_id"]


def wait_for(cond, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        if got := cond():
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def metrics(run_dir: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in ("it_per_s", "img_per_s")}
        for r in rundir.read_jsonl(run_dir / "metrics.jsonl")
    ]


def assert_same_run(a: Path, b: Path) -> None:
    assert metrics(a) and metrics(a) == metrics(b)
    sa = load_checkpoint(list_checkpoints(a)[0][1])
    sb = load_checkpoint(list_checkpoints(b)[0][1])
    assert sa["step"] == sb["step"]
    for net in ("G", "D"):
        for k in sa[net]:
            assert torch.equal(sa[net][k], sb[net][k]), f"{a.name}: {net}.{k} differs"


def sacct_times(job: str) -> list[tuple[float, float]]:
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", job, "-o", "JobID,Start,End"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    spans = []
    for line in out.splitlines():
        _, start, end = line.split("|")
        parse = lambda t: time.mktime(time.strptime(t, "%Y-%m-%dT%H:%M:%S"))  # noqa: E731
        spans.append((parse(start), parse(end)))
    return spans


def test_a_grid_through_slurm_equals_a_local_run_and_respects_array_parallelism(tmp_path):
    grid = write_grid(tmp_path, "three", ["ttur", "equal", "fast"])
    r = cli(
        *on_slurm(grid, "slurm.array_parallelism=2", out="slurm-runs"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "submitted 3 cell(s) as SLURM job" in r.stdout
    r = cli("ablations.run", str(grid), "--out", "local-runs", "--jobs", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr

    slurm_dirs, local_dirs = run_dirs(tmp_path / "slurm-runs"), run_dirs(tmp_path / "local-runs")
    assert [d.name for d in slurm_dirs] == [d.name for d in local_dirs] and len(slurm_dirs) == 3
    for a, b in zip(slurm_dirs, local_dirs, strict=True):
        assert rundir.read_status(a)["state"] == "done"
        assert_same_run(a, b)
    jobs = [json.loads((d / "job.json").read_text()) for d in slurm_dirs]
    assert len({j["array_job_id"] for j in jobs}) == 1, "one array per invocation"
    assert sorted(j["array_index"] for j in jobs) == [0, 1, 2]
    assert all(Path(j["log"]).is_file() for j in jobs)

    # The node has 4 slots (CI starts it with SAGAN_SLURM_CPUS=4): only the array's
    # limit keeps the third cell waiting.
    spans = sacct_times(jobs[0]["array_job_id"])
    assert len(spans) == 3
    at_once = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert at_once <= 2


def test_usr2_mid_run_requeues_resumes_and_ends_as_an_uninterrupted_run(tmp_path):
    grid = write_grid(tmp_path, "pre", ["ttur"], steps=60)
    submit = on_slurm(grid)
    r = cli(*submit, "--detach", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Follow them with" in r.stderr
    (d,) = run_dirs(tmp_path / "runs")
    job = job_of(d)
    # Mid-run, between checkpoints (ckpt_every 10): the stop must add one of its own.
    wait_for(lambda: rundir.read_status(d).get("step", 0) >= 13, 120, "step 13")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)

    # Running the same command again follows the job instead of submitting it again.
    r = cli(*submit, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 to train, 1 to follow" in r.stdout and "submitted" not in r.stdout
    assert job_of(d) == job
    status = rundir.read_status(d)
    assert (status["state"], status["step"], status["stops"], status["attempts"]) == (
        "done",
        60,
        1,
        2,
    )
    log = Path(json.loads((d / "job.json").read_text())["log"]).read_text()
    assert "got SIGUSR2" in log and "resuming from" in log
    stopped_at = int(log.split("stopped on request at G step ")[1].split(",")[0])
    assert stopped_at % 10 != 0 and stopped_at >= 13, "checkpointed at its own step boundary"

    r = cli("ablations.run", str(grid), "--out", "whole", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_same_run(d, tmp_path / "whole" / d.name)


def test_a_cancelled_job_is_failed_with_its_reason_and_a_rerun_while_queued_submits_nothing(
    tmp_path,
):
    grid = write_grid(tmp_path, "held", ["ttur"], steps=10)
    # Held in the queue for an hour: the job is certainly still queued below.
    submit = on_slurm(grid, "slurm.sbatch.begin=now+3600")
    r = cli(*submit, "--detach", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    (d,) = run_dirs(tmp_path / "runs")
    job = job_of(d)
    scripts = sorted((tmp_path / "runs/.slurm").glob("*submission.sh"))

    r = cli(*submit, "--detach", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 to train, 1 to follow" in r.stdout
    assert sorted((tmp_path / "runs/.slurm").glob("*submission.sh")) == scripts
    assert job_of(d) == job
    r = cli("ablations.status", str(grid), "--out", "runs", cwd=tmp_path)
    assert re.search(rf"\b{job}\s+queued\b", r.stdout), r.stdout

    subprocess.run(["scancel", job], check=True)
    r = cli(*submit, cwd=tmp_path, timeout=120)  # settles the job, then plans nothing
    assert r.returncode == 1, r.stdout + r.stderr
    status = rundir.read_status(d)
    assert status["state"] == "failed" and status["failures"] == 1
    assert f"job {job} ended CANCELLED" in status["error"] and str(d.parent) in status["error"]
    assert "failed:" in r.stderr and "CANCELLED" in r.stderr
    r = cli("ablations.status", str(grid), "--out", "runs", cwd=tmp_path)
    assert "cancelled" in r.stdout and f"job {job} ended CANCELLED" in r.stdout
    # Settled once: looking again does not count the failure twice.
    cli(*submit, "--dry-run", cwd=tmp_path)
    assert rundir.read_status(d)["failures"] == 1


def test_a_job_unknown_to_sacct_is_failed_as_vanished(tmp_path):
    from ablations.store import write_job
    from slurm.executor import SlurmExecutor

    d = tmp_path / "runs" / "0123456789ab"
    d.mkdir(parents=True)
    write_job(
        d, {"executor": "slurm", "job_id": "999999_3", "submitted_at": 0.0, "log": str(d / "x.log")}
    )
    live = SlurmExecutor(tmp_path / "runs").settle([d])
    assert live == {}
    status = rundir.read_status(d)
    assert status["state"] == "failed"
    assert "job 999999_3 is unknown to the scheduler" in status["error"]


def test_a_malformed_profile_is_one_clear_error_and_submits_nothing(tmp_path):
    grid = write_grid(tmp_path, "bad", ["ttur"])
    bad = tmp_path / "bad-profile.yaml"
    bad.write_text("partition: debug\ntime: 0\ncpus_per_task: many\n")
    r = cli(
        *on_slurm(grid, "slurm.signal=NOPE", profile=str(bad)),
        cwd=tmp_path,
    )
    assert r.returncode == 2
    err = r.stderr
    assert "time: Input should be greater than or equal to 1 (got 0)" in err
    assert "cpus_per_task" in err and "'many'" in err
    assert "slurm.signal" in err and "'NOPE'" in err
    assert "nothing was submitted" in err
    assert not (tmp_path / "runs").exists()


def test_a_two_process_ddp_cell_matches_one_process_and_survives_a_requeue(tmp_path):
    """DDP with gloo on CPU: 2 tasks of one job, the global batch split between them.

    Batch-norm statistics are per device (as in the official code), so G's output
    differs from one process's by the statistics of 4 images instead of 8: the first
    steps agree within 10%, and D's output on the real batch at step 1 (before any
    fake has moved D) agrees to float rounding. A DDP run stopped by USR2 and
    requeued ends exactly as an uninterrupted DDP run.
    """
    grid = write_grid(tmp_path, "ddp", ["ttur"], steps=24)
    text = grid.read_text().replace("log_every: 2", "log_every: 1")
    grid.write_text(text)
    # A profile's collective timeout reaches the process group (executor, TrainCell,
    # join), as env.jsonl records it for each attempt.
    wait = "slurm.collective_timeout_s=120"
    stopped = on_slurm(grid, "slurm.tasks_per_node=2", wait, out="stopped")
    r = cli(*stopped, "--detach", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    (d,) = run_dirs(tmp_path / "stopped")
    wait_for(lambda: rundir.read_status(d).get("step", 0) >= 7, 180, "step 7")
    subprocess.run(["scancel", "--signal=USR2", job_of(d)], check=True)
    r = cli(*stopped, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    status = rundir.read_status(d)
    assert (status["state"], status["stops"], status["attempts"]) == ("done", 1, 2)
    log = Path(json.loads((d / "job.json").read_text())["log"]).read_text()
    assert "rank 0 of 2" in log and "resuming from" in log
    envs = rundir.read_jsonl(d / "env.jsonl")
    assert [e["collective_timeout_s"] for e in envs] == [120, 120]

    r = cli(*on_slurm(grid, "slurm.tasks_per_node=2", out="whole"), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_same_run(d, tmp_path / "whole" / d.name)

    r = cli("ablations.run", str(grid), "--out", "single", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    one, two = metrics(tmp_path / "single" / d.name), metrics(d)
    assert one[0]["d_real"] == pytest.approx(two[0]["d_real"], rel=1e-5)
    for a, b in zip(one[:2], two[:2], strict=True):
        for k in ("loss_d", "loss_g", "d_real", "d_fake"):
            assert a[k] == pytest.approx(b[k], rel=0.10), (a["step"], k)


def test_submitting_from_inside_an_allocation_works(tmp_path):
    """A grid submitted from within a job (srun) does not hand the job's SLURM_*
    variables to its own jobs (submitit's clean_env)."""
    grid = write_grid(tmp_path, "nested", ["ttur"], steps=4)
    submit = ("-m", *on_slurm(grid))
    r = subprocess.run(
        ["srun", "--quiet", "-n1", "-c1", sys.executable, *submit, "--detach"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    r = cli(*submit[1:], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    (d,) = run_dirs(tmp_path / "runs")
    assert rundir.read_status(d)["state"] == "done"


def test_a_trained_cell_owing_its_final_scores_gets_a_short_scoring_job(tmp_path):
    grid = write_grid(tmp_path, "fin", ["ttur"], steps=4)
    text = grid.read_text() + "final: {metrics: [consistency], n_samples: 16}\n"
    grid.write_text(text)
    submit = on_slurm(grid, "slurm.score_time=3")
    r = cli(*submit, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    (d,) = run_dirs(tmp_path / "runs")
    finals = [r for r in rundir.read_jsonl(d / "eval.jsonl") if r.get("origin") == "final"]
    assert len(finals) == 1, "the training job scored its run"
    assert json.loads((d / "job.json").read_text())["kind"] == "train"

    grid.write_text(text.replace("n_samples: 16", "n_samples: 24"))
    r = cli(*submit, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 to train, 1 to score" in r.stdout
    record = json.loads((d / "job.json").read_text())
    assert record["kind"] == "score"
    limit = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", record["job_id"], "-o", "Timelimit"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert limit == ["00:03:00"], "the profile's score_time, not its training time"
    finals = [r for r in rundir.read_jsonl(d / "eval.jsonl") if r.get("origin") == "final"]
    assert [f["protocol"]["n_generated"] for f in finals] == [16, 24]
