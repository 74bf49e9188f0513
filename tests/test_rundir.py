"""The run directory's records: best and latest metrics."""

import math

from sagan.training import rundir


def _record(step, pid="p1", **metrics):
    return {"step": step, "metrics": metrics, "protocol_id": pid}


def test_a_nan_first_value_does_not_stay_best():
    status = {}
    rundir.update_best(status, _record(10, fid=math.nan, is_mean=math.nan))
    assert "fid" not in status["best"]["p1"] and "is_mean" not in status["best"]["p1"]
    rundir.update_best(status, _record(20, fid=40.0, is_mean=3.0))
    rundir.update_best(status, _record(30, fid=50.0, is_mean=2.0))
    assert status["best"]["p1"]["fid"] == {"value": 40.0, "step": 20}
    assert status["best"]["p1"]["is_mean"] == {"value": 3.0, "step": 20}
    assert status["latest"] == {
        "step": 30,
        "metrics": {"fid": 50.0, "is_mean": 2.0},
        "protocol_id": "p1",
    }


def test_a_nan_best_written_by_an_older_version_gives_way():
    status = {"best": {"p1": {"fid": {"value": math.nan, "step": 10}}}}
    rundir.update_best(status, _record(20, fid=60.0))
    assert status["best"]["p1"]["fid"] == {"value": 60.0, "step": 20}


def test_numbers_of_different_protocols_are_never_compared():
    status = {}
    rundir.update_best(status, _record(10, "p1", fid=40.0))
    rundir.update_best(status, _record(20, "p2", fid=90.0))
    assert status["best"]["p1"]["fid"]["value"] == 40.0
    assert status["best"]["p2"]["fid"]["value"] == 90.0


def test_a_best_from_before_protocol_ids_is_kept_apart():
    status = {"best": {"fid": {"value": 30.0, "step": 10}}}
    rundir.update_best(status, _record(20, "p1", fid=60.0))
    assert status["best"] == {
        "unknown": {"fid": {"value": 30.0, "step": 10}},
        "p1": {"fid": {"value": 60.0, "step": 20}},
    }


def test_an_append_after_a_torn_last_line_keeps_the_new_record(tmp_path):
    path = tmp_path / "eval.jsonl"
    rundir.append_jsonl(path, {"step": 10})
    with open(path, "a") as f:
        f.write('{"step": 20, "metr')  # killed mid-write: no newline
    rundir.append_jsonl(path, {"step": 30})
    assert rundir.read_jsonl(path) == [{"step": 10}, {"step": 30}]
    assert path.read_text().endswith("\n")


def test_an_append_to_an_empty_or_missing_file_writes_one_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rundir.append_jsonl(path, {"step": 1})
    path.with_name("empty.jsonl").write_text("")
    rundir.append_jsonl(path.with_name("empty.jsonl"), {"step": 2})
    assert path.read_text() == '{"step": 1}\n'
    assert path.with_name("empty.jsonl").read_text() == '{"step": 2}\n'


def test_an_unreadable_line_is_skipped_and_reported_with_its_line_number(tmp_path, caplog):
    path = tmp_path / "eval.jsonl"
    path.write_text('{"step": 10}\n{"step": 2\n{"step": 30}\n')
    with caplog.at_level("WARNING", logger="sagan.training.rundir"):
        assert rundir.read_jsonl(path) == [{"step": 10}, {"step": 30}]
    assert f"{path}:2" in caplog.text


def test_a_last_record_missing_only_its_newline_is_kept(tmp_path):
    path = tmp_path / "env.jsonl"
    path.write_text('{"attempt": 1}\n{"attempt": 2}')
    rundir.append_jsonl(path, {"attempt": 3})
    assert [r["attempt"] for r in rundir.read_jsonl(path)] == [1, 2, 3]


def test_a_torn_tail_longer_than_one_read_is_cut_whole(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "blob": "' + "x" * 10000)
    rundir.append_jsonl(path, {"step": 3})
    assert path.read_text() == '{"step": 1}\n{"step": 3}\n'


def test_the_first_rank_to_fail_in_this_attempt_is_the_one_named(tmp_path, monkeypatch):
    import time as time_mod

    clock = iter([100.0, 200.0, 201.0])
    monkeypatch.setattr(time_mod, "time", lambda: next(clock))
    rundir.write_rank_error(tmp_path, 2, "RuntimeError: an old attempt's")
    rundir.write_rank_error(tmp_path, 1, "ValueError: the cause")
    rundir.write_rank_error(tmp_path, 0, "RuntimeError: Connection closed by peer")
    assert rundir.first_rank_error(tmp_path, since=150.0) == "rank 1: ValueError: the cause"
    assert rundir.first_rank_error(tmp_path, since=300.0) is None


def test_fault_points_are_off_unless_named(monkeypatch):
    import pytest

    from sagan.training import faults

    faults._points.cache_clear()
    monkeypatch.setenv(faults.ENV, "rank1-step5, rank0-eval")
    try:
        faults.raise_at("rank0-step5")
        with pytest.raises(faults.FaultInjected, match="at rank1-step5"):
            faults.raise_at("rank1-step5")
    finally:
        faults._points.cache_clear()
