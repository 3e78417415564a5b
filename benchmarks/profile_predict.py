"""Where the time of classifying one 30 s file goes (the profile behind NOTES.md, "Speed: the targets and the profiles").

    python benchmarks/profile_predict.py

A 30 s 22.05 kHz WAV and an untrained ViT-tiny (64 mels, 3 s windows), medians of 20 runs:
decoding, resampling to 16 kHz, the log-mel, the ViT on the file's windows in fp32 and bf16,
the whole `Classifier.predict`, the ViT with the training kernel (SDPA) in place of inference's
plain softmax(QKᵀ)V, and one attention layer's two kernels alone. Prints only; the machine's
timings move by 10-30 % between runs.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
import torch.nn.functional as F

from audiovit import checkpoint
from audiovit.features import file_log_mel
from audiovit.inference import frame_windows, load_model
from audiovit.model import ViT
from audiovit.train import TrainConfig


def ms(fn, repeats: int = 20) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def sdpa_forward(model: ViT, windows: torch.Tensor, amp) -> torch.Tensor:
    """The forward with grad mode on, where Attention uses scaled_dot_product_attention (the
    training kernel) instead of inference's plain softmax(QKᵀ)V."""
    with torch.enable_grad(), torch.autocast("cpu", dtype=amp, enabled=amp is not None):
        return model(windows)


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    wav = tmp / "clip.wav"
    x = np.random.default_rng(0).standard_normal(22050 * 30).astype(np.float32) * 0.1
    sf.write(wav, x, 22050)
    cfg = TrainConfig()
    fcfg = cfg.feature_config()
    model = ViT(cfg.model_config(n_classes=10, n_frames=304))
    checkpoint.save_model(tmp / "model.pt", model, fcfg, [str(i) for i in range(10)])
    clf = load_model(tmp / "model.pt", device="cpu")
    bf16 = clf.amp
    with torch.inference_mode():
        feats = file_log_mel(wav, clf.logmel)
        windows, _ = frame_windows(feats, clf.win, clf.hop_frames(None))
        y16 = soxr.resample(x, 22050, fcfg.sr)
        rows = {
            "decode (soundfile)": ms(lambda: sf.read(wav, dtype="float32")),
            "resample 22.05 → 16 kHz (soxr HQ)": ms(lambda: soxr.resample(x, 22050, fcfg.sr)),
            "log-mel of 30 s": ms(lambda: clf.logmel(torch.from_numpy(y16))),
            "decode + resample + log-mel (file_log_mel)": ms(lambda: file_log_mel(wav, clf.logmel)),
        }
        for name, amp in (("fp32", None), ("bf16", bf16)):
            if name == "bf16" and amp is None:
                continue  # this CPU has no fast bf16
            clf.amp = amp
            rows[f"ViT on {len(windows)} windows, {name}"] = ms(lambda: clf.window_probs(windows))
            rows[f"ViT on {len(windows)} windows, {name}, SDPA attention"] = ms(
                lambda amp=amp: sdpa_forward(clf.model, windows, amp)
            )
            rows[f"Classifier.predict, {name}"] = ms(lambda: clf.predict(wav))
        for dtype in (torch.float32, torch.bfloat16):
            q, k, v = (torch.randn(len(windows), 3, 77, 64, dtype=dtype) for _ in range(3))
            name = str(dtype).removeprefix("torch.")
            rows[f"attention, one layer, SDPA, {name}"] = ms(
                lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v), 200
            )
            rows[f"attention, one layer, softmax(QKᵀ)V, {name}"] = ms(
                lambda q=q, k=k, v=v: (q @ k.transpose(-2, -1) * 0.125).softmax(-1) @ v, 200
            )
    width = max(map(len, rows))
    for name, t in rows.items():
        print(f"{name:<{width}}  {t:7.2f} ms")


if __name__ == "__main__":
    main()
