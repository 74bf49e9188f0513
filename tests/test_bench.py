"""sagan.bench: the speed benchmark runs the real step on a tiny config and says what it
measured; the CPU fast paths (channels_last, bf16 autocast) train and resume exactly.

No test here asserts a speed: speed is shown by the benchmark, not by tests.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from sagan.bench import main
from sagan.benchmarks.step import add_fractions, cases, matmul_ceiling, precision_key, table

TINY = ["model.ch=8", "model.z_dim=8", "train.batch_size=4", "data.synthetic.n_images=64"]


def test_the_benchmark_writes_every_field_for_every_case(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = [*TINY, "--sweep", "train.channels_last=false,true", "--steps", "2", "--warmup", "1"]
    assert main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["ceiling_flops"]) == {"fp32"}  # only the precision the cases use
    assert all(v > 0 for v in result["ceiling_flops"].values())
    assert "case's precision" in result["ceiling_kind"]
    assert [c["channels_last"] for c in result["cases"]] == [False, True]
    for c in result["cases"]:
        assert c["ms_per_step"] > 0 and c["img_per_s"] > 0 and c["peak_mem_gib"] > 0
        assert c["flops_per_step"] > 0 and c["achieved_tflops"] > 0
        assert c["ceiling_key"] == "fp32" and c["tf32"] is False
        assert c["above_ceiling"] or 0 < c["fraction_of_ceiling"] <= 1
        assert c["machine"]["device"] == "cpu" and c["peak_mem_kind"] == "peak RSS"
    # The same step has the same FLOPs in either memory format.
    assert result["cases"][0]["flops_per_step"] == result["cases"][1]["flops_per_step"]
    printed = capsys.readouterr().out
    assert "1.00x" in printed and "machine: cpu" in printed and f"wrote {out}" in printed


def test_sweeps_multiply_out_and_lists_are_written_with_semicolons():
    got = cases(["a=1"], ["train.amp=false,true", "model.attn_g=[];[8,16]"])
    assert got == [
        ["a=1", "train.amp=false", "model.attn_g=[]"],
        ["a=1", "train.amp=false", "model.attn_g=[8,16]"],
        ["a=1", "train.amp=true", "model.attn_g=[]"],
        ["a=1", "train.amp=true", "model.attn_g=[8,16]"],
    ]
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        cases([], ["train.amp"])


def test_a_bad_case_is_refused_before_anything_is_timed(capsys):
    assert main([*TINY, "--sweep", "train.batch_size=4,five"]) == 2
    err = capsys.readouterr().err
    assert "train.batch_size" in err and "five" in err


def test_the_matmul_ceiling_is_a_rate():
    assert matmul_ceiling(torch.device("cpu"), torch.float32, n=128) > 1e6


def _bench_file(tmp_path, cells, ms):
    """A sagan.bench file with one case: the step of ``cells[0]`` at ``ms`` per step."""
    from sagan.benchmarks.step import step_fields

    case = step_fields(cells[0].config) | {"ms_per_step": ms}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"cases": [case], "machine": {"gpu": "a test GPU"}}))
    return path


def test_the_cost_estimate_multiplies_steps_left_by_the_benchmarked_step(tmp_path):
    from ablations.cost import estimate, load_bench
    from ablations.grid import load_grid

    cells = load_grid("ablations/grids/smoke.yaml").cells
    feat16 = [c for c in cells if c.levels["attention"] == "feat16"]
    table, machine = load_bench(_bench_file(tmp_path, feat16, 1000.0))
    assert machine == "gpu a test GPU"
    secs = estimate(cells, {feat16[0].run_id: 10}, table)
    assert secs[feat16[0].run_id] == 20.0  # 30 steps, 10 done, 1 s each
    assert all(secs[c.run_id] == 30.0 for c in feat16[1:])
    assert all(secs[c.run_id] is None for c in cells if c not in feat16)  # another step


def test_a_bench_file_from_before_train_compile_costs_eager_steps(tmp_path):
    from ablations.cost import estimate, load_bench
    from ablations.grid import load_grid

    cells = load_grid("ablations/grids/smoke.yaml").cells
    path = _bench_file(tmp_path, cells, 1000.0)
    old = json.loads(path.read_text())
    del old["cases"][0]["compile"]  # written before the field existed
    path.write_text(json.dumps(old))
    table, _ = load_bench(path)
    assert estimate(cells[:1], {}, table)[cells[0].run_id] == 30.0
    compiled = cells[0].config.model_copy(deep=True)
    compiled.train.compile = True
    cell = dataclasses.replace(cells[0], config=compiled)
    assert estimate([cell], {}, table)[cell.run_id] is None  # a compiled step: not benchmarked


def test_a_dry_run_prints_hours_per_cell_and_in_total(tmp_path, capsys):
    from ablations import run as run_cli
    from ablations.grid import load_grid

    cells = load_grid("ablations/grids/smoke.yaml").cells
    feat16 = [c for c in cells if c.levels["attention"] == "feat16"]
    bench = _bench_file(tmp_path, feat16, 3_600_000.0)  # an hour per step: 30 h per cell
    argv = ["smoke", "--out", str(tmp_path / "runs"), "--dry-run", "--cost-from", str(bench)]
    assert run_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert (
        f"estimated training: 120 device hours for 4 cell(s), from {bench} (gpu a test GPU)" in out
    )
    assert "no estimate for 4 cell(s)" in out and "est. hours" in out
    assert out.count("  run     30\n") == 4 and not (tmp_path / "runs").exists()
    (tmp_path / "bad.json").write_text("{")
    argv[-1] = str(tmp_path / "bad.json")
    assert run_cli.main(argv) == 2
    assert f"--cost-from {tmp_path / 'bad.json'}: not JSON" in capsys.readouterr().err


def test_the_flop_count_includes_the_cpu_attention_kernel():
    """torch's counter has no formula for SDPA's CPU flash kernel; the benchmark adds
    the CUDA one, so attention counts as 2 products of N x M x head size each way."""
    from torch.utils.flop_counter import FlopCounterMode

    from sagan.benchmarks.step import _cpu_attention_flops
    from sagan.nets.attention import SelfAttention
    from sagan.nets.layers import Layers

    m = SelfAttention(64, Layers(sn=False, init="xavier"), "official")
    x = torch.randn(2, 64, 32, 32).to(memory_format=torch.channels_last)
    m = m.to(memory_format=torch.channels_last)
    with FlopCounterMode(display=False, custom_mapping=_cpu_attention_flops()) as counter:
        m(x)
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    b, n, keys, head = 2, 32 * 32, 16 * 16, 64 // 2  # q and k zero-padded to v's C/2
    assert counts["aten._scaled_dot_product_flash_attention_for_cpu"] == 2 * 2 * b * n * keys * head


def _case(tflops, amp=False):
    return {
        "overrides": [],
        "amp": amp,
        "achieved_tflops": tflops,
        "ms_per_step": 10.0,
        "img_per_s": 1.0,
        "peak_mem_gib": 1.0,
        "flops_per_step": 1e9,
        "ceiling_key": "bf16" if amp else "fp32",
    }


def test_a_case_faster_than_its_measured_ceiling_gets_no_share_above_100_percent():
    result = {
        "ceiling_flops": {"fp32": 1e12, "bf16": 4e12},
        "cases": [_case(0.5), _case(1.36), _case(1.0), _case(3.0, amp=True)],
    }
    add_fractions(result)
    got = [(c["fraction_of_ceiling"], c["above_ceiling"]) for c in result["cases"]]
    assert got == [(0.5, False), (None, True), (1.0, False), (0.75, False)]
    printed = table(result)
    assert "above ceiling (no bound)" in printed and "136" not in printed
    assert "%" not in printed.splitlines()[2]


def test_each_case_is_measured_against_the_ceiling_of_its_own_precision():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert precision_key({"amp": False, "tf32": True}, cpu) == "fp32"  # no TF32 on a CPU
    assert precision_key({"amp": False, "tf32": True}, cuda) == "tf32"
    assert precision_key({"amp": False, "tf32": False}, cuda) == "fp32"
    assert precision_key({"amp": True, "tf32": False}, cuda) == "bf16"


def test_cost_times_each_distinct_step_once_with_the_config_as_it_is(monkeypatch):
    """`--dry-run --cost` asks sagan.bench for one case per distinct step, no overrides."""
    import sagan.benchmarks.step
    from ablations import cost
    from ablations.grid import load_grid

    calls = []

    def fake_run_cases(config, overrides, steps, warmup):
        calls.append(overrides)
        return [{"ms_per_step": 5.0, "machine": {}} for _ in overrides]

    monkeypatch.setattr(sagan.benchmarks.step, "run_cases", fake_run_cases)
    cells = load_grid("ablations/grids/smoke.yaml").cells
    table, _ = cost.measure(cells, steps=2)
    assert calls == [[[]]] * len({cost.step_key(c) for c in cells})
    assert set(table.values()) == {5.0}
