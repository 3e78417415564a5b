"""What several test modules share: the fast training settings, synthetic signals, the CLI
as a subprocess, and checkpoints in foreign layouts."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import torch

from audiovit import data
from audiovit.model import ModelConfig, ViT

# A configuration small enough to train in seconds: the default recipe on short crops.
FAST = dict(epochs=12, n_mels=32, max_crop_s=0.5, batch_size=16, warmup_epochs=1.0, amp=False)


def sine(seconds: float, sr: int = 16000, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def run(*args, check=True):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run(
        [sys.executable, "-m", "audiovit", *map(str, args)], capture_output=True, text=True, env=env
    )
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r


def one_line(r, *names) -> bool:
    """A CLI run that failed with exit 2 and one line on stderr naming each of ``names``."""
    return (
        r.returncode == 2
        and r.stderr.count("\n") == 1
        and "Traceback" not in r.stderr
        and all(n in r.stderr for n in names)
    )


def fast_flags(**over):
    cfg = {**FAST, **over}
    flags = []
    for k, v in cfg.items():
        flag = "--" + k.replace("_", "-")
        flags += (
            [flag if v else f"--no-{k.replace('_', '-')}"] if isinstance(v, bool) else [flag, v]
        )
    return flags


def splits(root, seed: int = 0):
    """A dataset read from ``root`` and its automatic 70/15/15 split."""
    ds = data.load_dataset(root)
    return ds, data.make_splits(ds, data.SplitOptions(seed=seed, valid_frac=0.15, test_frac=0.15))


def imagenet_state(width=64, heads=4, layers=2, patch=16, side=14, deit=False) -> dict:
    """A state dict in timm's VisionTransformer layout, as an ImageNet checkpoint would hold."""
    cfg = ModelConfig(
        n_classes=1000,
        stem="patch",
        n_mels=patch * side,
        n_frames=patch * side,
        width=width,
        n_layers=layers,
        n_heads=heads,
        patch_size=patch,
        patch_stride=patch,
    )
    state = ViT(cfg).state_dict()
    state["patch_embed.proj.weight"] = torch.randn(width, 3, patch, patch)
    if deit:
        state["dist_token"] = torch.randn(1, 1, width)
        state["pos_embed"] = torch.randn(1, 2 + side * side, width)
        state["head_dist.weight"] = torch.randn(1000, width)
    return state
