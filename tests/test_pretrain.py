"""Masked-spectrogram pretraining on procedural audio and on recordings, and starting from it."""

import json

import numpy as np
import pytest
import torch

from audiovit import checkpoint, synth
from audiovit.model import ViT
from audiovit.pretrain import (
    MaskedAutoencoder,
    PretrainConfig,
    PretrainError,
    patchify,
    pretrain,
    random_mask,
    unpatchify_mask,
)
from audiovit.pretrained import start_settings
from audiovit.train import TrainConfig, train
from helpers import FAST, run, splits

# a backbone small enough to pretrain in seconds
TINY = dict(depth=2, crop_s=1.0, batch_size=16, bank=8, refresh=1, warmup_steps=5, lr=1e-3,
            amp=False)  # fmt: skip


def test_procedural_clips_are_seeded_finite_and_varied():
    a = synth.procedural_clip(np.random.default_rng(1), 2.0)
    b = synth.procedural_clip(np.random.default_rng(1), 2.0)
    c = synth.procedural_clip(np.random.default_rng(2), 2.0)
    assert a.shape == (32000,) and a.dtype == np.float32 and np.isfinite(a).all()
    assert np.array_equal(a, b) and not np.allclose(a, c)
    assert 0.05 < np.abs(a).max() <= 1.0


@pytest.mark.parametrize("stem", ["conv", "patch"])
def test_a_hidden_patch_reaches_the_encoder_through_no_path(stem):
    cfg = PretrainConfig(**{**TINY, "stem": stem})
    torch.manual_seed(0)
    mae = MaskedAutoencoder(ViT(cfg.model_config(64)), 32, 1).eval()  # 4 × 4 patches
    g = torch.Generator().manual_seed(0)
    mask = random_mask(2, 16, 0.75, g)
    assert mask.sum(1).tolist() == [12, 12]
    xs = torch.randn(2, 64, 64)
    other = torch.where(unpatchify_mask(mask, (4, 4)).bool(), torch.randn(2, 64, 64) * 5, xs)
    with torch.no_grad():
        h, keep = mae.encode(xs, mask)
        h2, _ = mae.encode(other, mask)
        h3, _ = mae.encode(xs + (1 - unpatchify_mask(mask, (4, 4))) * 0.5, mask)  # visible moved
    assert h.shape == (2, 1 + 4, 192) and (keep == (~mask).nonzero()[:, 1].view(2, -1)).all()
    torch.testing.assert_close(h, h2)  # the conv stem's 3×3 kernels cross patch borders: zeroed
    assert not torch.allclose(h, h3)


def test_patches_follow_the_stems_token_order():
    x = torch.arange(64 * 48, dtype=torch.float32).view(1, 64, 48)
    p = patchify(x)  # (1, 12, 256): 4 bands of patches × 3 along time
    assert p.shape == (1, 12, 256)
    assert p[0, 1, 0] == x[0, 0, 16] and p[0, 3, 0] == x[0, 16, 0]  # time varies fastest
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[0, 4] = True  # band 1, time 1
    cells = unpatchify_mask(mask, (4, 3))
    assert cells.sum() == 256 and cells[0, 16:32, 16:32].all()


def test_pretraining_lowers_the_loss_and_its_backbone_starts_a_run(synth_root, tmp_path):
    cfg = PretrainConfig(**TINY, steps=60, save_every=30)
    logs = []
    backbone = pretrain(cfg, tmp_path / "pt", log=logs.append)
    losses = [
        json.loads(x)["loss"] for x in (tmp_path / "pt" / "log.jsonl").read_text().splitlines()
    ]
    assert len(losses) == 60 and np.mean(losses[-10:]) < 0.9 * np.mean(losses[:10]), losses
    obj = checkpoint.read_model_file(backbone)
    assert obj["labels"] == [] and obj["meta"]["steps"] == 60 and obj["meta"]["crops"] == 960
    assert "head.weight" not in obj["state_dict"]
    ds, sp = splits(synth_root)
    tcfg = TrainConfig(**{**FAST, **start_settings(backbone), "epochs": 2, "init": str(backbone),
                          "cache_dir": str(tmp_path / "c")})  # fmt: skip
    assert tcfg.n_mels == 64 and tcfg.depth == 2 and tcfg.stem == "conv"
    lines = []
    train(ds, sp, tcfg, tmp_path / "run", log=lines.append)
    assert any("started from" in ln and "a new head" in ln for ln in lines), lines
    meta = checkpoint.read_model_file(tmp_path / "run" / "model.pt")["meta"]
    assert meta["start"]["path"] == str(backbone) and meta["start"]["labels"] == []


def test_a_killed_pretraining_resumes_where_it_was_saved(tmp_path, monkeypatch):
    cfg = PretrainConfig(**TINY, steps=12, save_every=5)
    real, calls = MaskedAutoencoder.forward, []

    def dies_at_step_8(self, x, mask):
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return real(self, x, mask)

    monkeypatch.setattr(MaskedAutoencoder, "forward", dies_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, tmp_path / "pt", log=lambda *a: None)
    monkeypatch.setattr(MaskedAutoencoder, "forward", real)
    logs = []
    pretrain(cfg, tmp_path / "pt", resume=True, log=logs.append)
    assert "resuming after step 5" in logs
    steps = [
        json.loads(x)["step"] for x in (tmp_path / "pt" / "log.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(1, 13))
    with pytest.raises(PretrainError, match="--mask-ratio 0.75 \\(now 0.5\\)"):
        pretrain(PretrainConfig(**TINY, steps=12, save_every=5, mask_ratio=0.5), tmp_path / "pt",
                 resume=True, log=lambda *a: None)  # fmt: skip


def test_pretrain_on_recordings_from_the_command_line(synth_root, tmp_path):
    out = tmp_path / "pt"
    flags = ["--depth", 1, "--crop-s", 0.5, "--batch-size", 8, "--steps", 3, "--no-amp"]
    r = run("pretrain", synth_root, "--out", out, "--synthetic", 0, *flags)
    assert "recordings: 160 files" in r.stdout and "0% procedural audio" in r.stdout
    info = json.loads(run("info", out / "backbone.pt", "--json").stdout)
    assert info["labels"] == [] and info["meta"]["pretrain"]["synthetic"] == 0
    r = run("pretrain", tmp_path / "nowhere", "--out", out, "--synthetic", 0, *flags, check=False)
    assert r.returncode == 2 and "nowhere: not a folder nor a .csv manifest" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
