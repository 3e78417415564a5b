"""Time one ViT training step (forward, backward, clipping, AdamW) with the optimiser's fused
kernel and with its per-tensor loop, on random crops of a given length.

    python benchmarks/train_step.py                 # FSDD-sized crops (48 frames) and 3 s (304)
    python benchmarks/train_step.py --frames 48 --repeats 30
    python benchmarks/train_step.py --side-by-side  # + two 1-thread processes at once (fused)
    python benchmarks/train_step.py --precision fp32   # or bf16: whatever training would use

Prints the median milliseconds per step of each; the precision follows the hardware as training
does (bf16 autocast where it measures faster: device.cpu_bf16_is_faster) unless ``--precision``
says, to see what autocast buys or costs at each crop length.
``--side-by-side`` also runs the fused step in this many processes at once, each with one
thread, and prints their clips/s together against this process's own (NOTES.md, "Throughput and
the budget": would two folds trained at once finish sooner than one after the other?).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from audiovit.device import autocast_dtype
from audiovit.model import ModelConfig, ViT


def step_ms(
    frames: int, fused: bool, repeats: int, amp: torch.dtype | None, batch: int = 32
) -> float:
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("tiny", n_classes=10, n_mels=64, n_frames=frames, stem="conv",
                                  drop_path=0.1)  # fmt: skip
    model = ViT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    x, y = torch.randn(batch, 64, frames), torch.randint(0, 10, (batch,))
    times = []
    for i in range(repeats + 3):  # 3 warm-up steps
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, nargs="+", default=[48, 304])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument(
        "--side-by-side",
        type=int,
        nargs="?",
        const=2,
        default=0,
        metavar="N",
        help="also time the fused step in N one-thread processes at once (N=2)",
    )
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast where it measures faster, as training")  # fmt: skip
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # fmt: skip
    args = p.parse_args()
    amp = {"fp32": None, "bf16": torch.bfloat16}.get(args.precision, "auto")
    amp = autocast_dtype(torch.device("cpu")) if amp == "auto" else amp
    if args.child:  # one process of --side-by-side: print its fused step's milliseconds
        torch.set_num_threads(1)
        print(step_ms(args.frames[0], True, args.repeats, amp))
        return
    print(f"ViT-tiny, batch 32, {torch.get_num_threads()} threads, amp {amp}")
    for frames in args.frames:
        loop, fused = (step_ms(frames, f, args.repeats, amp) for f in (False, True))
        print(f"{frames:4d} frames: per-tensor AdamW {loop:6.1f} ms/step, fused {fused:6.1f} "
              f"({100 * (1 - fused / loop):+.0f} % time saved)")  # fmt: skip
        if args.side_by_side:
            cmd = [sys.executable, __file__, "--child", "--frames", str(frames),
                   "--repeats", str(args.repeats), "--precision", args.precision]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
                     for _ in range(args.side_by_side)]  # fmt: skip
            each = [float(p.communicate()[0]) for p in procs]
            together = sum(32_000 / ms for ms in each)
            print(
                f"      {args.side_by_side} one-thread processes at once: "
                f"{', '.join(f'{ms:.0f}' for ms in each)} ms/step, {together:.0f} clips/s "
                f"together against {32_000 / fused:.0f} ({together * fused / 32_000 - 1:+.0%})"
            )


if __name__ == "__main__":
    main()
