"""Evaluation inside training and re-scoring saved checkpoints (sagan.evaluate)."""

import json
from pathlib import Path

import pytest
import torch

from sagan import evaluate as evaluate_cli
from sagan.config import load_config
from sagan.train import train
from sagan.training import rundir
from sagan.training.checkpoint import list_checkpoints, load_checkpoint
from tests import fakeweights

fake_weights = fakeweights.fake_weights

TINY = Path(__file__).resolve().parents[1] / "sagan" / "configs" / "tiny.yaml"


def tiny(**overrides):
    return load_config(TINY, {"train.steps": 20, "train.log_every": 10, **overrides})


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluated")
    cfg = tiny(**{"eval.every": 10, "eval.metrics": ["consistency"], "eval.n_samples": 64})
    assert train(cfg, out, progress=False) == "done"
    return out


def test_training_records_evaluations_and_tracks_best(evaluated_run):
    records = rundir.read_jsonl(evaluated_run / "eval.jsonl")
    assert [(r["step"], r["origin"]) for r in records] == [(10, "train"), (20, "train")]
    assert all(r["protocol"]["n_generated"] == 64 for r in records)
    status = json.loads((evaluated_run / "status.json").read_text())
    assert len({r["protocol_id"] for r in records}) == 1
    best = status["best"][records[0]["protocol_id"]]["consistency"]
    assert best["value"] == max(r["metrics"]["consistency"] for r in records)
    assert status["latest"]["step"] == 20


def test_evaluating_does_not_change_training(evaluated_run, tmp_path):
    assert train(tiny(**{"eval.metrics": []}), tmp_path, progress=False) == "done"

    def final(d):
        return load_checkpoint(list_checkpoints(d)[0][1])

    a, b = final(evaluated_run), final(tmp_path)
    for net in ("G", "D", "G_ema"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k}"
    assert not (tmp_path / "eval.jsonl").exists()


def test_rescore_with_another_protocol_appends_marked_records(
    evaluated_run, fake_weights, tmp_path, capsys
):
    out = tmp_path / "rescored.jsonl"
    argv = [
        str(evaluated_run),
        "eval.metrics=[fid,is,consistency]",
        "eval.n_samples=20",
        "eval.reference.n=40",
        f"eval.inception_weights={fake_weights}",
        f"eval.cache_dir={tmp_path / 'cache'}",
        "--all",
        "--out",
        str(out),
    ]
    assert evaluate_cli.main(argv) == 0
    records = rundir.read_jsonl(out)
    assert [r["checkpoint"] for r in records] == ["ckpt-000000010.pt", "ckpt-000000020.pt"]
    assert all(r["origin"] == "rescore" for r in records)
    r = records[-1]
    assert {"fid", "is_mean", "consistency"} <= set(r["metrics"])
    assert r["protocol"]["weights_canonical"] is False
    assert r["protocol"]["g"] == "ema"  # tiny.yaml trains with EMA; eval.use_ema defaults on
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed[-1]["step"] == 20
    # The run's own records are untouched.
    assert len(rundir.read_jsonl(evaluated_run / "eval.jsonl")) == 2


def test_rescore_refuses_training_keys_and_missing_weights(
    evaluated_run, tmp_path, capsys, monkeypatch
):
    assert evaluate_cli.main([str(evaluated_run), "train.lr_d=1e-3"]) == 2
    assert "only eval.* keys can change" in capsys.readouterr().err
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert evaluate_cli.main([str(evaluated_run), "eval.metrics=[fid]", "eval.n_samples=20"]) == 2
    err = capsys.readouterr().err
    assert "python -m sagan.prefetch --weights" in err and "Traceback" not in err
    assert evaluate_cli.main([str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_evaluation_killed_midway_is_redone_on_resume(evaluated_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    # As if killed during the evaluation of step 20: its checkpoint exists, its record not.
    records = rundir.read_jsonl(run / "eval.jsonl")
    (run / "eval.jsonl").write_text(json.dumps(records[0]) + "\n")
    rundir.write_status(run, {**rundir.read_status(run), "state": "running"})
    cfg = tiny(**{"eval.every": 10, "eval.metrics": ["consistency"], "eval.n_samples": 64})
    assert train(cfg, run, progress=False) == "done"
    redone = rundir.read_jsonl(run / "eval.jsonl")
    assert [r["step"] for r in redone] == [10, 20]
    assert redone[1]["metrics"] == records[1]["metrics"]


@pytest.mark.parametrize("broken", ["missing", "truncated", "not-a-checkpoint"])
def test_rescore_of_a_missing_or_corrupt_checkpoint_is_one_line(
    evaluated_run, tmp_path, broken, capsys
):
    path = tmp_path / "ckpt.pt"
    if broken == "truncated":
        path.write_bytes(list_checkpoints(evaluated_run)[0][1].read_bytes()[:1000])
    elif broken == "not-a-checkpoint":
        torch.save({"G": {}}, path)
    argv = [str(evaluated_run), "eval.metrics=[consistency]", "--checkpoint", str(path)]
    assert evaluate_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
