"""Accuracy benchmark on real public audio, with the default training settings.

    python benchmarks/accuracy.py                      # every protocol (2 CPU cores: see below)
    python benchmarks/accuracy.py gtzan-artist us8k    # some of them
    python benchmarks/accuracy.py --resume             # finish runs cut short
    python benchmarks/accuracy.py --workers 1          # one fold at a time, with every thread

Protocols (the datasets' manifests in ../shared/data encode them; see its README):

    fsdd-official   FSDD, official split: takes 0-4 of each digit and speaker are test
    fsdd-speaker    FSDD, leave one speaker out: 6 folds, mean over folds
    gtzan-artist    GTZAN, artist-filtered 3-fold cross-validation, pooled over the test clips
    us8k            UrbanSound8K, train on folds 1-3, test on fold 10

Each fold trains with ``audiovit.train`` and ``TrainConfig()`` as a new user gets it (validation
is carved from the training folds, group-aware), and scores its model.pt on the held-out fold:
the epoch ``keep="auto"`` (the default) chose — the best on validation where the validation carve
holds enough clips per class, else the last, the carve then training too (GTZAN). The other
rule's weights (last.pt or best.pt) are scored on the same fold too ("best on validation" and
"last epoch" columns): the same run under both rules, so the two compare without seed noise;
a fold whose carve trained has no best on validation ("—"). Next to every
ViT row sits a classical reference measured on the same splits and
the same log-mels: MFCC statistics (20 coefficients and their deltas, mean and standard
deviation) → standardisation → an RBF SVM (scikit-learn, a benchmark-only dependency), trained
on train + valid since it needs no early stopping.

On a CPU two folds train at once by default, each in its own process with half the threads:
on the 2-core Xeon two one-thread processes train 11-41 % more clips per second than one
two-thread process (NOTES.md, "Throughput and the budget"). The costliest folds start first, and
the last fold left takes the idle worker's thread. What whole runs cost on each machine:
NOTES.md, "Whole runs of the benchmark".

Results are merged into benchmarks/results/accuracy.{json,md} by protocol and device (cpu,
cuda), and by preset and epochs where they are not the defaults: a protocol run alone updates
its own rows, and a run at today's defaults replaces the last one's rows on that device. The
run folders (models, reports) go to runs/accuracy.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

from audiovit.features import default_cache_dir
from audiovit.loop import BEFORE_FIELD
from audiovit.pretrained import start_settings
from audiovit.train import MIN_VALID_PER_CLASS, TrainConfig
from common import RESULTS, ROOT
from protocols import (
    BENCHMARK,
    PROTOCOLS,
    FoldsFailed,
    default_workers,
    kept_cell,
    rule_cell,
    run_protocols,
)


def row_key(row: dict) -> str:
    """A row's key in accuracy.json: protocol@device, then the preset, epochs and start where
    they are not today's defaults (",epochs=25"), so other schedules, sizes and starts sit beside
    the defaults."""
    d, s = TrainConfig(), row["settings"]
    keys = ("preset", "epochs", "init")
    variant = "".join(f",{k}={s[k]}" for k in keys if s.get(k, getattr(d, k)) != getattr(d, k))
    return f"{row['protocol']}@{row['device']}{variant}"


def _model(row: dict) -> str:
    """The preset, stem, schedule and kept epoch, marked where they differ from the defaults
    (rows from before the stem and keep fields trained the patch embedding and kept the best
    epoch on validation)."""
    d, s = TrainConfig(), row["settings"]
    stem, keep = s.get("stem", BEFORE_FIELD["stem"]), s.get("keep", BEFORE_FIELD["keep"])
    same = (s["preset"], stem, s["epochs"], keep) == (d.preset, d.stem, d.epochs, d.keep)
    return (f"{s['preset']}, {stem} stem, {s['epochs']} epochs, keep {keep}"
            f"{'' if same else ' (not default)'}")  # fmt: skip


def write_results(rows: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "accuracy.json").write_text(json.dumps(rows, indent=2) + "\n")
    order = {n: i for i, n in enumerate(PROTOCOLS)}
    rs = sorted(rows.values(), key=lambda r: (r["device"], order.get(r["protocol"], 99), _model(r)))
    lines = [
        "# Accuracy (default settings, no tuning flags)", "",
        "Written by `python benchmarks/accuracy.py`; each row's own command, date and hardware "
        "are in accuracy.json. MFCC+SVM: the classical reference on the same splits and log-mels. "
        "Accuracy: the epoch each run kept (the model column names the rule; `auto` keeps the "
        f"best on validation where the validation carve holds {MIN_VALID_PER_CLASS} clips per "
        "class, else the last). Best on validation, last epoch: the same runs scored with each rule's weights, "
        "so the rules compare without seed noise.",
        "",
        "| dataset | protocol | model | accuracy | balanced acc. | macro-F1 | test clips | target | "
        "MFCC+SVM | best on validation | last epoch | train time | hardware | date |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rs:
        met = (
            "met"
            if r["accuracy"] >= r["target"]
            else f"missed by {r['target'] - r['accuracy']:.3f}"
        )
        lines.append(
            f"| {r['dataset']} | {r['description']} | {_model(r)} | **{r['accuracy']:.3f}** | "
            f"{r['balanced_accuracy']:.3f} | {r['macro_f1']:.3f} | {r['n']} | "
            f"{r['target']:.2f} ({met}) | {r['baseline_accuracy']:.3f} | {rule_cell(r, 'best')} | "
            f"{rule_cell(r, 'last')} | "
            f"{r['train_s'] / 60:.1f} min | {r['hardware']} | {r['date']} |"
        )
    runs = {(r["command"], r["run_wall_s"], r["hardware"], r["date"]): r["run_protocols"]
            for r in rs if "run_wall_s" in r}  # rows of one command share its wall time  # fmt: skip
    if runs:
        lines += ["", "## Wall time of each command", "",
                  "| command | protocols | wall time | hardware | date |", "|---|---|---|---|---|"]  # fmt: skip
        for (command, wall, hw, day), protocols in runs.items():
            lines.append(
                f"| `{command}` | {', '.join(protocols)} | {wall / 60:.1f} min | {hw} | {day} |"
            )
    lines += ["", "## Per fold", "",
              "| protocol | fold | accuracy | balanced acc. | macro-F1 | test clips | MFCC+SVM | "
              "kept | best epoch | best on validation | last epoch | train time |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rs:
        for f in r["folds"]:
            lines.append(
                f"| {r['protocol']} ({r['device']}, {_model(r)}) | {f['fold']} | {f['accuracy']:.3f} | "
                f"{f['balanced_accuracy']:.3f} | {f['macro_f1']:.3f} | {f['n']} | "
                f"{f['baseline_accuracy']:.3f} | {kept_cell(f)} | {f['best_epoch'] or '—'} | "
                f"{rule_cell(f, 'best')} | {rule_cell(f, 'last')} | "
                f"{f['train_s'] / 60:.1f} min |"
            )
    settings = {json.dumps(r["settings"], sort_keys=True) for r in rs}
    lines += ["", "## Settings", ""]
    lines += [f"```\n{json.dumps(json.loads(s), indent=1)}\n```" for s in sorted(settings)]
    (RESULTS / "accuracy.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "protocols",
        nargs="*",
        metavar="PROTOCOL",
        help=f"any of {', '.join(PROTOCOLS)} (default: {', '.join(BENCHMARK)})",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=ROOT.parent / "shared" / "data",
        help="folder holding fsdd/, gtzan/, urbansound8k/ (default: ../shared/data)",
    )
    p.add_argument(
        "--runs",
        type=Path,
        default=ROOT / "runs" / "accuracy",
        help="where each fold's run folder goes (default: runs/accuracy)",
    )
    p.add_argument("--cache-dir", default=None, help="feature cache (default: audiovit's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--resume", action="store_true", help="continue runs cut short")
    p.add_argument(
        "--preset",
        default=None,
        help="another model size (tiny, small, base); its "
        "rows are kept beside the defaults' (for GPU runs)",
    )
    p.add_argument("--epochs", type=int, default=None, help="a longer or shorter schedule")
    p.add_argument(
        "--init",
        default=None,
        metavar="MODEL",
        help="start every fold from this audiovit model file (never one that saw a protocol's "
        "test clips); its rows are kept beside the defaults', named by the file",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="folds trained at once, each in its own process with an equal share of the "
        "threads (default: 2 on a CPU with 2 or more threads, 1 on a GPU)",
    )
    p.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=[],
        metavar="JSON",
        help="add the rows of accuracy.json files written elsewhere or under other "
        "defaults, keyed by their settings (no training)",
    )
    args = p.parse_args(argv)  # fmt: skip
    unknown = sorted(set(args.protocols) - set(PROTOCOLS))
    if unknown:
        p.error(f"unknown protocol(s) {', '.join(unknown)}; choose from {', '.join(PROTOCOLS)}")
    cfg = TrainConfig(device=args.device, cache_dir=str(args.cache_dir or default_cache_dir()))
    given = (("preset", args.preset), ("epochs", args.epochs), ("init", args.init))
    changed = {k: v for k, v in given if v is not None}
    cfg = replace(cfg, **(start_settings(args.init) if args.init else {}), **changed)
    variant = "".join(f",{k}={v}" for k, v in changed.items())
    if variant:
        args.runs = args.runs / re.sub(r"[^\w=,.-]+", "_", variant[1:])  # an --init path's slashes
    path = RESULTS / "accuracy.json"
    rows = json.loads(path.read_text()) if path.exists() else {}
    if args.merge:
        for src in args.merge:
            if not src.is_file():
                p.error(f"{src}: no such file")
        for src in args.merge:
            rows.update({row_key(r): r for r in json.loads(src.read_text()).values()})
        write_results(rows)
        return 0
    names = []
    for name in args.protocols or BENCHMARK:
        manifest = args.data / PROTOCOLS[name].manifest
        if manifest.is_file():
            names.append(name)
        else:
            print(f"{name}: {manifest} not found; skipped", file=sys.stderr)
    t0 = time.perf_counter()

    def finished(row: dict) -> None:
        rows[row_key(row)] = row
        write_results(rows)  # after each protocol: a cut-short run keeps what it finished
        print(f"\n{row['protocol']}: accuracy {row['accuracy']:.4f} (target {row['target']}), "
              f"MFCC+SVM {row['baseline_accuracy']:.4f}, {row['wall_s'] / 60:.1f} min", flush=True)  # fmt: skip

    workers = args.workers or default_workers(cfg.device)
    try:
        done = run_protocols(names, args, cfg, workers, on_row=finished)
    except ValueError as e:  # a fold the protocol does not have
        p.error(str(e))
    except FoldsFailed as e:  # the protocols whose folds all finished are written already
        print(f"accuracy.py: {e}", file=sys.stderr)
        return 1
    if done:  # each row records the whole command's wall time and the protocols it ran
        run = {"run_wall_s": round(time.perf_counter() - t0, 1), "run_protocols": names}
        for row in done.values():
            rows[row_key(row)] = {**row, **run}
        write_results(rows)
        n = max(r["workers"] for r in done.values())
        print(f"\n{', '.join(names)}: {run['run_wall_s'] / 60:.1f} min of wall time "
              f"({n} fold{'s' if n > 1 else ''} at once)", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
