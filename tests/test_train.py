"""The training loop: determinism, resume equality, crash safety, divergence."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sagan.config import ConfigError, load_config
from sagan.train import train
from sagan.training import rundir
from sagan.training.checkpoint import list_checkpoints, load_checkpoint, load_latest
from sagan.training.loop import Trainer

TINY = Path(__file__).resolve().parents[1] / "sagan" / "configs" / "tiny.yaml"
REPO = TINY.parents[2]


def tiny(**overrides):
    # No evaluation here: the metrics have tests of their own.
    return load_config(TINY, {"eval.metrics": [], **overrides})


def _metrics(run_dir):
    """metrics.jsonl without its timings."""
    return [
        {k: v for k, v in r.items() if k not in ("it_per_s", "img_per_s")}
        for r in rundir.read_jsonl(Path(run_dir) / "metrics.jsonl")
    ]


def _final_weights(run_dir):
    state = load_checkpoint(list_checkpoints(run_dir)[0][1])
    return {net: state[net] for net in ("G", "D", "G_ema", "opt_g", "opt_d")}


def _assert_same_weights(a, b):
    for net in ("G", "D", "G_ema"):
        assert a[net].keys() == b[net].keys()
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs"
    for opt in ("opt_g", "opt_d"):
        for sa, sb in zip(a[opt]["state"].values(), b[opt]["state"].values(), strict=True):
            assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted tiny run that other tests compare against."""
    out = tmp_path_factory.mktemp("ref")
    assert train(tiny(), out, progress=False) == "done"
    return out


def test_tiny_run_writes_its_files(reference_run):
    d = reference_run
    status = json.loads((d / "status.json").read_text())
    assert status["state"] == "done" and status["step"] == 40 and status["attempts"] == 1
    recs = rundir.read_jsonl(d / "metrics.jsonl")
    assert [r["step"] for r in recs] == [10, 20, 30, 40]
    assert {"loss_d", "loss_g", "d_real", "d_fake", "gamma_g", "gamma_d", "img_per_s"} <= set(
        recs[0]
    )
    assert list(recs[0]["gamma_g"]) and list(recs[0]["gamma_d"])
    assert sorted(p.name for p in (d / "samples").iterdir()) == [
        "step-000000020.png",
        "step-000000040.png",
    ]
    assert [s for s, _ in list_checkpoints(d)] == [40, 20]
    assert load_config(d / "config.yaml") == tiny()


def test_same_config_and_seed_give_identical_runs(reference_run, tmp_path):
    train(tiny(), tmp_path, progress=False)
    assert _metrics(tmp_path) == _metrics(reference_run)
    _assert_same_weights(_final_weights(tmp_path), _final_weights(reference_run))


def test_different_seed_gives_a_different_run(reference_run, tmp_path):
    train(tiny(**{"train.seed": 1, "train.steps": 10}), tmp_path, progress=False)
    assert _metrics(tmp_path)[0] != _metrics(reference_run)[0]


def test_ttur_learning_rates_reach_the_optimizers(tmp_path):
    cfg = tiny(**{"train.lr_g": 1e-4, "train.lr_d": 4e-4, "train.betas": [0.0, 0.9]})
    (tmp_path / "config.yaml").parent.mkdir(exist_ok=True)
    t = Trainer(cfg, tmp_path, progress=False)
    assert [g["lr"] for g in t.opt_g.param_groups] == [1e-4]
    assert [g["lr"] for g in t.opt_d.param_groups] == [4e-4]
    assert t.opt_d.param_groups[0]["betas"] == (0.0, 0.9)


def test_resume_after_stop_equals_uninterrupted_run(reference_run, tmp_path):
    # Stop cleanly at 20 (a shorter run), then extend to 40: train.steps may change.
    assert train(tiny(**{"train.steps": 20}), tmp_path, progress=False) == "done"
    assert train(tiny(), tmp_path, progress=False) == "done"
    assert _metrics(tmp_path) == _metrics(reference_run)
    _assert_same_weights(_final_weights(tmp_path), _final_weights(reference_run))
    assert rundir.read_status(tmp_path)["attempts"] == 2


def _start(out, *extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sagan.train",
            str(TINY),
            "eval.metrics=[]",
            *extra,
            "--out",
            str(out),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_ckpt", [False, True])
def test_kill_9_and_resume_ends_with_identical_weights(reference_run, tmp_path, kill_after_ckpt):
    """SIGKILL mid-run (before any checkpoint, or after the first), then resume."""
    proc = _start(tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        lines = rundir.read_jsonl(tmp_path / "metrics.jsonl")
        if kill_after_ckpt and list_checkpoints(tmp_path) and lines and lines[-1]["step"] >= 30:
            break
        if not kill_after_ckpt and lines:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert rundir.read_status(tmp_path)["state"] == "running"  # a kill -9 leaves no trace
    resumed = _start(tmp_path)
    out, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, out
    if kill_after_ckpt:
        assert "resuming from ckpt-000000020.pt" in out
    assert _metrics(tmp_path) == _metrics(reference_run)
    _assert_same_weights(_final_weights(tmp_path), _final_weights(reference_run))


def test_corrupt_newest_checkpoint_falls_back_to_previous(reference_run, tmp_path, caplog):
    import shutil

    shutil.copytree(reference_run, tmp_path / "run")
    run = tmp_path / "run"
    newest = list_checkpoints(run)[0][1]
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a full disk
    state, path = load_latest(run)
    assert state["step"] == 20 and path.name == "ckpt-000000020.pt"
    assert "ckpt-000000040.pt is unreadable" in caplog.text
    # Resuming from the fallback recomputes steps 21-40 to the same end.
    rundir.write_status(run, {**rundir.read_status(run), "state": "interrupted"})
    assert train(tiny(), run, progress=False) == "done"
    _assert_same_weights(_final_weights(run), _final_weights(reference_run))


def test_all_checkpoints_corrupt_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "ckpt-000000010.pt").write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="no readable checkpoint"):
        load_latest(tmp_path)


def test_resume_with_changed_config_is_refused(reference_run, tmp_path):
    import shutil

    shutil.copytree(reference_run, tmp_path / "run")
    with pytest.raises(ConfigError) as e:
        train(
            tiny(**{"train.lr_d": 1e-4, "model.sn_g": False, "train.steps": 50}), tmp_path / "run"
        )
    msg = str(e.value)
    assert "train.lr_d: 0.0004 -> 0.0001" in msg and "model.sn_g: True -> False" in msg
    assert "train.steps" not in msg.split("\n", 1)[1].split("Use a new")[0]


def test_done_run_is_not_retrained(reference_run, tmp_path):
    import shutil

    shutil.copytree(reference_run, tmp_path / "run")
    before = (tmp_path / "run" / "status.json").read_text()
    assert train(tiny(), tmp_path / "run") == "done"
    assert (tmp_path / "run" / "status.json").read_text() == before


def test_non_finite_loss_is_recorded_as_diverged(tmp_path):
    cfg = tiny(**{"train.lr_d": 1e30, "train.lr_g": 1e30, "train.steps": 40, "train.log_every": 1})
    assert train(cfg, tmp_path, progress=False) == "diverged"
    status = rundir.read_status(tmp_path)
    assert status["state"] == "diverged" and 1 <= status["diverged_step"] <= 40
    # No checkpoint holds non-finite weights.
    for _, p in list_checkpoints(tmp_path):
        assert all(
            torch.isfinite(v).all()
            for v in load_checkpoint(p)["G"].values()
            if v.is_floating_point()
        )
    # Re-running keeps the result.
    assert train(cfg, tmp_path, progress=False) == "diverged"


def test_unconditional_run_trains_without_labels(tmp_path):
    cfg = tiny(**{"data.conditional": False, "train.steps": 10})
    assert train(cfg, tmp_path, progress=False) == "done"
    state = load_checkpoint(list_checkpoints(tmp_path)[0][1])
    assert state["num_classes"] == 0
    assert not any("embed" in k or "gain" in k for k in state["G"]) and "embed" not in str(
        state["D"].keys()
    )


def test_tensorboard_event_files_are_written_on_request(tmp_path):
    pytest.importorskip("tensorboard")
    assert (
        train(tiny(**{"train.tensorboard": True, "train.steps": 10}), tmp_path, progress=False)
        == "done"
    )
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_cli_reports_config_errors_without_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sagan.train",
            str(TINY),
            "model.attn_g=[64]",
            "--out",
            str(tmp_path / "r"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.startswith("error: ")
        and "model.attn_g: 64 is not a feature-map size" in proc.stderr
    )
    assert "Traceback" not in proc.stderr and not (tmp_path / "r").exists()


def test_the_step_alone_computes_what_the_loop_does(tmp_path):
    """sagan.training.step.TrainStep needs no run directory, and is the loop's update."""
    from sagan.data.batches import Batches
    from sagan.data.datasets import build_dataset
    from sagan.training.setup import seed_everything
    from sagan.training.step import TrainStep

    cfg = tiny(**{"train.steps": 4, "train.log_every": 1})
    train(cfg, tmp_path, progress=False)
    seed_everything(cfg.train.seed)
    dataset = build_dataset(cfg.data, "train")
    update = TrainStep(cfg, dataset.num_classes, torch.device("cpu"))
    batches = Batches(dataset, cfg.train.batch_size, cfg.train.seed, torch.device("cpu"))
    first_bad = torch.full((), -1)
    losses = [update(batches, first_bad, s)["loss_d"].item() for s in range(1, 5)]
    assert losses == [r["loss_d"] for r in _metrics(tmp_path)]
