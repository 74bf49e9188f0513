"""sagan.benchmarks.machine: the one description of the machine a benchmark ran on."""

from __future__ import annotations

import json

import torch

from sagan.benchmarks.machine import describe, machine


def test_machine_names_cpu_cores_torch_and_device():
    info = machine("cpu")
    assert info["cpu"] and info["cores"] >= 1 and info["torch_threads"] >= 1
    assert info["torch"] == torch.__version__ and info["device"] == "cpu"
    assert "gpu" not in info  # only for a CUDA device
    json.dumps(info)
    line = describe(info)
    assert line.startswith(f"cpu {info['cpu']}, cores {info['cores']}") and "device cpu" in line
