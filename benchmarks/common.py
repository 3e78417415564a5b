"""What the benchmark scripts share: where results go, and how a machine is named in them.

The scripts run as ``python benchmarks/NAME.py``, so this folder is on ``sys.path`` and they
import this module by name; the tests reach it through pytest's ``pythonpath`` setting.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from audiovit.device import cpu_bf16_flags

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what the platform says)."""
    path = Path("/proc/cpuinfo")
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "CPU"


def cpu_label() -> str:
    """The CPU's model name and bf16 units: 'Intel(R) Xeon(R) Processor (AVX-512 BF16)'. The
    units matter: CPUs with one model name differ in them, and train and score differently."""
    return f"{cpu_model()} ({' + '.join(cpu_bf16_flags()) or 'no bf16 units'})"


def hardware(device: torch.device, workers: int = 1) -> str:
    """The device, and on a CPU its bf16 units and how its threads were used: 'CPU (AMX +
    AVX-512 BF16), 2 threads', or 'CPU (no bf16 units), 2 folds at once, 1 thread each'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    cpu = cpu_label()
    if workers > 1:
        per = max(1, threads // workers)
        return f"{cpu}, {workers} folds at once, {per} thread{'s' if per > 1 else ''} each"
    return f"{cpu}, {threads} threads"
