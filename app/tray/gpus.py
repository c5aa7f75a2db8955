"""Detect GPUs without importing torch: ask ``nvidia-smi`` when it is installed.

The tray must never import torch (it costs hundreds of MB and seconds), so Preferences
learns the GPUs from the driver's own tool. No tool, no GPU rows: the GPU switch stays,
greyed out, with a note.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

__all__ = ["GpuInfo", "detect_gpus", "parse_nvidia_smi"]

NVIDIA_SMI_TIMEOUT_S = 3.0  # a wedged driver must not freeze the Preferences window


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    memory_mb: int


def parse_nvidia_smi(output: str) -> list[GpuInfo]:
    """Parse ``--query-gpu=index,name,memory.total --format=csv,noheader,nounits``."""
    gpus = []
    for line in output.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3:
            continue
        try:
            gpus.append(
                GpuInfo(
                    index=int(parts[0]),
                    name=", ".join(parts[1:-1]),
                    memory_mb=int(float(parts[-1])),
                )
            )
        except ValueError:
            continue
    return gpus


def detect_gpus() -> list[GpuInfo]:
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return []
    try:
        result = subprocess.run(
            [tool, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if result.returncode != 0:
        return []
    return parse_nvidia_smi(result.stdout)
