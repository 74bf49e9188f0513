"""The run directory's records: best and latest metrics."""

import math

from sagan import rundir


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
