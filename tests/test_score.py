"""Final scoring as its own stage: re-scoring instead of retraining, each number once,
and the best checkpoint kept for it."""

import copy
import shutil
from pathlib import Path

import pytest
import yaml

from ablations import run as run_cli
from ablations import worker
from ablations.grid import load_grid
from ablations.store import EXIT_STOPPED, RunStore
from sagan.config import build_config
from sagan.metrics import final as score
from sagan.train import train
from sagan.training import rundir
from sagan.training.checkpoint import list_checkpoints
from tests import fakeweights
from tests.test_resume import _StopAtCall

fake_weights = fakeweights.fake_weights

GRID = {
    "name": "fin",
    "base": {
        "data": {"name": "synthetic", "resolution": 32, "synthetic": {"n_images": 64}},
        "model": {"ch": 8, "z_dim": 8, "attn_g": [], "attn_d": []},
        "train": {
            "steps": 4,
            "batch_size": 4,
            "log_every": 2,
            "ckpt_every": 2,
            "sample_every": 100,
            "n_samples": 4,
            "device": "cpu",
        },
        "eval": {"metrics": []},
    },
    "final": {"metrics": ["consistency"], "n_samples": 32},
    "seeds": [0, 1],
}


def _write(path: Path, grid: dict) -> Path:
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def _finals(run_dir: Path) -> list[dict]:
    return [r for r in rundir.read_jsonl(run_dir / "eval.jsonl") if r.get("origin") == "final"]


def test_a_changed_final_section_rescores_without_retraining(tmp_path, capsys):
    grid = _write(tmp_path / "g.yaml", GRID)
    assert run_cli.main([str(grid), "--jobs", "2"]) == 0
    store = RunStore(tmp_path / "runs")
    cells = load_grid(grid).cells
    dirs = [store.run_dir(c.run_id) for c in cells]
    first = {d: _finals(d) for d in dirs}
    assert all(
        len(f) == 1 and f[0]["checkpoint"] == "last" and f[0]["step"] == 4 for f in first.values()
    )
    trained = {
        d: (
            rundir.read_status(d)["attempts"],
            (d / "metrics.jsonl").read_text(),
            [p.stat().st_mtime_ns for _, p in list_checkpoints(d)],
        )
        for d in dirs
    }

    capsys.readouterr()
    assert run_cli.main([str(grid), "--dry-run"]) == 0
    assert "to score" not in capsys.readouterr().out  # scored already: nothing owed

    changed = copy.deepcopy(GRID)
    changed["final"]["n_samples"] = 48
    _write(grid, changed)
    assert run_cli.main([str(grid), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "0 to train, 2 to score" in out and out.count("score") >= 3
    assert run_cli.main([str(grid), "--jobs", "2"]) == 0
    for d in dirs:
        finals = _finals(d)
        assert len(finals) == 2, "the older record stays beside the new one"
        assert finals[0] == first[d][0]
        assert finals[1]["protocol"]["n_generated"] == 48
        assert finals[1]["protocol_id"] != finals[0]["protocol_id"]
        status = rundir.read_status(d)
        assert set(status["final"]) == {f["protocol_id"] for f in finals}
        # Not retrained: same attempts, same records, the same checkpoint files untouched.
        assert (
            status["attempts"],
            (d / "metrics.jsonl").read_text(),
            [p.stat().st_mtime_ns for _, p in list_checkpoints(d)],
        ) == trained[d]

    # --rescore looks again, and finds every number already made under its protocol.
    assert run_cli.main([str(grid), "--rescore"]) == 0
    assert all(len(_finals(d)) == 2 for d in dirs)


def _cfg(**overrides):
    base = copy.deepcopy(GRID["base"])
    base["final"] = GRID["final"]
    return build_config(base, overrides)


def test_a_run_killed_while_scoring_is_scored_exactly_once(tmp_path, monkeypatch):
    cfg = _cfg(**{"final": None})
    assert train(cfg, tmp_path) == "done"
    cfg = _cfg()
    import sagan.metrics

    real = sagan.metrics.evaluate_generator

    def killed(*a, **k):
        real(*a, **k)  # the work is done, then the process dies before recording it
        raise KeyboardInterrupt

    monkeypatch.setattr(sagan.metrics, "evaluate_generator", killed)
    with pytest.raises(KeyboardInterrupt):
        score.score_final(cfg, tmp_path)
    assert _finals(tmp_path) == [] and score.owed(cfg, tmp_path)
    monkeypatch.setattr(sagan.metrics, "evaluate_generator", real)
    assert len(score.score_final(cfg, tmp_path)) == 1
    assert not score.owed(cfg, tmp_path)
    assert score.score_final(cfg, tmp_path) == []
    assert score.score_final(cfg, tmp_path, again=True) == []  # made already: not redone
    assert len(_finals(tmp_path)) == 1


def test_best_picks_the_best_monitored_checkpoint_and_keeps_it_through_rotation(tmp_path):
    cfg = _cfg(
        **{
            "train.steps": 12,
            "train.ckpt_every": 2,
            "train.ckpt_keep": 1,
            "eval.every": 2,
            "eval.at_end": True,
            "eval.metrics": ["consistency"],
            "eval.n_samples": 32,
            "final.checkpoint": "both",
            "final.best_by": "consistency",
        }
    )
    assert train(cfg, tmp_path) == "done"
    monitored = [r for r in rundir.read_jsonl(tmp_path / "eval.jsonl") if r["origin"] == "train"]
    best_value = max(r["metrics"]["consistency"] for r in monitored)
    best_step = min(r["step"] for r in monitored if r["metrics"]["consistency"] == best_value)
    status = rundir.read_status(tmp_path)
    assert status["best_checkpoint"]["step"] == best_step
    kept = sorted(step for step, _ in list_checkpoints(tmp_path))
    assert kept == sorted({best_step, 12}), "ckpt_keep 1 plus the best"

    made = score.score_final(cfg, tmp_path)
    assert [(r["checkpoint"], r["step"]) for r in made] == [("last", 12), ("best", best_step)]


def test_best_needs_a_monitored_metric():
    with pytest.raises(Exception, match="final.best_by: 'fid' must be monitored during training"):
        _cfg(
            **{
                "final.checkpoint": "best",
                "final.best_by": "fid",
                "eval.metrics": ["consistency"],
                "eval.every": 2,
            }
        )
    with pytest.raises(Exception, match="final.best_by: final.checkpoint 'best' needs"):
        _cfg(**{"final.checkpoint": "best"})


def test_both_roles_at_one_checkpoint_are_two_records_of_one_computation(tmp_path, monkeypatch):
    cfg = _cfg(
        **{
            "eval.every": 4,
            "eval.metrics": ["consistency"],
            "eval.n_samples": 32,
            "final.checkpoint": "both",
            "final.best_by": "consistency",
        }
    )
    assert train(cfg, tmp_path) == "done"
    assert rundir.read_status(tmp_path)["best_checkpoint"]["step"] == 4  # best == last
    import sagan.metrics

    real, calls = sagan.metrics.evaluate_generator, []
    monkeypatch.setattr(
        sagan.metrics, "evaluate_generator", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    made = score.score_final(cfg, tmp_path)
    assert [(r["checkpoint"], r["step"]) for r in made] == [("last", 4), ("best", 4)]
    assert len(calls) == 1, "one computation serves both roles"
    assert made[0]["metrics"] == made[1]["metrics"] and made[0]["protocol"]["eval_seed"] == 1
    (entry,) = rundir.read_status(tmp_path)["final"].values()
    assert set(entry) == {"last", "best"}
    assert [r["checkpoint"] for r in _finals(tmp_path)] == ["last", "best"]


def test_a_failed_scoring_is_recorded_and_cleared_once_it_succeeds(tmp_path):
    from sagan.metrics.errors import MetricsError

    assert train(_cfg(**{"final": None}), tmp_path) == "done"
    bad = _cfg(**{"final.metrics": ["fid"], "final.inception_weights": str(tmp_path / "no.pth")})
    with pytest.raises(MetricsError):
        score.score_final(bad, tmp_path)
    error = rundir.read_status(tmp_path)["final_error"]
    assert "no.pth" in error["error"] and error["final_key"] == score.final_key(bad)
    assert len(score.score_final(_cfg(), tmp_path)) == 1
    assert "final_error" not in rundir.read_status(tmp_path)


def test_a_stop_during_final_scoring_records_nothing_and_the_next_start_scores_exactly(tmp_path):
    cfg = _cfg(**{"final.batch_size": 8})  # 32 samples: 4 batches, a look before each
    run, ref = tmp_path / "run", tmp_path / "ref"
    assert train(cfg, run) == "done"
    shutil.copytree(run, ref)
    assert worker.run(run, stop=_StopAtCall(2)) == EXIT_STOPPED
    status = rundir.read_status(run)
    assert _finals(run) == [] and score.owed(cfg, run)
    assert status["state"] == "done" and "final_error" not in status, "a stop is no failure"
    assert worker.run(run) == 0

    def unclocked(record):
        return {k: v for k, v in record.items() if k not in ("time", "wall_s", "timing")}

    (want,) = score.score_final(cfg, ref)
    assert [unclocked(r) for r in _finals(run)] == [unclocked(want)]


def test_a_metric_added_to_final_is_scored_alone_and_reported_beside_the_others(
    tmp_path, fake_weights, monkeypatch
):
    import sagan.metrics
    from reports.build import grid_tables
    from reports.frame import no_grid_index, read_store

    run = tmp_path / "runs" / "r"
    assert train(_cfg(**{"final": None}), run) == "done"
    inception = {
        "final.inception_weights": str(fake_weights),
        "final.cache_dir": str(tmp_path / "cache"),
        "final.n_samples": 12,
        "final.batch_size": 12,
        "final.reference.n": 12,
    }
    (first,) = score.score_final(_cfg(**inception, **{"final.metrics": ["fid"]}), run)
    real, calls = sagan.metrics.evaluate_generator, []

    def counted(G, cfg, **kw):
        calls.append(list(cfg.eval.metrics))
        return real(G, cfg, **kw)

    monkeypatch.setattr(sagan.metrics, "evaluate_generator", counted)
    both = _cfg(**inception, **{"final.metrics": ["fid", "kid"]})
    assert score.owed(both, run)
    (added,) = score.score_final(both, run)
    assert calls == [["kid"]], "FID is not computed again"
    assert set(added["metrics"]) == {"kid_mean", "kid_std"}
    fid_id = first["protocol_ids"]["fid"]
    assert added["protocol_ids"] == {"kid_mean": fid_id, "kid_std": fid_id}  # shared fields only
    assert not score.owed(both, run)
    assert score.score_final(both, run, again=True) == [] and len(calls) == 1
    (entry,) = rundir.read_status(run)["final"].values()
    assert entry["last"]["step"] == 4
    assert set(entry["last"]["metrics"]) == {"fid", "kid_mean", "kid_std"}, "merged"
    assert [len(r["metrics"]) for r in _finals(run)] == [1, 2]

    # The report takes the run's FID and KID from its two records, under one id.
    df = read_store(tmp_path / "runs")
    (table,) = grid_tables(df, no_grid_index(df))
    cells = {c.metric: c for c in table["cells"][0]}
    assert set(cells) == {"fid", "kid_mean"}
    assert cells["fid"].mean == first["metrics"]["fid"]
    assert cells["kid_mean"].mean == added["metrics"]["kid_mean"]
    assert {c.protocol_id for c in cells.values()} == {fid_id}
    assert all(c.n == 1 and c.kind == "final" for c in cells.values())

    # IS alone would sample no reference set, and so record another protocol than the
    # planned one: the whole section is computed, and recorded under the planned ids.
    (whole,) = score.score_final(_cfg(**inception, **{"final.metrics": ["fid", "kid", "is"]}), run)
    assert calls[1:] == [["fid", "kid", "is"]]
    assert whole["metrics"]["fid"] == first["metrics"]["fid"]
    assert set(whole["protocol_ids"].values()) == {fid_id}
