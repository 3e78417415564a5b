"""Where the arithmetic runs: the device, and the autocast dtype it runs fast.

Resolved once, at the edge (the CLI, ``train``, ``load_model``), and passed down.
"""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → CUDA when present, else CPU; anything else names a device that must exist
    (ValueError in one line otherwise)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device {device!r} is not a device (auto, cpu, cuda, cuda:1, ...)"
        ) from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            why = "this torch is a CPU build" if torch.version.cuda is None else "no GPU is visible"
            raise ValueError(f"device {device!r}: CUDA is not available ({why}); use --device cpu")
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"device {device!r}: this machine has {n} CUDA device(s)")
    return dev


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the hardware runs it fast (CUDA with bf16, CPUs with AVX-512 BF16/AMX)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        if any(getattr(torch.cpu, p, lambda: False)() for p in probes):
            return torch.bfloat16
    return None
