"""The CUDA paths: features, training (bf16 autocast, pinned memory) and prediction on a GPU,
each checked against the CPU, and data-parallel training with NCCL where there are several GPUs.
Skipped where torch sees no GPU (CI has none)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from audiovit import data, load_model
from audiovit.features import FeatureConfig, LogMel
from audiovit.train import TrainConfig, train
from helpers import FAST, fast_flags, run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_log_mel_on_the_gpu_matches_the_cpu():
    wave = torch.from_numpy(np.random.default_rng(0).standard_normal(16000 * 5).astype(np.float32))
    lm = LogMel(FeatureConfig())
    cpu = lm(wave)
    gpu = lm.to("cuda")(wave.cuda()).cpu()
    assert gpu.shape == cpu.shape
    assert (gpu - cpu).abs().max() < 1e-2  # dB: fp32 on both, rounding only


def test_training_and_prediction_run_on_the_gpu(synth_root, tmp_path):
    ds = data.load_dataset(synth_root)
    splits = data.make_splits(ds, data.SplitOptions(seed=0, valid_frac=0.15, test_frac=0.15))
    lines = []
    cfg = TrainConfig(**{**FAST, "amp": True}, device="cuda", cache_dir=str(tmp_path / "cache"))
    m = train(ds, splits, cfg, tmp_path / "run", log=lines.append)
    assert any("device cuda" in line and "bf16 autocast" in line for line in lines), lines[:3]
    assert m["accuracy"] >= 0.8, m  # chance is 0.25; the CPU run of the same recipe reaches it
    log = [json.loads(r) for r in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["train_loss"] < log[0]["train_loss"]

    clip = splits.test[0].path
    on_gpu = load_model(tmp_path / "run" / "model.pt", device="cuda").predict(clip)
    on_cpu = load_model(tmp_path / "run" / "model.pt", device="cpu", precision="fp32").predict(clip)
    assert on_gpu.label == on_cpu.label
    assert np.abs(on_gpu.probs - on_cpu.probs).max() < 0.05  # bf16 on the GPU, fp32 on the CPU


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs a GPU for each process")
def test_torchrun_with_nccl_trains_like_one_gpu(synth_root, tmp_path, monkeypatch):
    # The conv stem: under torchrun on CUDA its BatchNorm becomes SyncBatchNorm, so the ranks
    # normalise over the global batch as one process does. fp32 without TF32 (the two runs'
    # per-process batches differ in shape, so cuDNN may pick other kernels), no stochastic
    # depth: the runs differ by the GPUs' reduction order alone. Never run yet: the machines
    # lent to this project have one GPU, and NCCL refuses two processes on one.
    n = 4 if torch.cuda.device_count() >= 4 else 2  # the global batch of 16 divides among them
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")  # both runs' processes inherit it
    flags = [*fast_flags(epochs=3, batch_size=16, amp=False), "--drop-path", 0, "--seed", 3,
             "--stem", "conv", "--device", "cuda", "--keep", "last"]  # fmt: skip
    one, many = tmp_path / "one", tmp_path / "many"
    run("train", synth_root, "--out", one, *flags)
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
         "-m", "audiovit", "train", str(synth_root), "--out", str(many), *map(str, flags)],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.count("device cuda:0") == 1 and r.stdout.count("epoch   3 ") == 1  # rank 0
    a, b = (
        [json.loads(x) for x in (d / "log.jsonl").read_text().splitlines()] for d in (one, many)
    )
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert abs(x["train_loss"] - y["train_loss"]) < 1e-3 * abs(x["train_loss"]), (x, y)
        assert abs(x["valid_acc"] - y["valid_acc"]) <= 0.05, (x, y)
