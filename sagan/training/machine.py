"""What a benchmark ran on, so that its numbers can be compared across machines."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX); without it, torch
    emulates bf16 matmuls and convolutions, far slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def machine(device: torch.device | str | None = None) -> dict[str, Any]:
    """CPU model, core count, torch threads, torch/Python versions and the device.

    Args:
        device: where the benchmark ran; ``None`` means the current CUDA device when
            one is available, else the CPU.

    Returns:
        ``{"cpu", "cores", "torch_threads", "torch", "python", "device"}``, plus ``"gpu"``
        (the CUDA device's name) and ``"cuda"`` (the CUDA version torch was built
        with) when ``device`` is a CUDA device. JSON-serialisable.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cpu":
        info["cpu_bf16"] = cpu_has_bf16()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def describe(info: dict[str, Any]) -> str:
    """One line for a printout: ``cpu AMD EPYC ..., cores 2, torch_threads 2, ...``."""
    return ", ".join(f"{key} {value}" for key, value in info.items())


__all__ = ["cpu_has_bf16", "cpu_model", "describe", "machine"]
