"""sagan.training.machine: the one description of the machine a benchmark ran on."""

from __future__ import annotations

import json

import torch

from sagan.training.machine import describe, machine


def test_machine_names_cpu_cores_torch_and_device():
    info = machine("cpu")
    assert info["cpu"] and info["cores"] >= 1 and info["torch_threads"] >= 1
    assert info["torch"] == torch.__version__ and info["device"] == "cpu"
    assert "gpu" not in info  # only for a CUDA device
    json.dumps(info)
    line = describe(info)
    assert line.startswith(f"cpu {info['cpu']}, cores {info['cores']}") and "device cpu" in line


def test_the_loader_benchmark_times_the_folder_and_its_prepared_copy(tmp_path, monkeypatch, capsys):
    from sagan.benchmarks.loader import main
    from sagan.data import identity as di

    monkeypatch.setenv(di.CACHE_ENV, str(tmp_path / "cache"))
    argv = ["--images", "24", "--size", "60x45", "--resolution", "32", "--workers", "0,1"]
    assert main([*argv, "--batch-size", "4", "--batches", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("machine: cpu ")
    rates = [line for line in lines if line.endswith("images/s")]
    assert [r.split("  ")[0].strip() for r in rates] == [
        "folder, 0 workers",
        "folder, 1 workers",
        "prepared",
    ]
    assert all(float(r.split()[-2]) > 0 for r in rates)
