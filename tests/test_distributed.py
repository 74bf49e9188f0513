"""What the ranks of one DDP run agree on, with 2 gloo processes on the CPU.

The test starts the processes itself (``MASTER_ADDR=127.0.0.1`` and a free port), so
no cluster is needed.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from sagan.training import rundir
from sagan.training.checkpoint import list_checkpoints

REPO = Path(__file__).resolve().parents[1]

# One rank of a 12-step run whose log_every (100) is never reached: rank 1 is asked to
# stop at its 3rd look, rank 0 never is. Writes the step each rank ended at.
RANK = """
import json, sys, threading
from pathlib import Path
import torch.distributed as dist
from ablations import worker

run, out = Path(sys.argv[1]), Path(sys.argv[2])
dist.init_process_group("gloo")
rank = dist.get_rank()

class StopAtCall:
    def __init__(self, n):
        self.n, self.calls = n, 0
    def is_set(self):
        self.calls += 1
        return self.calls >= self.n

# As slurm.job.TrainCell passes them: every rank has a stop event; rank 0's is never set.
rc = worker.run(run, stop=StopAtCall(3) if rank == 1 else threading.Event())
(out / f"rank{rank}.json").write_text(json.dumps({"rc": rc}))
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_stop_asked_of_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    from ablations.store import EXIT_STOPPED
    from sagan.config import build_config, to_yaml
    from tests.test_resume import BASE

    run = tmp_path / "run"
    run.mkdir()
    cfg = build_config(BASE, {"train.log_every": 100, "train.ckpt_every": 100})
    (run / "config.yaml").write_text(to_yaml(cfg))
    env = dict(
        os.environ,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        WORLD_SIZE="2",
        OMP_NUM_THREADS="1",
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RANK, str(run), str(tmp_path)],
            cwd=REPO,
            env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)
    ends = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # Seen by rank 1 after step 3, agreed by both at the next step (a rank that went on
    # would wait in a collective its peer never joins): each rank exits "stopped", the
    # one whose own flag was never set too, which TrainCell would otherwise count a
    # failure of the job.
    assert ends == [{"rc": EXIT_STOPPED}] * 2, "\n".join(outs)
    status = rundir.read_status(run)
    assert (status["state"], status["step"], status["stops"]) == ("interrupted", 4, 1)
    assert list_checkpoints(run)[0][0] == 4


def _launch(script: str, *args: str, env: dict[str, str] | None = None, slurm: bool = False):
    """Two ranks of ``script`` (``python -c``) in a process group of their own, as a
    SLURM job's tasks; their outputs. ``slurm``: a job's SLURM_* environment instead of
    torch's (the ranks join through :func:`slurm.job._join_process_group`)."""
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
        and not k.startswith("SLURM_")
    }
    base.update(OMP_NUM_THREADS="1", **(env or {}))
    if slurm:
        # submitit derives the port from the job id: take one whose port is free.
        job_id = next(str(i) for i in range(1, 10**6) if _port_is_free(_submitit_port(str(i))))
        base.update(
            SUBMITIT_EXECUTOR="slurm",
            SLURM_JOB_ID=job_id,
            SLURM_NTASKS="2",
            SLURM_JOB_NUM_NODES="1",
            SLURM_NODEID="0",
            SLURM_JOB_NODELIST="localhost",
        )
        ranks = [dict(base, SLURM_PROCID=str(r), SLURM_LOCALID=str(r)) for r in range(2)]
    else:
        base.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2")
        ranks = [dict(base, RANK=str(r), LOCAL_RANK=str(r)) for r in range(2)]
    procs = []
    for rank_env in ranks:
        group = procs[0].pid if procs else 0  # 0: a new group, rank 0 its leader
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", script, *args],
                cwd=REPO,
                env=rank_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                process_group=group,
            )
        )
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)
    return outs


def _submitit_port(job_id: str) -> int:
    import random

    return random.Random(job_id).randint(20000, 60000)  # submitit's TorchDistributedEnvironment


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# Rank 0's lone work, waited for by rank 1 with a 2-second timeout: work of 5 s, work
# that raises, then (the control) a plain collective after 5 s of rank 0's work.
ON_MAIN = """
import json, os, sys, time, datetime
from pathlib import Path
import torch.distributed as dist
from sagan.training import distributed

out = Path(sys.argv[1])
distributed.join("gloo", 60)
rank = dist.get_rank()
on_main = distributed.OnMain(wait_s=2)
plain = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=2))
res = {}
for case, work in (("slow", lambda: time.sleep(5) or "result"), ("fails", lambda: 1 / 0)):
    t = time.time()
    try:
        res[case] = {"got": on_main.run(work)}
    except Exception as e:
        res[case] = {"error": f"{type(e).__name__}: {e}"}
    res[case]["s"] = time.time() - t
t = time.time()
try:
    if rank == 0:
        time.sleep(5)
    dist.broadcast_object_list([None], src=0, group=plain)
    res["plain"] = {"got": "result"}
except Exception as e:
    res["plain"] = {"error": type(e).__name__}
res["plain"]["s"] = time.time() - t
(out / f"rank{rank}.json").write_text(json.dumps(res))
# A group whose collective timed out cannot be torn down cleanly: gloo's threads may
# abort the interpreter's exit ("terminate called without an active exception").
os._exit(0)
"""


def test_the_other_ranks_outwait_rank_0s_lone_work_past_the_timeout_and_end_when_it_fails(
    tmp_path,
):
    _launch(ON_MAIN, str(tmp_path))
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    # 5 s of work against a 2-second timeout: rank 1 waited for it and got its result.
    assert r0["slow"]["got"] == r1["slow"]["got"] == "result"
    assert r1["slow"]["s"] >= 4.5
    # Rank 0 raising ends rank 1 at once, with rank 0's error in its reason.
    assert r0["fails"]["error"].startswith("ZeroDivisionError")
    assert r1["fails"]["error"] == (
        "PeerFailed: rank 0 failed in work the others waited for: "
        "ZeroDivisionError: division by zero"
    )
    assert r1["fails"]["s"] < 2
    # The control: one plain collective with the same timeout does not wait for 5 s.
    assert "error" in r1["plain"] and r1["plain"]["s"] < 4.5


# One SLURM task of a DDP cell, run as slurm.job.TrainCell runs it (its stop handler,
# its join, ablations.worker) without submitit's requeue. Writes, per run directory,
# what each rank saw.
CELL = """
import json, signal, sys, threading, time
from pathlib import Path
import torch, torch.distributed as dist
from ablations import worker
from slurm import job

out, timeout_s, runs = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
job._join_process_group(0, "cpu", timeout_s)
rank = dist.get_rank()
waits = dist.group.WORLD._get_backend(torch.device("cpu")).options._timeout.total_seconds()
for run in runs:
    stop, asked = threading.Event(), []
    signal.signal(signal.SIGUSR2, lambda s, f: (asked.append(time.time()), stop.set()))
    rc = worker.run(Path(run), stop=stop)
    seen = {"rc": rc, "asked": asked[:1], "end": time.time(), "timeout_s": waits}
    (out / f"{Path(run).name}-rank{rank}.json").write_text(json.dumps(seen))
dist.destroy_process_group()
"""


def test_usr2_during_rank_0s_evaluation_stops_every_rank_and_resumes_bit_identically(tmp_path):
    from ablations.store import EXIT_STOPPED
    from sagan.config import build_config, to_yaml
    from tests.test_resume import BASE, EVALUATED, _assert_same_end, _evaluations

    cfg = build_config(BASE, EVALUATED)  # 4 steps, evaluated at 2 and 4 in 4 batches
    stopped, whole = tmp_path / "stopped", tmp_path / "whole"
    for d in (stopped, whole):
        d.mkdir()
        (d / "config.yaml").write_text(to_yaml(cfg))
    # SLURM's USR2 to both tasks once rank 0's evaluation of step 2 has scored a batch.
    outs = _launch(
        CELL, str(tmp_path), "240", str(stopped), env={"SAGAN_FAULT": "rank0-eval-usr2"}, slurm=True
    )
    seen = [json.loads((tmp_path / f"stopped-rank{r}.json").read_text()) for r in range(2)]
    assert [s["timeout_s"] for s in seen] == [240, 240], "the profile's timeout, in the group"
    assert [s["rc"] for s in seen] == [EXIT_STOPPED] * 2, "\n".join(outs)
    assert all(s["asked"] and s["end"] - s["asked"][0] < 15 for s in seen), seen
    assert "evaluation of G step 2: abandoned on a stop request after 8 of 32" in outs[0]
    status = rundir.read_status(stopped)
    assert (status["state"], status["step"], status["stops"]) == ("interrupted", 2, 1)
    assert status.get("failures", 0) == 0 and "error" not in status
    assert list_checkpoints(stopped)[0][0] == 2
    assert _evaluations(stopped) == [], "an abandoned evaluation records nothing"
    assert rundir.read_jsonl(stopped / "env.jsonl")[0]["collective_timeout_s"] == 240

    # The requeued job (no fault now) resumes it; an uninterrupted job for comparison.
    _launch(CELL, str(tmp_path), "240", str(stopped), str(whole), slurm=True)
    for d in (stopped, whole):
        assert rundir.read_status(d)["state"] == "done"
    _assert_same_end(whole, stopped)
    assert _evaluations(stopped) == _evaluations(whole) and len(_evaluations(whole)) == 2
