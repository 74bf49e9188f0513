"""The run directory's records: best and latest metrics."""

import math

from sagan import rundir


def _record(step, **metrics):
    return {"step": step, "metrics": metrics}


def test_a_nan_first_value_does_not_stay_best():
    status = {}
    rundir.update_best(status, _record(10, fid=math.nan, is_mean=math.nan))
    assert "fid" not in status["best"] and "is_mean" not in status["best"]
    rundir.update_best(status, _record(20, fid=40.0, is_mean=3.0))
    rundir.update_best(status, _record(30, fid=50.0, is_mean=2.0))
    assert status["best"]["fid"] == {"value": 40.0, "step": 20}
    assert status["best"]["is_mean"] == {"value": 3.0, "step": 20}
    assert status["latest"] == {"step": 30, "metrics": {"fid": 50.0, "is_mean": 2.0}}


def test_a_nan_best_written_by_an_older_version_gives_way():
    status = {"best": {"fid": {"value": math.nan, "step": 10}}}
    rundir.update_best(status, _record(20, fid=60.0))
    assert status["best"]["fid"] == {"value": 60.0, "step": 20}
