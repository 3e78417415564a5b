"""Speed benchmark: features against librosa, training throughput per preset, prediction
latency and the cost of an hour of audio. Writes benchmarks/results/speed.{md,json}.

    python benchmarks/speed.py [--repeats 5] [--quick]

Medians over repeats, all on synthetic audio written to a temporary folder. librosa is a
benchmark-only reference (it is in the test extras).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from audiovit import audio, checkpoint
from audiovit.features import FeatureConfig, LogMel, file_log_mel
from audiovit.inference import load_model
from audiovit.model import PRESETS, ModelConfig, ViT, autocast_dtype

RESULTS = Path(__file__).resolve().parent / "results"


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_features(clips: list[Path], repeats: int) -> dict:
    import librosa

    cfg = FeatureConfig()
    lm = LogMel(cfg)
    seconds = sum(sf.info(str(p)).duration for p in clips)
    waves = [audio.load(p, sr=cfg.sr) for p in clips]
    kw = dict(
        sr=cfg.sr,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        n_mels=cfg.n_mels,
    )

    def ours_decoded():
        with torch.inference_mode():
            for p in clips:
                file_log_mel(p, lm)

    def ours_features():
        with torch.inference_mode():
            for w in waves:
                lm(torch.from_numpy(w))

    def librosa_decoded():
        for p in clips:
            y, _ = librosa.load(p, sr=cfg.sr)
            librosa.power_to_db(librosa.feature.melspectrogram(y=y, **kw))

    def librosa_features():
        for w in waves:
            librosa.power_to_db(librosa.feature.melspectrogram(y=w, **kw))

    rows = {name: seconds / median_time(fn, repeats) for name, fn in [
        ("audiovit, decode + log-mel", ours_decoded), ("librosa, load + melspectrogram", librosa_decoded),
        ("audiovit, log-mel only", ours_features), ("librosa, melspectrogram only", librosa_features)]}  # fmt: skip
    return {
        "audio_seconds_per_second": rows,
        "clips": len(clips),
        "clip_seconds": seconds / len(clips),
    }


def bench_training(repeats: int, quick: bool) -> dict:
    out = {}
    cpu_amp = autocast_dtype(torch.device("cpu"))
    for preset in ["tiny"] if quick else list(PRESETS):
        model = ViT(ModelConfig.from_preset(preset, n_classes=10, n_frames=304))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x, y = torch.randn(16, 128, 304) * 20 - 50, torch.randint(0, 10, (16,))
        for amp in [None, cpu_amp] if cpu_amp else [None]:

            def step():
                with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
                    loss = torch.nn.functional.cross_entropy(model(x).float(), y)
                opt.zero_grad()
                loss.backward()
                opt.step()

            t = median_time(step, max(2, repeats if preset == "tiny" else 2))
            out[f"{preset} {'bf16' if amp else 'fp32'}"] = len(x) / t
    return {"clips_per_second_3s_crops": out}


def bench_prediction(tmp: Path, repeats: int, quick: bool) -> dict:
    model = ViT(ModelConfig.from_preset("tiny", n_classes=10, n_frames=304))
    checkpoint.save_model(tmp / "model.pt", model, FeatureConfig(), [str(i) for i in range(10)])
    clip = tmp / "clip30.wav"
    sf.write(
        clip, np.random.default_rng(0).standard_normal(22050 * 30).astype(np.float32) * 0.1, 22050
    )
    clf = load_model(tmp / "model.pt", device="cpu")
    rows = {
        f"30 s file, hop {h}": median_time(lambda h=h: clf.predict(clip, hop_s=h), repeats)
        for h in (1.5, 3.0)
    }
    minutes = 10 if quick else 60
    long = tmp / "long.flac"
    with sf.SoundFile(long, "w", 16000, 1) as f:
        for _ in range(minutes):
            f.write(np.random.default_rng(1).standard_normal(16000 * 60).astype(np.float32) * 0.05)
    # Peak memory from VmHWM: unlike ru_maxrss, it starts afresh at exec, so the child does not
    # inherit this (much larger) benchmark process's high-water mark.
    code = (
        "import time, sys; from audiovit import load_model; clf = load_model(sys.argv[1], device='cpu');"
        "t = time.perf_counter(); clf.predict(sys.argv[2], hop_s=3.0); dt = time.perf_counter() - t;"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1];"
        "print(dt, int(hwm) / 1024)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, tmp / "model.pt", long],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds, peak_mb = map(float, r.stdout.split())
    return {"latency_s": rows, "long_file": {"minutes": minutes, "seconds": seconds, "peak_rss_mb": peak_mb,
            "hours_per_minute": minutes / 60 / (seconds / 60)}}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="tiny preset only, a 10-minute long file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        clips = []
        for i in range(5):
            clips.append(tmp / f"c{i}.wav")
            sf.write(
                clips[-1],
                np.random.default_rng(i).standard_normal(22050 * 30).astype(np.float32) * 0.1,
                22050,
            )
        res = {
            "date": str(date.today()), "machine": platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "features": bench_features(clips, args.repeats),
            "training": bench_training(args.repeats, args.quick),
            "prediction": bench_prediction(tmp, args.repeats, args.quick),
        }  # fmt: skip
    res["cpu_model"] = _cpu_model()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "speed.json").write_text(json.dumps(res, indent=2))
    (RESULTS / "speed.md").write_text(render(res))
    print(render(res))


def _cpu_model() -> str:
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    ):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def render(r: dict) -> str:
    f = r["features"]["audio_seconds_per_second"]
    lines = [f"# Speed ({r['date']}, {r['cpu_model']}, {r['cpu_threads']} threads, torch {r['torch']})", "",
             "Command: `python benchmarks/speed.py`", "", "## Log-mel features, 30 s clips",
             "| route | audio-seconds per second | vs librosa |", "|---|---|---|"]  # fmt: skip
    ref = {
        "audiovit, decode + log-mel": "librosa, load + melspectrogram",
        "audiovit, log-mel only": "librosa, melspectrogram only",
    }
    for name, v in f.items():
        ratio = f"{v / f[ref[name]]:.1f}×" if name in ref else ""
        lines.append(f"| {name} | {v:.0f} | {ratio} |")
    lines += [
        "",
        "## Training throughput (batch 16, 3 s crops, 128 mels)",
        "| preset | clips/s |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.1f} |" for k, v in r["training"]["clips_per_second_3s_crops"].items()]
    p = r["prediction"]
    lines += ["", "## Prediction (ViT-tiny, fp32, warm)", "| case | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in p["latency_s"].items()]
    lf = p["long_file"]
    lines += ["", f"{lf['minutes']} minutes of audio (FLAC, hop 3 s): {lf['seconds']:.1f} s, "
              f"{lf['hours_per_minute']:.1f} hours of audio per minute, peak RSS {lf['peak_rss_mb']:.0f} MB.", ""]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
