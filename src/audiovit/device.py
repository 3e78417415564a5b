"""Where the arithmetic runs: the device, and the autocast dtype it runs fast.

Resolved once, at the edge (the CLI, ``train``, ``load_model``), and passed down.
"""

from __future__ import annotations

import functools
import statistics
import time

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
    """bf16 where the hardware runs it faster than fp32: CUDA with bf16 (else fp16), and CPUs
    whose bf16 matrix products measure faster (:func:`cpu_bf16_is_faster`)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_bf16_is_faster():
        return torch.bfloat16
    return None


def cpu_bf16_flags() -> list[str]:
    """The CPU's bf16 units as torch sees them: 'AMX', 'AVX-512 BF16' (either, both or none)."""
    probes = (("_is_amx_tile_supported", "AMX"), ("_is_avx512_bf16_supported", "AVX-512 BF16"))
    return [name for probe, name in probes if getattr(torch.cpu, probe, lambda: False)()]


@functools.cache
def cpu_bf16_is_faster() -> bool:
    """Whether bf16 autocast beats fp32 at a ViT-tiny MLP's matrix product on this CPU, timed
    once per process (~0.1 s). The flags alone do not tell: an AMD EPYC with AVX-512 BF16 ran
    the model 1.4× faster in bf16, but a Xeon with AVX-512 BF16 and no AMX ran its matrix
    products up to 2× slower than fp32 (benchmarks/NOTES.md, "Speed: the targets and the
    profiles")."""
    if not cpu_bf16_flags():
        return False
    a, b = torch.randn(2432, 192), torch.randn(192, 768)  # 32 crops × 76 tokens, 192 → 768

    def fp32():
        return a @ b

    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return a @ b

    times: dict = {fp32: [], bf16: []}
    for i in range(14):  # interleaved, so that a busy machine slows both alike
        for fn in (fp32, bf16):
            t = time.perf_counter()
            fn()
            if i >= 2:  # warm-up
                times[fn].append(time.perf_counter() - t)
    return statistics.median(times[bf16]) < 0.9 * statistics.median(times[fp32])


PRECISIONS = ("auto", "fp32", "bf16", "int8")  # how a Classifier scores windows


def inference_precision(precision: str, device: torch.device) -> str:
    """``auto`` → bf16 where the hardware runs it faster, else int8 on a CPU (the transformer's
    linear layers dynamically quantized: 1.2-1.4× fp32 on a CPU without fast bf16, benchmarks/
    NOTES.md, "Speed: the targets and the profiles"), else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "int8" and device.type != "cpu":
        raise ValueError("int8 runs on the CPU only (torch's dynamic quantization): --device cpu")
    if precision != "auto":
        return precision
    if autocast_dtype(device) is not None:
        return "bf16"
    return "int8" if device.type == "cpu" else "fp32"


def float_precision(device: torch.device, amp: bool) -> str:
    """What a training run scores its own model with: bf16 autocast where fast (and ``amp``),
    else fp32, never int8, so that its metrics describe the weights it trained."""
    return "bf16" if amp and autocast_dtype(device) is not None else "fp32"
