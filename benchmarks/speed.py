"""Speed benchmark: audiovit against librosa, the tutorial pipeline and the hardware's own
matmul rate. Writes benchmarks/results/speed.{md,json}.

    python benchmarks/speed.py [--repeats 5] [--quick | --compare]

One run measures, on the same synthetic 30 s clips (written to a temporary folder), medians over
repeats of: log-mel throughput (decode included and not; one file at a time, and the training
feature cache's fill of 2 files at a time) for audiovit, librosa and the tutorial's
render-to-image route (librosa → matplotlib specshow → PNG → PIL → 480×480 RGB); training
throughput per preset in fp32 and bf16, with torch.compile for tiny, and the tutorial's ViT-Base
on 480×480 inputs (900 tokens); end-to-end latency of one 30 s file (torch and onnxruntime)
against the tutorial pipeline; `audiovit predict` over a folder; an hour-long file's time and
peak memory. Model FLOPs come from torch's FlopCounterMode, so the achieved FLOP/s sit next to
the machine's measured matmul FLOP/s. librosa, matplotlib and onnxruntime are benchmark-only
references here (librosa and onnxruntime are in the test extras). Every report opens with the
targets of fast-on-every-CPU, each audiovit figure next to its reference from the same run;
``--compare`` measures only those rows (a couple of minutes) and prints that table.
"""

from __future__ import annotations

import argparse
import io
import json
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
from torch.utils.flop_counter import FlopCounterMode

from audiovit import audio, checkpoint
from audiovit.device import autocast_dtype, cpu_bf16_is_faster
from audiovit.export import export_onnx, load_onnx
from audiovit.features import FeatureCache, FeatureConfig, LogMel, file_log_mel
from audiovit.inference import load_model
from audiovit.model import PRESETS, ModelConfig, ViT
from audiovit.train import TrainConfig
from common import RESULTS, cpu_label

DEFAULTS = TrainConfig()  # what a new user trains: its mel bands and 3 s crops
CROP = 304  # frames in a 3 s window at hop 10 ms, rounded to whole patches (as training does)
CPU = torch.device("cpu")
TUTORIAL_SIDE = 480  # the tutorial's image size: 30 × 30 = 900 patches of 16 × 16
CACHE_WORKERS = 2  # train's feature cache fill: files decoded at once (FeatureCache.get_many)
DECODED = "audiovit, decode + log-mel"
LIBROSA_DECODED = "librosa, load + melspectrogram"
TUTORIAL_TRAINING = "tutorial ViT-Base, 480×480, fp32"
TUTORIAL_PREDICTION = "tutorial (render + ViT-Base 480×480)"
BACK_TO_BACK = "windows back to back (default)"
CACHE_ROUTE = f"audiovit, feature cache fill ({CACHE_WORKERS} files at a time, float16 to disk)"


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_initialized() else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def tutorial_image(y: np.ndarray, sr: int) -> np.ndarray:
    """The tutorial's features: librosa log-mel drawn by matplotlib's specshow, saved as PNG,
    read back with PIL and resized to 480×480 RGB → (480, 480, 3) uint8."""
    import librosa
    import librosa.display
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    S = librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr), ref=np.max)
    fig = plt.figure(figsize=(10, 4))
    librosa.display.specshow(S, sr=sr, x_axis="time", y_axis="mel")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    buf.seek(0)
    img = Image.open(buf).convert("RGB").resize((TUTORIAL_SIDE, TUTORIAL_SIDE))
    return np.asarray(img)


def tutorial_model() -> ViT:
    """ViT-Base on a 480×480 image: 900 tokens. Ours has one input channel, not three; the patch
    embedding is < 1 % of the model's arithmetic, so the cost is the tutorial's."""
    return ViT(ModelConfig.from_preset("base", n_classes=10, n_mels=TUTORIAL_SIDE,
                                       n_frames=TUTORIAL_SIDE)).eval()  # fmt: skip


def reference_routes(clips: list[Path], waves: list[np.ndarray], cfg: FeatureConfig) -> list:
    """librosa's log-mel (with and without its load) and the tutorial's render-to-PNG route."""
    import librosa

    kw = dict(sr=cfg.sr, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
              n_mels=cfg.n_mels)  # fmt: skip

    def librosa_decoded():
        for p in clips:
            y, _ = librosa.load(p, sr=cfg.sr)
            librosa.power_to_db(librosa.feature.melspectrogram(y=y, **kw))

    def librosa_features():
        for w in waves:
            librosa.power_to_db(librosa.feature.melspectrogram(y=w, **kw))

    def tutorial_decoded():  # the tutorial loads at librosa's default 22050 Hz
        for p in clips:
            y, sr = librosa.load(p)
            tutorial_image(y, sr)

    return [(LIBROSA_DECODED, librosa_decoded),
            ("tutorial, load + render to 480×480 PNG", tutorial_decoded),
            ("librosa, melspectrogram only", librosa_features)]  # fmt: skip


def bench_features(
    clips: list[Path], repeats: int, device: torch.device = CPU, compare: bool = False
) -> dict:
    cfg = DEFAULTS.feature_config()
    lm = LogMel(cfg).to(device)
    seconds = sum(sf.info(str(p)).duration for p in clips)
    waves = [audio.load(p, sr=cfg.sr) for p in clips]

    def ours_decoded():
        with torch.inference_mode():
            for p in clips:
                file_log_mel(p, lm)

    def ours_features():  # on a GPU: the copy of the samples to it included
        with torch.inference_mode():
            for w in waves:
                lm(torch.from_numpy(w).to(device))

    def ours_cache_fill():  # what training does first: decode, log-mel, float16 to disk
        with tempfile.TemporaryDirectory() as d:
            list(FeatureCache(d, lm).get_many(clips, workers=CACHE_WORKERS))

    routes = [(DECODED, ours_decoded),
              ("audiovit, log-mel only", ours_features)]  # fmt: skip
    if device.type == "cpu":  # the cache fill and the references: CPU programs, in the CPU run
        routes.insert(1, (CACHE_ROUTE, ours_cache_fill))
        routes += reference_routes(clips, waves, cfg)
    if compare:  # the target's pair only
        routes = [r for r in routes if r[0] in (DECODED, LIBROSA_DECODED)]
    rows = {name: seconds / median_time(fn, repeats) for name, fn in routes}
    return {"audio_seconds_per_second": rows, "clips": len(clips),
            "clip_seconds": seconds / len(clips), "n_mels": cfg.n_mels}  # fmt: skip


def train_step_fn(model: ViT, batch: int, amp, compiled: bool = False):
    dev = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, model.cfg.n_mels, model.cfg.n_frames, device=dev) * 20 - 50
    y = torch.randint(0, model.cfg.n_classes, (batch,), device=dev)
    fwd = torch.compile(model) if compiled else model

    def step():
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            loss = torch.nn.functional.cross_entropy(fwd(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def train_flops(model: ViT, batch: int) -> float:
    """Forward + backward FLOPs of one training step (matmuls and convolutions)."""
    x = torch.randn(batch, model.cfg.n_mels, model.cfg.n_frames, device=model.pos_embed.device)
    with FlopCounterMode(display=False) as fc:
        model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    return float(fc.get_total_flops())


def matmul_flops(repeats: int, device: torch.device = CPU) -> dict:
    """The machine's dense matmul rate, fp32 and bf16: n × n × n, n = 2048 (CPU), 8192 (GPU)."""
    n = 8192 if device.type == "cuda" else 2048
    out = {}
    for name, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16)]:
        a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
        t = median_time(lambda a=a, b=b: a @ b, repeats)
        out[name] = 2 * n**3 / t
    return out


def bench_training(
    repeats: int, quick: bool, device: torch.device = CPU, compare: bool = False
) -> dict:
    """Training steps on random inputs. On a GPU: batch 256 (small batches leave it idle), and no
    torch.compile rows (its minutes of compiling don't fit a short device lease). ``compare``:
    tiny in fp32 and bf16 only."""
    gpu = device.type == "cuda"
    bf16 = autocast_dtype(device) or torch.bfloat16
    rows = {}
    batch = 256 if gpu else 16
    for preset in ["tiny"] if quick or compare else list(PRESETS):
        mcfg = ModelConfig.from_preset(preset, n_classes=10, n_mels=DEFAULTS.n_mels, n_frames=CROP,
                                       stem=DEFAULTS.stem, pool=DEFAULTS.pool)  # fmt: skip
        model = ViT(mcfg).to(device)
        flops = train_flops(model, batch)
        variants = [("fp32", None, False), ("bf16", bf16, False)]
        if preset == "tiny" and not gpu and not compare:
            variants += [("fp32 + compile", None, True), ("bf16 + compile", bf16, True)]
        for name, amp, compiled in variants:
            step = train_step_fn(model, batch, amp, compiled)
            t0 = time.perf_counter()
            step()  # the first call compiles
            first = time.perf_counter() - t0
            t = median_time(step, repeats if preset == "tiny" or gpu else 2, warmup=1)
            rows[f"{preset} {name}"] = {"clips_per_s": batch / t, "gflop_per_s": flops / t / 1e9,
                                        "first_step_s": first}  # fmt: skip
    if not compare:
        tb = 16 if gpu else 2
        model = tutorial_model().train().to(device)
        flops = train_flops(model, tb)
        t = median_time(train_step_fn(model, tb, None), repeats if gpu else 1 if quick else 2,
                        warmup=1)  # fmt: skip
        rows[TUTORIAL_TRAINING] = {"clips_per_s": tb / t, "gflop_per_s": flops / t / 1e9}
    mm = matmul_flops(repeats, device)
    return {"batch": batch, "crop_frames": CROP, "n_mels": DEFAULTS.n_mels, "rows": rows,
            "matmul_gflop_per_s": {k: v / 1e9 for k, v in mm.items()}}  # fmt: skip


def bench_pretraining(
    tmp: Path, quick: bool, repeats: int, mm: dict, device: torch.device = CPU
) -> dict:
    """`audiovit pretrain`'s own loop at its defaults (procedural audio, batch 64, 3 s crops,
    75 % hidden), crops per second between its first save and its last: start-up, the first
    procedural bank and the first steps excluded. Then the model's step alone (random crops,
    no data path) in fp32 and bf16, with its FLOPs against the matmul rates ``mm`` (GFLOP/s)."""
    from audiovit.pretrain import MaskedAutoencoder, PretrainConfig, pretrain, random_mask

    steps = 12 if quick else 30
    cfg = PretrainConfig(steps=steps, save_every=steps // 3, bank=16, device=str(device))
    walls: list[float] = []  # the wall clock at each save, from pretrain's log lines

    def log(line: str) -> None:
        if line.startswith("step "):
            walls.append(float(line.split()[-2]))

    pretrain(cfg, tmp / "pretrain", log=log)
    per_step = (walls[-1] - walls[0]) / (steps - steps // 3)

    n = cfg.n_frames()
    mae = MaskedAutoencoder(ViT(cfg.model_config(n)), cfg.decoder_width, cfg.decoder_depth)
    mae = mae.to(device)
    opt = torch.optim.AdamW(mae.parameters(), lr=1e-4)
    x = torch.randn(cfg.batch_size, cfg.n_mels, n, device=device) * 20 - 50
    mask = random_mask(len(x), mae.encoder.grid[0] * mae.encoder.grid[1], cfg.mask_ratio,
                       torch.Generator().manual_seed(0)).to(device)  # fmt: skip
    with FlopCounterMode(display=False) as fc:
        mae(x, mask).backward()
    flops = float(fc.get_total_flops())
    model_only = {}
    for name, amp in (("fp32", None), ("bf16", autocast_dtype(device) or torch.bfloat16)):

        def step(amp=amp):
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = mae(x, mask)
            opt.zero_grad()
            loss.backward()
            opt.step()

        t = median_time(step, repeats, warmup=1)
        model_only[name] = {"crops_per_s": cfg.batch_size / t, "gflop_per_s": flops / t / 1e9,
                            "share": flops / t / 1e9 / mm[name]}  # fmt: skip
    return {"crops_per_s": cfg.batch_size / per_step, "steps": steps, "batch": cfg.batch_size,
            "bf16": autocast_dtype(device) is not None, "gflop_per_step": flops / 1e9,
            "model_only": model_only}  # fmt: skip


def bench_prediction(
    tmp: Path, clips: list[Path], repeats: int, quick: bool, compare: bool = False
) -> dict:
    """One 30 s file by every route, the tutorial's included; `audiovit predict` over a folder
    and a long file's time and memory. ``compare``: the default route and the tutorial only."""
    import librosa

    mcfg = ModelConfig.from_preset(
        "tiny", n_classes=10, n_mels=DEFAULTS.n_mels, n_frames=CROP, stem=DEFAULTS.stem
    )
    fcfg = DEFAULTS.feature_config()
    checkpoint.save_model(tmp / "model.pt", ViT(mcfg), fcfg, [str(i) for i in range(10)])
    clip = clips[0]
    auto = load_model(tmp / "model.pt", device="cpu").precision  # what --precision auto picks
    routes = {f"torch, {p}": load_model(tmp / "model.pt", device="cpu", precision=p)
              for p in (("fp32", "bf16", "int8") if not compare else (auto,))}  # fmt: skip
    if not compare:
        export_onnx(tmp / "model.pt", tmp / "model.onnx")
        export_onnx(tmp / "model.pt", tmp / "model-int8.onnx", int8=True)
        routes["onnxruntime, fp32"] = load_onnx(tmp / "model.onnx")
        routes["onnxruntime, int8"] = load_onnx(tmp / "model-int8.onnx")
    latency = {}  # ms-scale and noisy on a shared machine: three times the repeats
    hops = ((None, BACK_TO_BACK), (1.5, "hop 1.5 s (half a window)"))
    for h, name in hops[:1] if compare else hops:
        for route, clf in routes.items():
            tag = ", the default (auto)" if route == f"torch, {auto}" else ""
            latency[f"audiovit ({route}{tag}), {name}"] = median_time(
                lambda h=h, clf=clf: clf.predict(clip, hop_s=h), 3 * repeats)  # fmt: skip
    vit_b = tutorial_model()

    def tutorial():
        y, sr = librosa.load(clip)
        img = tutorial_image(y, sr)
        with torch.inference_mode():  # one channel of the image stands for its three
            vit_b(torch.from_numpy(img[None, :, :, 0].astype(np.float32)))

    latency[TUTORIAL_PREDICTION] = median_time(tutorial, 2 if quick or compare else 3)
    if compare:
        return {"latency_s": latency, "auto": auto}

    # `audiovit predict` over a folder, process start-up and model load included
    seconds = sum(sf.info(str(p)).duration for p in clips)
    cmd = [sys.executable, "-m", "audiovit", "predict", str(tmp / "model.pt"), str(clips[0].parent)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    folder_s = time.perf_counter() - t0

    minutes = 10 if quick else 60
    long = tmp / "long" / "long.flac"
    long.parent.mkdir()
    with sf.SoundFile(long, "w", 16000, 1) as f:
        for i in range(minutes):
            f.write(np.random.default_rng(i).standard_normal(16000 * 60).astype(np.float32) * 0.05)
    # Peak memory from VmHWM: unlike ru_maxrss, it starts afresh at exec, so the child does not
    # inherit this (much larger) benchmark process's high-water mark.
    code = (
        "import time, sys; from audiovit import load_model; clf = load_model(sys.argv[1], device='cpu');"
        "t = time.perf_counter(); clf.predict(sys.argv[2]); dt = time.perf_counter() - t;"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1];"
        "print(dt, int(hwm) / 1024)"
    )
    r = subprocess.run([sys.executable, "-c", code, tmp / "model.pt", long],
                       capture_output=True, text=True, check=True)  # fmt: skip
    long_s, peak_mb = map(float, r.stdout.split())
    return {
        "latency_s": latency,
        "auto": auto,
        "folder": {"files": len(clips), "audio_s": seconds, "seconds": folder_s,
                   "hours_per_minute": seconds / 3600 / (folder_s / 60)},
        "long_file": {"minutes": minutes, "seconds": long_s, "peak_rss_mb": peak_mb,
                      "hours_per_minute": minutes / 60 / (long_s / 60)},
    }  # fmt: skip


def bench_prediction_gpu(tmp: Path, clips: list[Path], repeats: int, device) -> dict:
    """On a GPU, per preset: one 30 s file's latency, and the in-process rate over the folder
    (decode on the CPU, log-mel and ViT on the GPU, bf16 autocast, start-up excluded)."""
    seconds = sum(sf.info(str(p)).duration for p in clips)
    fcfg = DEFAULTS.feature_config()
    rows = {}
    for preset in PRESETS:
        mcfg = ModelConfig.from_preset(
            preset, n_classes=10, n_mels=DEFAULTS.n_mels, n_frames=CROP, stem=DEFAULTS.stem
        )
        checkpoint.save_model(tmp / f"{preset}.pt", ViT(mcfg), fcfg, [str(i) for i in range(10)])
        clf = load_model(tmp / f"{preset}.pt", device=str(device))
        one = median_time(lambda clf=clf: clf.predict(clips[0]), repeats)
        folder = median_time(lambda clf=clf: [clf.predict(p) for p in clips], repeats)
        rows[preset] = {"latency_30s_s": one, "folder_s": folder,
                        "hours_per_minute": seconds / 3600 / (folder / 60)}  # fmt: skip
    return {
        "files": len(clips),
        "audio_s": seconds,
        "hop": "one window (the default)",
        "presets": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true",
                    help="tiny preset only, fewer repeats, a 10-minute long file")  # fmt: skip
    ap.add_argument(
        "--device",
        default="cpu",
        help="cpu (the full comparison), or cuda: the GPU rows → speed_cuda.{md,json}",
    )
    ap.add_argument("--compare", action="store_true",
                    help="only the rows of the targets; print their table (writes results with "
                    "--name only)")  # fmt: skip
    ap.add_argument("--name", help="results file name (default: speed, speed_cuda on a GPU)")
    args = ap.parse_args()
    if args.compare and (args.quick or args.device != "cpu"):
        ap.error("--compare measures the CPU targets at full repeats: no --quick, no --device")
    device = torch.device(args.device)
    repeats = 2 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "clips").mkdir()
        clips = []
        for i in range(8):
            clips.append(tmp / "clips" / f"c{i}.wav")
            wave = np.random.default_rng(i).standard_normal(22050 * 30).astype(np.float32) * 0.1
            sf.write(clips[-1], wave, 22050)
        res = {
            "date": str(date.today()),
            "cpu_model": cpu_label(),
            "bf16_faster": cpu_bf16_is_faster(),
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "command": "python benchmarks/speed.py" + (" --quick" if args.quick else "")
            + (" --compare" if args.compare else "")
            + (f" --repeats {args.repeats}" if args.repeats != 5 and not args.quick else "")
            + (f" --device {args.device}" if device.type != "cpu" else "")
            + (f" --name {args.name}" if args.name else ""),
            "features": bench_features(clips[:5], repeats, device, args.compare),
            "training": bench_training(repeats, args.quick, device, args.compare),
        }  # fmt: skip
        res["pretraining"] = bench_pretraining(
            tmp, args.quick, repeats, res["training"]["matmul_gflop_per_s"], device
        )
        if device.type == "cuda":
            res["gpu"] = torch.cuda.get_device_name(device)
            res["prediction"] = bench_prediction_gpu(tmp, clips, repeats, device)
        else:
            res["prediction"] = bench_prediction(tmp, clips, repeats, args.quick, args.compare)
    if args.compare:
        print("\n".join(header(res) + render_targets(res)))
        if not args.name:
            return
    name = args.name or ("speed" if device.type == "cpu" else f"speed_{device.type}")
    text = ("\n".join(header(res) + render_targets(res)) if args.compare
            else render(res) if device.type == "cpu" else render_gpu(res))  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(text)
    if not args.compare:
        print(text)


def targets(r: dict) -> list[tuple[str, str, str, str, bool]]:
    """The targets of fast-on-every-CPU as (target, audiovit, reference, ratio, met), each pair
    measured in the run ``r``. The bf16 share counts only where bf16 is the faster route."""
    lat = r["prediction"]["latency_s"]
    ours = next(v for k, v in lat.items() if "the default (auto)" in k and BACK_TO_BACK in k)
    tut = lat[TUTORIAL_PREDICTION]
    f = r["features"]["audio_seconds_per_second"]
    feats = f[DECODED] / f[LIBROSA_DECODED]
    rows = [
        ("one 30 s file ≤ 60 ms (default route)", f"{ours * 1e3:.0f} ms", "", "", ours <= 0.060),
        ("≥ 20× the tutorial on one 30 s file", f"{ours * 1e3:.0f} ms", f"{tut * 1e3:.0f} ms",
         f"{tut / ours:.1f}×", tut / ours >= 20),
        ("decoding + log-mel ≥ 2× librosa", f"{f[DECODED]:.0f} audio-s/s",
         f"{f[LIBROSA_DECODED]:.0f} audio-s/s", f"{feats:.2f}×", feats >= 2),
    ]  # fmt: skip
    t = r["training"]
    for dtype, goal in (("fp32", 0.6), ("bf16", 0.3)):
        if dtype == "bf16" and not r.get("bf16_faster"):
            continue  # bf16 is not how this CPU trains
        share = t["rows"][f"tiny {dtype}"]["gflop_per_s"] / t["matmul_gflop_per_s"][dtype]
        rows.append((f"training ViT-tiny ≥ {goal:.0%} of the {dtype} matmul rate",
                     f"{t['rows'][f'tiny {dtype}']['gflop_per_s']:.0f} GFLOP/s",
                     f"{t['matmul_gflop_per_s'][dtype]:.0f} GFLOP/s", f"{share:.0%}",
                     share >= goal))  # fmt: skip
    if "pretraining" in r:
        pt = r["pretraining"]["crops_per_s"]
        rows.append(("pretraining ≥ 300 crops/s", f"{pt:.0f} crops/s", "", "", pt >= 300))
    return rows


def render_targets(r: dict) -> list[str]:
    lines = ["## Targets (each figure and its reference from this run)", "",
             "| target | audiovit | reference | ratio | met |", "|---|---|---|---|---|"]  # fmt: skip
    for name, ours, ref, ratio, met in targets(r):
        lines.append(f"| {name} | {ours} | {ref} | {ratio} | {'yes' if met else 'no'} |")
    return lines + [""]


def header(r: dict) -> list[str]:
    return [f"# Speed ({r['date']}, {r['cpu_model']}, {r['cpu_threads']} threads, torch {r['torch']})",
            "", f"Command: `{r['command']}`. Medians over repeats; ratios are against the "
            "reference measured in the same run.", "",
            "bf16 autocast " + ("measured faster than fp32 here (device.cpu_bf16_is_faster): "
            "training and `--precision auto` use it." if r.get("bf16_faster") else "not faster "
            "than fp32 here (device.cpu_bf16_is_faster): training runs in fp32, `--precision "
            "auto` picks int8."), ""]  # fmt: skip


def render(r: dict) -> str:
    f = r["features"]["audio_seconds_per_second"]
    lines = header(r) + render_targets(r) + [
             f"## Log-mel features, {r['features']['clip_seconds']:.0f} s clips, "
             f"{r['features']['n_mels']} mel bands",
             "| route | audio-seconds per second | audiovit's speed-up over it |", "|---|---|---|"]  # fmt: skip
    decoding = [LIBROSA_DECODED, "tutorial, load + render to 480×480 PNG"]
    ours = {DECODED: decoding, CACHE_ROUTE: decoding,
            "audiovit, log-mel only": ["librosa, melspectrogram only"]}  # fmt: skip
    for name, v in f.items():
        ratio = " / ".join(f"{f[o] / v:.1f}× ({o.removeprefix('audiovit, ')})"
                           for o, refs in ours.items() if name in refs and o in f)  # fmt: skip
        lines.append(f"| {name} | {v:.0f} | {ratio} |")

    t = r["training"]
    mm = t["matmul_gflop_per_s"]
    lines += ["", f"## Training throughput (batch {t['batch']}, 3 s crops = {t['crop_frames']} "
              f"frames × {t['n_mels']} mels)", "",
              f"Machine matmul rate (2048³): fp32 {mm['fp32']:.0f} GFLOP/s, bf16 "
              f"{mm['bf16']:.0f} GFLOP/s. Model FLOPs from torch's FlopCounterMode (forward + "
              "backward).", "",
              "| model | clips/s | GFLOP/s achieved | share of matmul rate | first step (s) |",
              "|---|---|---|---|---|"]  # fmt: skip
    for name, row in t["rows"].items():
        peak = mm["bf16"] if "bf16" in name else mm["fp32"]
        first = f"{row['first_step_s']:.1f}" if "first_step_s" in row else ""
        lines.append(f"| {name} | {row['clips_per_s']:.2f} | {row['gflop_per_s']:.0f} | "
                     f"{row['gflop_per_s'] / peak:.0%} | {first} |")  # fmt: skip
    tut = t["rows"][TUTORIAL_TRAINING]["clips_per_s"]
    best = max(v["clips_per_s"] for k, v in t["rows"].items() if k.startswith("tiny"))
    crops = DEFAULTS.max_crops_per_clip  # the crops of each 30 s clip per epoch
    lines += ["", f"A GTZAN-sized epoch (1000 clips × 30 s): tutorial {1000 / tut / 3600:.1f} h "
              f"(one 480×480 image per clip); audiovit tiny {1000 * crops / best / 60:.1f} min "
              f"({crops} random 3 s crops per clip) — "
              f"{(1000 / tut) / (1000 * crops / best):.0f}× cheaper."]  # fmt: skip

    if "pretraining" in r:
        pt = r["pretraining"]
        lines += ["", f"Pretraining (`audiovit pretrain` at its defaults: batch {pt['batch']}, "
                  f"3 s crops, 75 % hidden, procedural audio, {'bf16' if pt['bf16'] else 'fp32'}): "
                  f"{pt['crops_per_s']:.0f} crops per second."]  # fmt: skip
        if "model_only" in pt:
            lines += ["", f"Its model step alone (random crops, no data path), "
                      f"{pt['gflop_per_step']:.1f} GFLOP per step of {pt['batch']} crops:", "",
                      "| dtype | crops/s | GFLOP/s achieved | share of matmul rate |",
                      "|---|---|---|---|"]  # fmt: skip
            for name, row in pt["model_only"].items():
                lines.append(f"| {name} | {row['crops_per_s']:.0f} | {row['gflop_per_s']:.0f} | "
                             f"{row['share']:.0%} |")  # fmt: skip
            need = 300 / pt["batch"] * pt["gflop_per_step"]  # GFLOP/s for the target
            lines += ["", f"300 crops per second would take {need:.0f} GFLOP/s, "
                      f"{need / max(mm.values()):.1f}× this machine's best matmul rate."]  # fmt: skip

    p = r["prediction"]
    lat = p["latency_s"]
    tut = lat[TUTORIAL_PREDICTION]
    lines += ["", "## Classifying one 30 s file, end to end (decode → label), warm, ViT-tiny",
              "| route | seconds | speed-up over the tutorial |", "|---|---|---|"]  # fmt: skip
    for name, v in lat.items():
        lines.append(f"| {name} | {v:.3f} | {tut / v:.0f}× |")
    fo, lf = p["folder"], p["long_file"]
    lines += ["", f"`audiovit predict` over a folder of {fo['files']} × 30 s files (start-up and "
              f"model load included): {fo['seconds']:.1f} s, {fo['hours_per_minute']:.2f} hours "
              "of audio per minute.", "",
              f"{lf['minutes']} minutes of audio in one FLAC file (default hop): "
              f"{lf['seconds']:.1f} s, "
              f"{lf['hours_per_minute']:.1f} hours of audio per minute, peak RSS "
              f"{lf['peak_rss_mb']:.0f} MB.", ""]  # fmt: skip
    return "\n".join(lines)


def render_gpu(r: dict) -> str:
    f = r["features"]["audio_seconds_per_second"]
    t = r["training"]
    mm = t["matmul_gflop_per_s"]
    lines = [f"# Speed on a GPU ({r['date']}, {r['gpu']}, host {r['cpu_model']}, torch {r['torch']})",
             "", f"Command: `{r['command']}`. Medians over repeats. The CPU references (librosa, "
             "the tutorial's render route, onnxruntime) are in speed.md.", "",
             f"## Log-mel features on the GPU, {r['features']['clip_seconds']:.0f} s clips", "",
             "| route | audio-seconds per second |", "|---|---|"]  # fmt: skip
    lines += [f"| {name} | {v:.0f} |" for name, v in f.items()]
    lines += ["", f"## Training throughput (batch {t['batch']}, 3 s crops = {t['crop_frames']} "
              f"frames × {t['n_mels']} mels)", "",
              f"GPU matmul rate (8192³): fp32 {mm['fp32'] / 1e3:.0f} TFLOP/s, bf16 "
              f"{mm['bf16'] / 1e3:.0f} TFLOP/s.", "",
              "| model | clips/s | TFLOP/s achieved | share of matmul rate |", "|---|---|---|---|"]  # fmt: skip
    for name, row in t["rows"].items():
        peak = mm["bf16"] if "bf16" in name else mm["fp32"]
        lines.append(f"| {name} | {row['clips_per_s']:.0f} | {row['gflop_per_s'] / 1e3:.1f} | "
                     f"{row['gflop_per_s'] / peak:.0%} |")  # fmt: skip
    best = max(v["clips_per_s"] for k, v in t["rows"].items() if k.startswith("tiny"))
    crops = DEFAULTS.max_crops_per_clip
    lines += ["", f"A GTZAN-sized epoch (1000 clips × {crops} random 3 s crops), tiny: "
              f"{1000 * crops / best:.1f} s of model time."]  # fmt: skip
    p = r["prediction"]
    lines += ["", f"## Prediction (decode on the CPU, log-mel and ViT on the GPU, {p['hop']})",
              "", f"| preset | one 30 s file (ms) | {p['files']} × 30 s files (s) | hours of "
              "audio per minute |", "|---|---|---|---|"]  # fmt: skip
    for preset, row in p["presets"].items():
        lines.append(f"| {preset} | {row['latency_30s_s'] * 1e3:.0f} | {row['folder_s']:.2f} | "
                     f"{row['hours_per_minute']:.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
