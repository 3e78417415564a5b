"""``audiovit`` command line: argparse subcommands over the Python API. Nothing imports this."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .config import help_text
from .device import PRECISIONS
from .prediction import OUTPUT_FORMATS, TOP_K
from .version import __version__


def _add_config_flags(p: argparse.ArgumentParser, cls) -> None:
    """One flag per dataclass field, with the field's help, choices and default (config.py)."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type).replace(" | None", "")
        kw = dict(default=argparse.SUPPRESS, help=help_text(f))
        if f.metadata.get("choices"):
            kw["choices"] = f.metadata["choices"]
        if kind == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            conv = {"int": int, "float": float}.get(kind, str)
            p.add_argument(flag, type=conv, metavar=None if "choices" in kw else kind.upper(), **kw)


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


def _splits(args, seed: int = 0, ds=None):
    """The dataset (read from ``args.data`` unless given) and its splits from the split flags."""
    from . import data

    ds = ds or data.load_dataset(args.data)
    opts = data.SplitOptions(
        test_fold=args.test_fold,
        valid_fold=args.valid_fold,
        split_lists=args.split_lists,
        group_pattern=args.group_pattern,
        valid_frac=args.valid_frac,
        test_frac=args.test_frac,
        seed=seed,
    )
    return ds, data.make_splits(ds, opts)


def cmd_train(args) -> int:
    from . import data
    from .train import TrainConfig, train

    fields = dataclasses.fields(TrainConfig)
    given = {f.name: getattr(args, f.name) for f in fields if hasattr(args, f.name)}  # flags set
    cfg = TrainConfig(**{**_start_settings(given.get("init"), given), **given})
    ds, splits = _splits(args, cfg.seed)
    for note in ds.notes:
        print(f"note: {note}")
    print(data.summary(ds.labels, splits) + "\n")
    train(ds, splits, cfg, args.out, resume=args.resume, overwrite=args.overwrite)
    print(f"\nwrote {args.out}/model.pt and report.html (metrics, plots, predictions.csv)")
    return 0


def _start_settings(init: str | None, given: dict) -> dict:
    """The settings a start from an audiovit model passes on, less those given as flags."""
    from .pretrained import start_settings

    if not init or not Path(init).is_file():  # a missing file is train's to refuse
        return {}
    taken = {k: v for k, v in start_settings(init).items() if k not in given}
    if taken:
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in taken.items() if v is not None)
        print(f"from the start {init}: {flags}")
    return taken


def cmd_pretrain(args) -> int:
    from .pretrain import PretrainConfig, pretrain

    fields = dataclasses.fields(PretrainConfig)
    cfg = PretrainConfig(**{f.name: getattr(args, f.name) for f in fields if hasattr(args, f.name)})
    path = pretrain(cfg, args.out, args.data, resume=args.resume)
    print(f"\nwrote {path}: start a run from it with `audiovit train DATA --init {path}`")
    return 0


def cmd_evaluate(args) -> int:
    from . import evaluate, run
    from .data import load_dataset
    from .features import FeatureCache, default_cache_dir
    from .inference import load_model

    clf = load_model(args.model, device=args.device, precision=args.precision)
    ds = load_dataset(args.data)
    split_given = any([args.test_fold, args.split_lists]) or any(it.split for it in ds.items)
    items = _splits(args, ds=ds)[1].test if split_given else ds.items  # else every file
    if not items:
        raise SystemExit("audiovit: error: the test split is empty")
    cache = FeatureCache(args.cache_dir or default_cache_dir(), clf.logmel)
    m, skipped, scored = evaluate.evaluate_items(clf, items, cache, args.hop)
    for line in skipped:
        print(f"skipped: {line}")
    if m["n"] == 0:
        raise SystemExit("audiovit: error: no file could be scored (every one was skipped)")
    m["split"] = "test" if split_given else "every file's"
    print(f"{'test split' if split_given else 'all files'}:\n{evaluate.format_table(m)}")
    if args.out:
        run.write_evaluation(args.out, args.model, m, scored, clf.labels)
        print(f"wrote {args.out}/report.html, metrics.json, predictions.csv and the plots")
    return 0


def cmd_predict(args) -> int:
    """Under torchrun each rank predicts every world_size-th file and rank 0 merges the results,
    in input order, into ``--out``."""
    from . import distributed, plots
    from .audio import AudioError
    from .device import resolve_device
    from .inference import find_audio_files, predict_files
    from .prediction import OutputFolder, ResultWriter

    onnx = args.backend == "onnx" or args.model.suffix.lower() == ".onnx"
    device = distributed.setup(resolve_device("cpu" if onnx else args.device))
    clf = _load(args.model, device, onnx, args.precision)
    paths = find_audio_files(args.paths)
    if not paths:
        raise ValueError(f"no audio files in {', '.join(map(str, args.paths))}")
    if args.timeline_out and args.timeline_out.suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"--timeline-out {args.timeline_out}: name a .csv or a .json file")
    if (args.plot or args.timeline_out) and len(paths) != 1:
        raise ValueError("--plot and --timeline-out take exactly one input file")
    results, failed = ResultWriter(args.out), 0
    folder = None
    if args.output_dir:
        folder = OutputFolder(args.output_dir, args.output_format, paths, clf.labels)
    for i, path, p in predict_files(
        clf, paths, top_k=args.top_k, hop_s=args.hop, overview=2000 if args.plot else 0
    ):
        if isinstance(p, AudioError):
            failed += 1
            if args.json:
                results.write(i, json.dumps({"path": str(path), "error": p.reason}))
            else:
                print(f"audiovit: error: {p}", file=sys.stderr, flush=True)
            if folder:
                folder.error(i, path, p.reason)
            continue
        if folder:
            folder.write(i, p)
        if args.json:
            results.write(i, json.dumps(p.to_dict(timeline=args.timeline), ensure_ascii=False))
        else:
            results.write(i, p.to_text(timeline=args.timeline))
        if args.timeline_out:
            p.write_timeline(args.timeline_out)
        if args.plot:
            plots.timeline(p, args.plot)
    if folder:
        folder.close(failed)
    return 1 if results.close(failed) else 0


def cmd_export(args) -> int:
    from .export import export_onnx

    out = export_onnx(args.model, args.out, opset=args.opset, int8=args.int8)
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


def cmd_explain(args) -> int:
    from . import plots
    from .explain import saliency
    from .inference import load_model

    if args.model.suffix.lower() == ".onnx":
        raise ValueError(
            f"{args.model}: explain needs the model file (model.pt), whose "
            "gradients an ONNX graph does not keep"
        )
    clf = load_model(args.model, device=args.device, precision="fp32")  # int8 has no gradients
    ex = saliency(
        clf,
        args.file,
        label=args.label,
        start_s=args.start,
        end_s=args.end,
        max_seconds=args.max_seconds,
    )
    plots.explanation(ex, args.out)
    print(f"{ex.describe()}; wrote {args.out}", file=sys.stderr)
    print(f"{args.file}\t{ex.label}\t{ex.score:.3f}\t{ex.start_s:.2f}\t{ex.end_s:.2f}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    m = run_demo(args.out, seed=args.seed, device=args.device)
    return 0 if m["accuracy"] > 0 else 1


def cmd_serve(args) -> int:
    from .device import resolve_device
    from .serve import ServeConfig, check_port, serve

    fields = dataclasses.fields(ServeConfig)
    cfg = ServeConfig(**{f.name: getattr(args, f.name) for f in fields if hasattr(args, f.name)})
    check_port(cfg.host, cfg.port)
    onnx = args.model.suffix.lower() == ".onnx"
    clf = _load(args.model, resolve_device("cpu" if onnx else args.device), onnx, args.precision)
    print(f"serving {args.model} on http://{cfg.host}:{cfg.port}/ (Ctrl-C to stop)", flush=True)
    serve(clf, cfg, name=args.model.parent.name or args.model.stem)
    return 0


def _load(model: Path, device, onnx: bool, precision: str):
    """A Classifier from a model file, or from an exported .onnx graph (onnxruntime, CPU; its
    precision is the graph's, chosen at export)."""
    if onnx:
        from .export import load_onnx

        if precision not in ("auto", "fp32"):
            raise ValueError(
                f"{model}: an ONNX graph runs at the precision it was exported with "
                "(`audiovit export --int8` for int8); --precision is for model files"
            )
        return load_onnx(model)
    from .inference import load_model

    return load_model(model, device=device, precision=precision)


def cmd_info(args) -> int:
    from .checkpoint import read_model_file, summary

    obj = read_model_file(args.model)
    if not args.json:
        print(summary(args.model, obj))
        return 0
    info = {k: obj.get(k) for k in ("format", "labels", "model_config", "feature_config", "meta")}
    info["n_parameters"] = int(sum(v.numel() for v in obj["state_dict"].values()))
    print(json.dumps(info, indent=2, ensure_ascii=False))
    return 0


HOP_HELP = "seconds between scored windows (default: windows side by side, no overlap)"
DEVICE_HELP = "auto (CUDA when present), cpu, cuda, cuda:1, ..."

PRECISION_HELP = (
    "how windows are scored: fp32; bf16 autocast; int8 (CPU: the transformer's linear layers "
    "dynamically quantized); auto: bf16 where the hardware runs it fast, else int8 on a CPU"
)


def _train_parser(sub) -> None:
    from .train import TrainConfig

    p = sub.add_parser(
        "train", help="train a model on a folder-per-class dataset or a CSV manifest"
    )
    p.add_argument(
        "data", type=Path, help="folder with one sub-folder per class, or a manifest .csv"
    )
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    _add_split_flags(p)
    _add_config_flags(p, TrainConfig)
    p.set_defaults(func=cmd_train)


def _pretrain_parser(sub) -> None:
    from .pretrain import PretrainConfig

    p = sub.add_parser(
        "pretrain",
        help="pretrain a backbone by masked-spectrogram modelling on procedural audio and your "
        "own unlabelled recordings",
    )
    p.add_argument(
        "data",
        nargs="*",
        type=Path,
        help="folders (walked for audio) or manifests; labels are ignored",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for backbone.pt, last.pt")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    _add_config_flags(p, PretrainConfig)
    p.set_defaults(func=cmd_pretrain)


def _evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="score a model on labelled data")
    p.add_argument("model", type=Path, help="model file (model.pt)")
    p.add_argument(
        "data", type=Path, help="folder with one sub-folder per class, or a manifest .csv"
    )
    p.add_argument("--out", type=Path, help="folder for report.html, metrics.json, predictions.csv")
    p.add_argument("--hop", type=float, help=HOP_HELP)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    p.add_argument("--cache-dir", help="feature cache folder")
    _add_split_flags(p)
    p.set_defaults(func=cmd_evaluate)


def _predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="classify audio files or folders of any length")
    p.add_argument("model", type=Path, help="model file (model.pt), or .onnx with --backend onnx")
    p.add_argument("paths", nargs="+", help="files or folders (walked for audio files)")
    p.add_argument(
        "--top-k", type=int, default=TOP_K, help=f"classes listed per file (default: {TOP_K})"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per input per line")
    timeline = (
        "also give the labels over time: runs of one label (text and JSON 'timeline') "
        "and, in JSON, every window ('segments')"
    )
    p.add_argument("--timeline", action="store_true", help=timeline)
    p.add_argument("--hop", type=float, help=HOP_HELP)
    p.add_argument("--timeline-out", type=Path, metavar="FILE", help="timeline as .csv or .json")
    p.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="write results here, not to stdout (needed under torchrun)",
    )
    p.add_argument(
        "--plot", type=Path, metavar="PNG", help="probabilities over time on the log-mel"
    )
    p.add_argument(
        "--output-dir",
        type=Path,
        metavar="DIR",
        help="also write one result file per input there (named after it), and predictions.csv "
        "with a row per input",
    )
    p.add_argument(
        "--output-format",
        nargs="+",
        choices=[*OUTPUT_FORMATS, "all"],
        default=["all"],
        help="the files --output-dir gets per input: txt (the text result and its timeline), "
        "json (result, timeline, every window's probabilities), csv (one row per window)",
    )
    p.add_argument(
        "--backend",
        choices=["torch", "onnx"],
        default="torch",
        help="onnx: MODEL is an .onnx file from `audiovit export`",
    )
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    p.set_defaults(func=cmd_predict)


def _other_parsers(sub) -> None:
    """export, explain, demo, serve, info."""
    from .explain import MAX_SECONDS
    from .serve import ServeConfig

    p = sub.add_parser(
        "export", help="export a model to ONNX (log-mel → logits) with a .json beside it"
    )
    p.add_argument("model", type=Path, help="model file (model.pt)")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", type=Path, required=True, help=".onnx file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    p.add_argument(
        "--int8", action="store_true", help="quantize the graph's matrix products to int8"
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("explain", help="draw which time-frequency regions drove a prediction")
    p.add_argument("model", type=Path, help="model file (model.pt)")
    p.add_argument("file", type=Path, help="audio file")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--label", help="the class to explain (default: the span's top class)")
    p.add_argument("--start", type=float, default=0.0, metavar="S", help="span start, seconds")
    p.add_argument(
        "--end", type=float, metavar="S", help="span end, seconds (default: start + --max-seconds)"
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=MAX_SECONDS,
        help=f"the longest span explained at once (default: {MAX_SECONDS:g})",
    )
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("demo", help="synthesise data, train, evaluate and predict (no data needed)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder to write")
    p.add_argument("--seed", type=int, default=0, help="seeds the data and the training")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("serve", help="HTTP service with a page: POST /predict, GET /health, GET /")
    p.add_argument("model", type=Path, help="model file (model.pt)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    _add_config_flags(p, ServeConfig)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("info", help="labels, settings and metrics stored in a model file")
    p.add_argument("model", type=Path, help="model file (model.pt)")
    p.add_argument("--json", action="store_true", help="everything the file holds but weights")
    p.set_defaults(func=cmd_info)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audiovit", description="Vision Transformer audio classifier"
    )
    parser.add_argument("--version", action="version", version=f"audiovit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_train_parser, _pretrain_parser, _evaluate_parser, _predict_parser, _other_parsers):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .audio import AudioError
    from .checkpoint import CheckpointError
    from .data import DataError
    from .pretrain import PretrainError
    from .train import TrainingError

    args = build_parser().parse_args(argv)
    finished = False
    try:
        code = args.func(args)
        finished = True
        return code
    except (AudioError, CheckpointError, DataError, PretrainError, TrainingError, ValueError) as e:
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
