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

from sagan import rundir
from sagan.checkpoint import list_checkpoints

REPO = Path(__file__).resolve().parents[1]

# One rank of a 12-step run whose log_every (100) is never reached: rank 1 is asked to
# stop at its 3rd look, rank 0 never is. Writes the step each rank ended at.
RANK = """
import json, sys
from pathlib import Path
import torch.distributed as dist
from sagan.config import build_config
from sagan.trainer import Trainer
from tests.test_resume import BASE

run, out = Path(sys.argv[1]), Path(sys.argv[2])
dist.init_process_group("gloo")
rank = dist.get_rank()

class StopAtCall:
    def __init__(self, n):
        self.n, self.calls = n, 0
    def is_set(self):
        self.calls += 1
        return self.calls >= self.n

cfg = build_config(BASE, {"train.log_every": 100, "train.ckpt_every": 100})
trainer = Trainer(cfg, run, progress=False, stop=StopAtCall(3) if rank == 1 else None)
state = trainer.run()
(out / f"rank{rank}.json").write_text(json.dumps({"state": state, "step": trainer.step}))
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_stop_asked_of_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
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
    # Seen by rank 1 after step 3, agreed by both at the next step: no rank goes on.
    assert ends == [{"state": "interrupted", "step": 4}] * 2
    status = rundir.read_status(run)
    assert (status["state"], status["step"], status["stops"]) == ("interrupted", 4, 1)
    assert list_checkpoints(run)[0][0] == 4
