"""sagan.bench --gpu-check: without CUDA one line and exit 0; every check's code runs at
tiny sizes on the CPU (its figures mean nothing there); a check past its budget is
recorded as such and costs only itself."""

import json

import pytest
import torch

from sagan.bench import main as bench_main
from sagan.benchmarks import gpu_check
from sagan.data import identity as di


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv(di.CACHE_ENV, str(tmp_path / "cache"))


def test_without_cuda_it_says_so_in_one_line_and_exits_0(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gc.json"
    assert bench_main(["--gpu-check", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and printed[0].startswith("gpu-check: no CUDA device here")
    assert not out.exists()


def test_cpu_without_tiny_is_refused(capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--device", "cpu"])
    assert "only with --tiny" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(gpu_check.CHECKS))
def test_each_check_runs_at_tiny_size_on_the_cpu(name, tmp_path):
    check, budget = gpu_check.CHECKS[name]
    assert budget > 0
    result = check("cpu", True, tmp_path)
    json.dumps(result)  # what the driver writes
    if name == "ddp_devices":
        assert result["all_reduce_ok"] and [r["device"] for r in result["ranks"]] == ["cpu"] * 2
    if name == "resume":
        assert set(result["max_abs_weight_difference"]) == {"G", "D"}
        assert result["bit_identical"]  # on the CPU a resume is exact
    if name == "attention":
        assert len(result["cases"]) == 8  # 2 variants x feat32, feat64 x fp32, bf16
    if name in ("step128", "cudnn_benchmark", "attention_memory"):
        for c in result["cases"]:
            assert c["above_ceiling"] or 0 < c["fraction_of_ceiling"] <= 1
    if name == "step128":
        assert [c["ceiling_key"] for c in result["cases"]] == ["fp32", "fp32", "bf16"]
    if name == "loader":
        assert [c["source"] for c in result["cases"]][-1] == "prepared"
    if name == "fid50k":
        assert set(result["timing"]) >= {"reference_s", "generate_extract_s", "metrics_s"}
    if name == "compile":
        assert result["graph_breaks"] == 0 and result["unique_graphs"] > 0


def test_the_driver_writes_one_json_and_a_check_past_its_budget_costs_only_itself(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(gpu_check.CHECKS, "resume", (gpu_check.check_resume, 1))
    monkeypatch.setattr(gpu_check, "TINY_BUDGET_S", {"resume": 1})
    out = tmp_path / "gc.json"
    argv = ["--device", "cpu", "--tiny", "--only", "resume", "--only", "attention"]
    assert gpu_check.main([*argv, "--out", str(out)]) == 1
    report = json.loads(out.read_text())
    assert report["machine"]["device"] == "cpu" and report["tiny"] is True
    assert report["checks"]["resume"]["status"] == "timeout"
    assert report["checks"]["attention"]["status"] == "ok"
    assert len(report["checks"]["attention"]["result"]["cases"]) == 8
    assert "resume             timeout" in capsys.readouterr().out
