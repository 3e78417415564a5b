"""``audiovit`` command line: argparse subcommands over the Python API. Nothing imports this."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from pathlib import Path

from . import __version__
from .progress import Progress

TRAIN_HELP = {
    "preset": "model size: tiny, small or base; cnn: the conv stem alone (no transformer layer)",
    "depth": "transformer layers, overriding the preset's 12",
    "fmax": "Hz, top of the highest mel band; unset: half the sample rate",
    "epochs": "passes over the training clips (1-4 random crops of each per pass, by clip length)",
    "lr": "peak AdamW learning rate",
    "crop_s": "training window in seconds (default: min(max-crop-s, median clip length))",
    "crops_per_clip": "crops of each clip per epoch (default: enough to cover the median clip, "
    "up to --max-crops-per-clip)",
    "max_crops_per_clip": "most crops of each clip per epoch when --crops-per-clip is unset",
    "mixup": "mixup Beta(a, a) parameter; 0 = off",
    "patch_stride": "token spacing in bins/frames: < 16 overlaps patches (--stem patch) or "
    "gives the conv stem finer cells (2, 4, 8)",
    "stem": "patch: linear 16x16 patch embedding; conv: four strided 3x3 convolutions",
    "balance_classes": "draw training crops so every class is equally likely (None: when the "
    "class sizes differ by 1.5x or more)",
    "keep": "which epoch model.pt holds: best on the validation split, last, or auto (best "
    "where the validation split holds enough clips per class to choose, else last, with a "
    "carved validation split that small trained on too)",
    "train_on_carve": "with --keep auto keeping the last epoch, train on a validation split "
    "carved from the training data too (it chooses nothing); off: validate on it each epoch",
    "ema_epochs": "validate and save an EMA of the weights over about this many epochs; 0 = off",
    "teacher": "distil from a model of this preset (e.g. cnn), trained first on the same data "
    "into OUT/teacher",
    "distill": "weight of the teacher's soft targets in the loss (with --teacher)",
    "distill_t": "distillation temperature",
    "device": "auto (CUDA when present), cpu, cuda, cuda:1, ...",
    "amp": "bf16 autocast where the hardware supports it",
    "init": "start from an ImageNet ViT/DeiT checkpoint in timm's layout (.safetensors/.pth); "
    "with --stem patch the patch embedding is loaded too",
    "cache_dir": "feature cache folder (default: $AUDIOVIT_CACHE or ~/.cache/audiovit)",
}


def _add_config_flags(p: argparse.ArgumentParser, cls, skip=()) -> None:
    """One flag per dataclass field, so each default lives only in the dataclass."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type).replace(" | None", "")
        helptext = f"{TRAIN_HELP.get(f.name, f.name.replace('_', ' '))} (default: {f.default})"
        if kind == "bool":
            p.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=helptext,
            )
        else:
            conv = {"int": int, "float": float}.get(kind, str)
            p.add_argument(
                flag, type=conv, default=argparse.SUPPRESS, help=helptext, metavar=kind.upper()
            )


def _add_split_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "splits (first that applies: folds, split lists, manifest 'split' column, automatic)"
    )
    g.add_argument("--test-fold", help="manifest rows whose fold is this are the test set")
    g.add_argument("--valid-fold", help="manifest rows whose fold is this are the validation set")
    g.add_argument(
        "--split-lists", type=Path, metavar="DIR", help="folder with train.txt, valid.txt, test.txt"
    )
    g.add_argument(
        "--group-pattern", metavar="REGEX", help="first capture group of the file name = group"
    )
    g.add_argument(
        "--valid-frac", type=float, default=0.1, help="automatic split: validation share"
    )
    g.add_argument("--test-frac", type=float, default=0.1, help="automatic split: test share")


def _splits(args, seed: int = 0):
    from . import data

    ds = data.load_dataset(args.data)
    opts = data.SplitOptions(
        test_fold=args.test_fold, valid_fold=args.valid_fold, split_lists=args.split_lists,
        group_pattern=args.group_pattern, valid_frac=args.valid_frac, test_frac=args.test_frac,
        seed=seed,
    )  # fmt: skip
    return ds, data.make_splits(ds, opts)


def cmd_train(args) -> int:
    from . import data
    from .train import TrainConfig, train

    cfg = TrainConfig(
        **{
            f.name: getattr(args, f.name)
            for f in dataclasses.fields(TrainConfig)
            if hasattr(args, f.name)
        }
    )
    ds, splits = _splits(args, cfg.seed)
    for note in ds.notes:
        print(f"note: {note}")
    print(data.summary(ds.labels, splits) + "\n")
    train(ds, splits, cfg, args.out, resume=args.resume)
    print(f"\nwrote {args.out}/model.pt, metrics.json, log.jsonl, confusion.png")
    return 0


def cmd_evaluate(args) -> int:
    from . import evaluate, plots
    from .features import FeatureCache, default_cache_dir
    from .inference import load_model

    clf = load_model(args.model, device=args.device)
    ds, splits = _splits(args)
    split_given = any([args.test_fold, args.split_lists]) or any(it.split for it in ds.items)
    items = splits.test if split_given else ds.items
    if not items:
        raise SystemExit("audiovit: error: the test split is empty")
    cache = FeatureCache(args.cache_dir or default_cache_dir(), clf.logmel)
    m, skipped, _ = evaluate.evaluate_items(clf, items, cache, args.hop)
    for line in skipped:
        print(f"skipped: {line}")
    if m["n"] == 0:
        raise SystemExit("audiovit: error: no file could be scored (every one was skipped)")
    print(f"{'test split' if split_given else 'all files'}:\n{evaluate.format_table(m)}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "metrics.json").write_text(json.dumps(m, indent=2))
        plots.confusion_matrix(m, args.out / "confusion.png")
        print(f"wrote {args.out}/metrics.json, confusion.png")
    return 0


def cmd_predict(args) -> int:
    """Under torchrun each rank predicts every world_size-th file into ``OUT.partN`` and rank 0
    merges the parts, in input order, into ``--out``."""
    from . import distributed, plots
    from .audio import AudioError
    from .inference import find_audio_files, load_model
    from .model import resolve_device

    if distributed.active() and not args.out:
        raise ValueError("under torchrun, predict needs --out FILE for the merged results")
    if args.backend == "onnx":
        from .export import load_onnx

        distributed.setup(resolve_device("cpu"))
        clf = load_onnx(args.model)
    else:
        clf = load_model(args.model, device=distributed.setup(resolve_device(args.device)))
    paths = find_audio_files(args.paths)
    if (args.plot or args.timeline_out) and len(paths) != 1:
        raise ValueError("--plot and --timeline-out take exactly one input file")
    mine = distributed.shard(range(len(paths)))
    if distributed.active():  # this rank's part; rank 0 merges the parts into --out
        sink = open(args.out.with_name(f"{args.out.name}.part{distributed.rank()}"), "w",
                    encoding="utf-8")  # fmt: skip
    else:
        sink = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    failed = 0
    try:
        for i in Progress(mine, "predicting") if len(mine) > 1 else mine:
            path = paths[i]
            try:
                p = clf.predict(
                    path, top_k=args.top_k, hop_s=args.hop, overview=2000 if args.plot else 0
                )
            except AudioError as e:
                failed += 1
                text = json.dumps({"path": str(path), "error": e.reason}) if args.json else None
                if text is None:
                    print(f"audiovit: error: {e}", file=sys.stderr, flush=True)
            else:
                text = _prediction_text(p, path, args)
                if args.timeline_out:
                    write_timeline(p, args.timeline_out)
                if args.plot:
                    plots.timeline(p, args.plot)
            if text is not None and distributed.active():
                text = json.dumps({"i": i, "text": text})  # parts carry the input order
            if text is not None:
                print(text, file=sink, flush=True)
    finally:
        if sink is not sys.stdout:
            sink.close()
    if distributed.active():
        failed = int(distributed.all_sum([failed])[0])  # also waits for every rank's part
        if distributed.is_main():
            _merge_parts(args.out, distributed.world_size())
    return 1 if failed else 0


def _prediction_text(p, path, args) -> str:
    if args.json:
        return json.dumps(p.to_dict(timeline=args.timeline), ensure_ascii=False)
    top = "  ".join(f"{lb} {s:.3f}" for lb, s in p.top_k)
    lines = [f"{path}\t{p.label}\t{p.score:.3f}\t({p.duration_s:.1f} s; {top})"]
    if args.timeline:
        lines += [f"  {w.start_s:8.2f}-{w.end_s:8.2f} s  {w.label}  {w.score:.3f}"
                  for w in p.timeline()]  # fmt: skip
    return "\n".join(lines)


def _merge_parts(out: Path, world: int) -> None:
    """OUT.part0 … OUT.part{world-1} (JSON lines {"i", "text"}) → OUT in input order."""
    parts = [out.with_name(f"{out.name}.part{r}") for r in range(world)]
    records = [json.loads(ln) for f in parts for ln in f.read_text(encoding="utf-8").splitlines()]
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(r["text"] + "\n" for r in sorted(records, key=lambda r: r["i"])),
                   encoding="utf-8")  # fmt: skip
    tmp.replace(out)
    for f in parts:
        f.unlink()


def write_timeline(p, out: Path) -> None:
    """Per-window labels and probabilities as CSV (one row per window) or JSON with the same keys
    as the service: ``segments`` (every window, with its probabilities) and ``timeline``
    (merged segments)."""
    if out.suffix.lower() == ".json":
        windows = [
            {**w.__dict__, "probs": dict(zip(p.labels, map(float, pr)))}
            for w, pr in zip(p.segments, p.probs)
        ]
        timeline = [w.__dict__ for w in p.timeline()]
        doc = {**p.to_dict(), "segments": windows, "timeline": timeline}
        out.write_text(json.dumps(doc, indent=1, ensure_ascii=False))
        return
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["start_s", "end_s", "label", "score", *p.labels])
        for seg, pr in zip(p.segments, p.probs):
            row = [f"{seg.start_s:.3f}", f"{seg.end_s:.3f}", seg.label, f"{seg.score:.4f}"]
            w.writerow(row + [f"{v:.4f}" for v in pr])


def cmd_export(args) -> int:
    from .export import export_onnx

    out = export_onnx(args.model, args.out, opset=args.opset)
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


def cmd_explain(args) -> int:
    from . import plots
    from .explain import saliency
    from .inference import load_model

    clf = load_model(args.model, device=args.device)
    pred, db, sal, seconds = saliency(clf, args.file, max_seconds=args.max_seconds)
    plots.explanation(db, sal, pred, seconds, args.out)
    print(f"{args.file}\t{pred.label}\t{pred.score:.3f}\twrote {args.out}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    m = run_demo(args.out, seed=args.seed, device=args.device)
    return 0 if m["accuracy"] > 0 else 1


def cmd_serve(args) -> int:
    from .inference import load_model
    from .serve import ServeConfig, serve

    clf = load_model(args.model, device=args.device)
    cfg = ServeConfig(
        **{
            f.name: getattr(args, f.name)
            for f in dataclasses.fields(ServeConfig)
            if hasattr(args, f.name)
        }
    )
    print(f"serving {args.model} on http://{cfg.host}:{cfg.port}/ (Ctrl-C to stop)", flush=True)
    serve(clf, cfg, name=args.model.parent.name or args.model.stem)
    return 0


def cmd_info(args) -> int:
    from .checkpoint import read_model_file

    obj = read_model_file(args.model)
    info = {k: obj.get(k) for k in ("format", "labels", "model_config", "feature_config", "meta")}
    info["n_parameters"] = int(sum(v.numel() for v in obj["state_dict"].values()))
    print(json.dumps(info, indent=2, ensure_ascii=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .serve import ServeConfig
    from .train import TrainConfig

    parser = argparse.ArgumentParser(
        prog="audiovit", description="Vision Transformer audio classifier"
    )
    parser.add_argument("--version", action="version", version=f"audiovit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train", help="train a model on a folder-per-class dataset or a CSV manifest"
    )
    p.add_argument(
        "data", type=Path, help="folder with one sub-folder per class, or a manifest .csv"
    )
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    _add_split_flags(p)
    _add_config_flags(p, TrainConfig)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a model on labelled data")
    p.add_argument("model", type=Path)
    p.add_argument("data", type=Path)
    p.add_argument("--out", type=Path, help="folder for metrics.json and confusion.png")
    p.add_argument(
        "--hop", type=float, help="seconds between scored windows (default: one window, no overlap)"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", help="feature cache folder")
    _add_split_flags(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify audio files or folders of any length")
    p.add_argument("model", type=Path)
    p.add_argument("paths", nargs="+", help="files or folders (walked for audio files)")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--json", action="store_true", help="one JSON object per input per line")
    p.add_argument(
        "--timeline",
        action="store_true",
        help="also give the labels over time: runs of one label (text and JSON "
        "'timeline') and, in JSON, every window ('segments')",
    )
    p.add_argument(
        "--hop", type=float, help="seconds between scored windows (default: one window, no overlap)"
    )
    p.add_argument("--timeline-out", type=Path, metavar="FILE", help="timeline as .csv or .json")
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="write results here, not to stdout (needed under torchrun)")  # fmt: skip
    p.add_argument(
        "--plot", type=Path, metavar="PNG", help="probabilities over time on the log-mel"
    )
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                   help="onnx: MODEL is an .onnx file from `audiovit export`")  # fmt: skip
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "export", help="export a model to ONNX (log-mel → logits) with a .json beside it"
    )
    p.add_argument("model", type=Path)
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", type=Path, required=True, help=".onnx file to write")
    p.add_argument("--opset", type=int, default=17)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("explain", help="draw which time-frequency regions drove a prediction")
    p.add_argument("model", type=Path)
    p.add_argument("file", type=Path)
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--max-seconds", type=float, default=120.0, help="explain this much of the file")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("demo", help="synthesise data, train, evaluate and predict (no data needed)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("serve", help="HTTP service with a page: POST /predict, GET /health, GET /")
    p.add_argument("model", type=Path)
    p.add_argument("--device", default="auto")
    _add_config_flags(p, ServeConfig)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("info", help="labels, settings and metrics stored in a model file")
    p.add_argument("model", type=Path)
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .audio import AudioError
    from .checkpoint import CheckpointError
    from .data import DataError
    from .train import TrainingError

    args = build_parser().parse_args(argv)
    finished = False
    try:
        code = args.func(args)
        finished = True
        return code
    except (AudioError, CheckpointError, DataError, TrainingError, ValueError) as e:
        print(f"audiovit: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an --out that is a file, a folder that cannot be written, a full disk
        where = f"{e.filename}: " if e.filename else ""
        print(f"audiovit: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("audiovit: interrupted; a training run continues with --resume", file=sys.stderr)
        return 130
    finally:
        if "audiovit.distributed" in sys.modules:  # imported by train/predict under torchrun
            sys.modules["audiovit.distributed"].cleanup(ok=finished)
