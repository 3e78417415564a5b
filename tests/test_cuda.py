"""The CUDA paths: features, training (bf16 autocast, pinned memory) and prediction on a GPU,
each checked against the CPU. Skipped where torch sees no GPU (CI has none)."""

import json

import numpy as np
import pytest
import torch

from audiovit import data, load_model
from audiovit.features import FeatureConfig, LogMel
from audiovit.train import TrainConfig, train
from conftest import FAST

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
    on_cpu = load_model(tmp_path / "run" / "model.pt", device="cpu").predict(clip)
    assert on_gpu.label == on_cpu.label
    assert np.abs(on_gpu.probs - on_cpu.probs).max() < 0.05  # bf16 on the GPU, fp32 on the CPU
