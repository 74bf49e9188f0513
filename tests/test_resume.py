"""Exact resume on every data path, and what a run refuses to resume on.

A run stopped at a checkpoint and started again must end bit for bit as one that
never stopped: on the image-folder path (DataLoader with 0 and 2 workers), with
several D steps per G step, and with EMA switched on mid-run.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sagan.config import ConfigError, build_config, to_yaml
from sagan.train import train
from sagan.training import rundir
from sagan.training.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from sagan.training.loop import Trainer
from tests.datafiles import write_tiny_imagefolder

REPO = Path(__file__).resolve().parents[1]

BASE = {
    "data": {"name": "synthetic", "resolution": 32, "synthetic": {"n_images": 64}},
    "model": {"ch": 8, "z_dim": 16, "attn_g": [16], "attn_d": [16]},
    "train": {
        "steps": 12,
        "batch_size": 8,
        "log_every": 2,
        "ckpt_every": 4,
        "sample_every": 100,
        "n_samples": 4,
        "device": "cpu",
    },
    "eval": {"metrics": []},
}


def config(**overrides):
    return build_config(BASE, overrides)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """32 images in 2 classes: 4 batches of 8 per epoch, so 12 steps cross epochs."""
    root = tmp_path_factory.mktemp("folder")
    write_tiny_imagefolder(root, n_classes=2, n_per_class=16, size=(40, 40))
    return root


def _metrics(run_dir):
    return [
        {k: v for k, v in r.items() if k not in ("it_per_s", "img_per_s")}
        for r in rundir.read_jsonl(Path(run_dir) / "metrics.jsonl")
    ]


def _assert_same_end(a, b):
    assert _metrics(a) == _metrics(b)
    sa = load_checkpoint(list_checkpoints(a)[0][1])
    sb = load_checkpoint(list_checkpoints(b)[0][1])
    assert sa["step"] == sb["step"]
    for net in ("G", "D", "G_ema"):
        if sa[net] is None:
            assert sb[net] is None
            continue
        for k in sa[net]:
            assert torch.equal(sa[net][k], sb[net][k]), f"{net}.{k} differs"
    for opt in ("opt_g", "opt_d"):
        for pa, pb in zip(sa[opt]["state"].values(), sb[opt]["state"].values(), strict=True):
            assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert torch.equal(sa["rng"]["noise"], sb["rng"]["noise"])


CASES = {
    "imagefolder-workers0": {"data.name": "imagefolder", "data.num_workers": 0},
    "imagefolder-workers2": {"data.name": "imagefolder", "data.num_workers": 2},
    "n_dis-2": {"train.n_dis": 2},
    "ema-starting-after-the-resume": {"train.ema": 0.9, "train.ema_start": 10},
    # The CPU fast paths, each at a fixed setting (channels_last is the default).
    "contiguous-fp32": {"train.channels_last": False},
    "channels_last-bf16-autocast": {"train.amp": True},
}


@pytest.mark.parametrize("case", list(CASES))
def test_stop_and_resume_ends_as_an_uninterrupted_run(case, folder, tmp_path):
    overrides = dict(CASES[case])
    if overrides.get("data.name") == "imagefolder":
        overrides["data.root"] = str(folder)
    full, split = tmp_path / "full", tmp_path / "split"
    assert train(config(**overrides), full, progress=False) == "done"
    # Stop at the checkpoint of step 8 (a shorter run), then extend to 12.
    assert train(config(**overrides, **{"train.steps": 8}), split, progress=False) == "done"
    assert train(config(**overrides), split, progress=False) == "done"
    _assert_same_end(full, split)


def test_training_noise_is_isolated_from_the_global_rng(tmp_path):
    """Anything else drawing from the global RNG (a loader, a library) leaves the run alone."""
    a, b = tmp_path / "a", tmp_path / "b"
    train(config(**{"train.steps": 4}), a, progress=False)
    b.mkdir()
    trainer = Trainer(config(**{"train.steps": 4}), b, progress=False)
    original = trainer.train_step

    def step_with_a_stray_draw(*args):
        torch.rand(3)  # what DataLoader.__iter__ does without a generator of its own
        return original(*args)

    trainer.train_step = step_with_a_stray_draw
    assert trainer.run() == "done"
    _assert_same_end(a, b)


@pytest.mark.slow
def test_kill_9_on_the_imagefolder_path_with_workers_resumes_exactly(folder, tmp_path):
    overrides = [
        "data.name=imagefolder",
        f"data.root={folder}",
        "data.num_workers=2",
        "train.steps=40",
        "train.ckpt_every=10",
    ]
    ref = tmp_path / "ref"
    assert train(config(**_parsed(overrides)), ref, progress=False) == "done"
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(json.dumps(BASE))
    run = tmp_path / "run"

    def start():
        return subprocess.Popen(
            [sys.executable, "-m", "sagan.train", str(cfg_file), *overrides, "--out", str(run)],
            cwd=REPO,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    proc = start()
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        lines = rundir.read_jsonl(run / "metrics.jsonl")
        if list_checkpoints(run) and lines and lines[-1]["step"] >= 14:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "ended before it could be killed:\n" + proc.stdout.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = start()
    out, _ = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, out
    assert "resuming from ckpt-000000010.pt" in out
    _assert_same_end(ref, run)


def _parsed(items):
    from sagan.config import parse_overrides

    return parse_overrides(items)


# --- what a run refuses to resume on -------------------------------------------------


def test_resume_on_other_data_is_refused_naming_both(folder, tmp_path):
    smaller = tmp_path / "smaller"
    write_tiny_imagefolder(smaller, n_classes=2, n_per_class=8, size=(40, 40))
    run = tmp_path / "run"
    ov = {"data.name": "imagefolder", "data.root": str(folder), "train.steps": 4}
    assert train(config(**ov), run, progress=False) == "done"
    before = (run / "status.json").read_text()
    with pytest.raises(ConfigError) as e:
        train(config(**{**ov, "data.root": str(smaller), "train.steps": 8}), run, progress=False)
    msg = str(e.value)
    assert "trained on other data" in msg
    assert "2 classes, 32 images" in msg and "2 classes, 16 images" in msg
    assert (run / "status.json").read_text() == before  # nothing recorded, nothing lost
    assert json.loads((run / "data.json").read_text())["n_images"] == 32


def test_the_same_data_at_another_path_resumes(folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    run = tmp_path / "run"
    ov = {"data.name": "imagefolder", "data.root": str(folder), "train.steps": 4}
    assert train(config(**ov), run, progress=False) == "done"
    assert train(config(**{**ov, "data.root": str(copy), "train.steps": 8}), run) == "done"


def test_resume_guard_compares_with_the_checkpoint_not_config_yaml(tmp_path):
    """What the grid store did: rewrite config.yaml, then start the worker on it."""
    run = tmp_path / "run"
    assert train(config(**{"train.steps": 4}), run, progress=False) == "done"
    changed = config(**{"train.steps": 8, "train.lr_d": 1e-3})

    (run / "config.yaml").write_text(to_yaml(changed))
    with pytest.raises(ConfigError, match=r"train.lr_d: 0.0004 -> 0.001"):
        train(changed, run, progress=False)


def test_a_failure_while_restoring_is_recorded(tmp_path):
    run = tmp_path / "run"
    assert train(config(**{"train.steps": 4}), run, progress=False) == "done"
    for _, path in list_checkpoints(run):
        path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        train(config(**{"train.steps": 8}), run, progress=False)
    status = rundir.read_status(run)
    assert status["state"] == "failed" and status["attempts"] == 2 and status["failures"] == 1
    assert "no readable checkpoint" in status["error"]


def test_checkpoints_load_onto_the_cpu_whatever_the_device(tmp_path, monkeypatch):
    """torch.set_rng_state takes only a CPU byte tensor: states must never be moved."""
    run = tmp_path / "run"
    assert train(config(**{"train.steps": 4}), run, progress=False) == "done"
    state = load_checkpoint(list_checkpoints(run)[0][1])
    rng = state["rng"]
    assert rng["noise"].device.type == "cpu" and rng["process"]["torch"].device.type == "cpu"
    calls = []
    real_load = torch.load
    monkeypatch.setattr(
        torch, "load", lambda *a, **k: calls.append(k.get("map_location")) or real_load(*a, **k)
    )
    assert train(config(**{"train.steps": 8}), run, progress=False) == "done"
    assert calls and all(c == "cpu" for c in calls)


def test_d_is_trainable_again_after_the_g_step(tmp_path):
    trainer = Trainer(config(), tmp_path, progress=False)
    from sagan.data.batches import Batches

    batches = Batches(trainer.dataset, 8, 0, trainer.device)
    first_bad = torch.full((), -1, dtype=torch.long)
    seen = []
    original = trainer.G.forward

    def spy(*a, **k):
        seen.append(any(p.requires_grad for p in trainer.D.parameters()))
        return original(*a, **k)

    trainer.G.forward = spy
    trainer.train_step(batches, first_bad)
    assert seen[-1] is False  # D frozen while G's loss is computed
    assert all(p.requires_grad for p in trainer.D.parameters())

    # ...even when the G step raises.
    def fail_in_the_g_step(*a, **k):
        if not any(p.requires_grad for p in trainer.D.parameters()):
            raise RuntimeError("boom")
        return original(*a, **k)

    trainer.G.forward = fail_in_the_g_step
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train_step(batches, first_bad)
    assert all(p.requires_grad for p in trainer.D.parameters())


class _StopAtCall:
    """A stop flag that turns on at the n-th look: the loop looks once per G step."""

    def __init__(self, n):
        self.n, self.calls = n, 0

    def is_set(self):
        self.calls += 1
        return self.calls >= self.n


def test_a_stop_request_checkpoints_between_steps_and_resumes_exactly(tmp_path):
    cfg = config()  # ckpt_every 4: step 5 has no checkpoint of its own
    train(cfg, tmp_path / "whole")
    stopped = tmp_path / "stopped"
    assert train(cfg, stopped, stop=_StopAtCall(5)) == "interrupted"
    status = rundir.read_status(stopped)
    assert (status["state"], status["step"], status["stops"]) == ("interrupted", 5, 1)
    assert status.get("failures", 0) == 0
    assert list_checkpoints(stopped)[0][0] == 5
    assert train(cfg, stopped) == "done"
    _assert_same_end(tmp_path / "whole", stopped)
    assert rundir.read_status(stopped)["attempts"] == 2


def test_a_stop_request_at_the_last_step_finishes_the_run(tmp_path):
    assert train(config(), tmp_path, stop=_StopAtCall(11)) == "interrupted"
    assert rundir.read_status(tmp_path)["step"] == 11
    # Asked to stop at once again, with one step left: that step ends the run.
    assert train(config(), tmp_path, stop=_StopAtCall(1)) == "done"
    assert rundir.read_status(tmp_path)["step"] == 12


# --- what a kill between an evaluation and the status leaves -------------------------

# Trains a run and SIGKILLs itself right after eval.jsonl has the record of step K,
# before status.json does: where a kill costs the status its best.
KILL_AFTER_EVAL = """
import os, signal, sys
from pathlib import Path
from sagan.training import rundir
from sagan.config import load_config
from sagan.train import train

cfg_file, run, kill_step = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
real = rundir.update_best

def update_best(status, record):
    if record["step"] == kill_step:
        os.kill(os.getpid(), signal.SIGKILL)
    real(status, record)

rundir.update_best = update_best
train(load_config(cfg_file), run, progress=False)
"""


def test_a_kill_between_an_evaluation_and_the_status_keeps_the_best_checkpoint(tmp_path):
    monitored = {
        "train.steps": 8,
        "train.ckpt_every": 2,
        "train.ckpt_keep": 1,
        "eval.every": 2,
        "eval.metrics": ["swd"],
        "eval.n_samples": 32,
    }
    raw = json.loads(json.dumps(BASE))
    raw["final"] = {"metrics": ["swd"], "n_samples": 32, "checkpoint": "best", "best_by": "swd"}
    cfg = build_config(raw, monitored)
    ref = tmp_path / "ref"
    assert train(cfg, ref, progress=False) == "done"
    best = rundir.read_status(ref)["best_checkpoint"]["step"]

    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(to_yaml(cfg))
    run = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_EVAL, str(cfg_file), str(run), str(best)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert rundir.read_status(run).get("best_checkpoint", {}).get("step") != best
    assert train(cfg, run, progress=False) == "done"
    want, got = rundir.read_status(ref), rundir.read_status(run)
    for key in ("best", "latest", "best_checkpoint"):
        assert got[key] == want[key], key
    assert best in {step for step, _ in list_checkpoints(run)}


def test_a_noise_state_drawn_on_a_gpu_is_refused_naming_its_size(tmp_path):
    """A CUDA generator's (Philox) state cannot continue a CPU generator's stream."""
    run = tmp_path / "run"
    assert train(config(**{"train.steps": 4}), run, progress=False) == "done"
    path = list_checkpoints(run)[0][1]
    state = load_checkpoint(path)
    state["rng"]["noise"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's size
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"noise generator state has 16 bytes, not a CPU"):
        train(config(**{"train.steps": 8}), run, progress=False)


# --- a stop request during an evaluation ---------------------------------------------

EVALUATED = {
    "train.steps": 4,
    "eval.every": 2,
    "eval.metrics": ["consistency"],
    "eval.n_samples": 32,
    "eval.batch_size": 8,
}


def _evaluations(run_dir):
    """eval.jsonl without what the clock writes."""
    return [
        {k: v for k, v in r.items() if k not in ("time", "wall_s", "timing")}
        for r in rundir.read_jsonl(Path(run_dir) / "eval.jsonl")
    ]


def test_a_stop_during_an_evaluation_abandons_it_and_the_resume_redoes_it_exactly(tmp_path):
    cfg = config(**EVALUATED)
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert train(cfg, whole, progress=False) == "done"
    # The loop looks once at step 1; the evaluation of step 2 looks before each of its
    # 4 batches: the 3rd look falls inside it.
    assert train(cfg, stopped, progress=False, stop=_StopAtCall(3)) == "interrupted"
    status = rundir.read_status(stopped)
    assert (status["state"], status["step"], status["stops"]) == ("interrupted", 2, 1)
    assert status.get("failures", 0) == 0
    assert list_checkpoints(stopped)[0][0] == 2
    assert _evaluations(stopped) == [], "an abandoned evaluation records nothing"
    assert train(cfg, stopped, progress=False) == "done"
    _assert_same_end(whole, stopped)
    assert _evaluations(stopped) == _evaluations(whole)
    want, got = rundir.read_status(whole), rundir.read_status(stopped)
    assert (got["best"], got["latest"]) == (want["best"], want["latest"])


def test_a_second_stop_without_progress_is_a_failure_that_says_why(tmp_path):
    cfg = config(**EVALUATED)
    assert train(cfg, tmp_path, progress=False, stop=_StopAtCall(3)) == "interrupted"
    # The owed evaluation of step 2 is stopped again at its first batch: the run would
    # be requeued, resumed and stopped forever.
    assert train(cfg, tmp_path, progress=False, stop=_StopAtCall(1)) == "failed"
    status = rundir.read_status(tmp_path)
    assert (status["state"], status["step"], status["failures"]) == ("failed", 2, 1)
    assert "no progress between two interruptions" in status["error"]
    assert "G step 2" in status["error"]
    assert train(cfg, tmp_path, progress=False) == "done"  # retried with time enough
