"""One ablation row: the accuracy benchmark's protocol (or some of its folds) with one change to
the default TrainConfig. Rows are merged into benchmarks/results/ablations.{json,md}.

    python benchmarks/ablate.py gtzan-artist --folds 1 --set balance_classes=true
    python benchmarks/ablate.py fsdd-speaker --folds theo --set ema_epochs=2 --set epochs=40
    python benchmarks/ablate.py gtzan-artist --folds 1                 # the defaults, as reference
    python benchmarks/ablate.py gtzan-artist --folds 1 --set stem="patch" --set seed=1

Rows that differ only in their seed are also summarised (mean, min-max) in a seed-spread table;
a change run fold by fold over every fold of a protocol scored by its folds' mean (FSDD leave one
speaker out, e.g. one fold per process on a GPU) is combined into that protocol's headline row.

    python benchmarks/ablate.py --merge other/ablations.json   # rows written on another machine
    python benchmarks/ablate.py --from-benchmark old/accuracy.json  # a whole accuracy.py run with
                                        # other settings: one row per protocol, labelled by them

Settings are TrainConfig field names; values are parsed as JSON (true, 2, 0.3, "cls").
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, replace
from pathlib import Path

from audiovit.features import default_cache_dir
from audiovit.loop import BEFORE_FIELD
from audiovit.train import TrainConfig
from common import RESULTS, ROOT
from protocols import (
    PROTOCOLS,
    FoldsFailed,
    default_workers,
    kept_cell,
    rule_cell,
    run_protocol,
)

# what a row keeps of run_protocol's result (older rows may lack last_accuracy and
# best_accuracy: their accuracy is then the best epoch's on validation)
ROW_FIELDS = ("protocol", "accuracy", "balanced_accuracy", "macro_f1", "n", "baseline_accuracy",
              "best_accuracy", "last_accuracy", "train_s", "hardware", "workers", "date",
              "folds")  # fmt: skip
CURRENT = "defaults (accuracy.json, current)"  # a fold's row of the benchmark, as reference
# The folds of the protocols whose headline is the mean over folds: runs of single folds that
# cover them all are combined into the protocol's headline figure.
ALL_FOLDS = {"fsdd-speaker": ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")}


def row_key(row: dict) -> str:
    """A row's key in ablations.json: the same change on other hardware is another row (CPUs
    with and without bf16 units train differently; see write_results), but not the same
    hardware's threads used another way (one process, or several folds at once)."""
    folds = ",".join(row["only_folds"] or ["all"])
    return f"{row['protocol']}|{folds}|{row['change']}|{short_hardware(row.get('hardware'))}"


def load_rows(path: Path) -> dict:
    """ablations.json's rows, keyed by row_key (files written before the hardware joined the
    key are re-keyed, and rows whose change was labelled ``device=cuda`` lose that label: the
    hardware column names the device)."""
    rows = json.loads(path.read_text()) if path.exists() else {}
    for r in rows.values():
        parts = [c for c in r["change"].split(", ") if not c.startswith("device=")]
        r["change"] = ", ".join(parts) or "defaults"
    return {row_key(r): r for r in rows.values()}


def short_hardware(hw: str | None) -> str:
    """'Intel(R) Xeon(R) Processor @ 2.50GHz, 2 threads' → 'Intel Xeon @ 2.50GHz'."""
    if not hw:
        return "unrecorded"
    return hw.split(",")[0].replace("(R)", "").replace(" Processor", "").strip()


def settings_change(settings: dict) -> str:
    """The settings of a run that differ from today's defaults, as FIELD=VALUE, ... ('' if none);
    a field the run's settings lack had its value from before the field existed (BEFORE_FIELD)."""
    today = asdict(TrainConfig())
    settings = {**BEFORE_FIELD, **settings}
    return ", ".join(f"{k}={v}" for k, v in settings.items() if k in today and today[k] != v)


def benchmark_rows(bench: dict) -> dict:
    """accuracy.json's CPU rows as ablation rows (all folds), each labelled by the settings it
    ran with that differ from today's defaults; rows of today's defaults are left out."""
    out = {}
    for key, r in bench.items():
        change = settings_change(r["settings"])
        if not key.endswith("@cpu") or not change:
            continue
        row = {k: r[k] for k in ROW_FIELDS if k in r}
        row["change"], row["only_folds"] = change, None
        out[row_key(row)] = row
    return out


def reference_rows(rows: dict) -> list[dict]:
    """For single-fold groups without a row of the benchmark's settings: that fold's row of
    accuracy.json (the same settings and seed, so the same run), labelled CURRENT where the
    benchmark ran today's defaults, else with the settings that differ."""
    path = RESULTS / "accuracy.json"
    bench = json.loads(path.read_text()) if path.exists() else {}
    have = {(r["protocol"], tuple(r["only_folds"] or ()), r["change"],
             short_hardware(r.get("hardware"))) for r in rows.values()}  # fmt: skip
    out = []
    for proto, folds in {(r["protocol"], tuple(r["only_folds"] or ())) for r in rows.values()}:
        if len(folds) != 1 or f"{proto}@cpu" not in bench:
            continue
        diff = settings_change(bench[f"{proto}@cpu"]["settings"])
        hardware = short_hardware(bench[f"{proto}@cpu"]["hardware"])
        if (proto, folds, diff or "defaults", hardware) in have:
            continue
        for f in bench[f"{proto}@cpu"]["folds"]:
            if f["fold"] == folds[0]:
                out.append({**f, "protocol": proto, "only_folds": list(folds), "reference": True,
                            "hardware": bench[f"{proto}@cpu"]["hardware"],
                            "change": f"{diff} (accuracy.json)" if diff else CURRENT})  # fmt: skip
    return out


def seed_spread(rows: list[dict]) -> list[str]:
    """Table lines: for each (protocol, folds, change but the seed, epoch kept) run with ≥ 2
    seeds, the mean and range of accuracy and balanced accuracy."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["change"].startswith("defaults") and r["change"] not in ("defaults", CURRENT):
            continue  # defaults of an earlier time
        change = r["change"].removesuffix(" (accuracy.json)")  # a reference row: same settings
        change, _, note = change.partition("; ")  # --note's change made in code
        parts = [] if change in ("defaults", CURRENT) else change.split(", ")
        seed = next((int(p[5:]) for p in parts if p.startswith("seed=")), 0)
        rest = ", ".join(p for p in parts if not p.startswith("seed=")) or "defaults"
        rest += f"; {note}" if note else ""
        key = (r["protocol"], ",".join(r["only_folds"] or ["all"]), rest,
               kept_cell(r), short_hardware(r.get("hardware")))  # fmt: skip
        groups.setdefault(key, []).append({**r, "seed": seed})
    lines = []
    for (proto, folds, change, kept, hw), rs in sorted(groups.items()):
        if len(rs) < 2:
            continue
        rs.sort(key=lambda r: r["seed"])
        cell = lambda k: (f"{sum(r[k] for r in rs) / len(rs):.3f} "
                          f"({min(r[k] for r in rs):.3f}-{max(r[k] for r in rs):.3f})")  # fmt: skip
        seeds = ", ".join(str(r["seed"]) for r in rs)
        each = ", ".join(f"{r['accuracy']:.3f}" for r in rs)
        lines.append(f"| {proto} | {folds} | {change} | {kept} | {seeds} | {each} | "
                     f"{cell('accuracy')} | {cell('balanced_accuracy')} | {hw} |")  # fmt: skip
    if not lines:
        return []
    return ["", "## Seed spread", "",
            "Rows above that differ only in `seed` (seed 0 unless named), kept the same epoch "
            "rule and ran on the same hardware: mean (min-max) over seeds.", "",
            "| protocol | folds | change | kept | seeds | accuracy per seed | accuracy | "
            "balanced acc. | hardware |", "|---|---|---|---|---|---|---|---|---|", *lines]  # fmt: skip


def combined_folds(rows: list[dict]) -> list[str]:
    """Table lines: for each change run one fold at a time over all of ALL_FOLDS[protocol], the
    mean over folds (what the protocol's headline is) and each fold's accuracy."""
    groups: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        folds = r["only_folds"] or []
        if r["protocol"] in ALL_FOLDS and len(folds) == 1 and not r.get("reference"):
            key = (r["protocol"], r["change"], short_hardware(r.get("hardware")))
            groups.setdefault(key, {})[folds[0]] = r
    lines = []
    for (proto, change, hw), by_fold in sorted(groups.items()):
        if set(by_fold) != set(ALL_FOLDS[proto]):
            continue
        rs = [by_fold[f] for f in ALL_FOLDS[proto]]
        mean = lambda k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
        each = ", ".join(f"{f} {r['accuracy']:.3f}" for f, r in zip(ALL_FOLDS[proto], rs))
        lines.append(f"| {proto} | {change} | {mean('accuracy'):.3f} | "
                     f"{mean('balanced_accuracy'):.3f} | {mean('macro_f1'):.3f} | {each} | {hw} |")  # fmt: skip
    if not lines:
        return []
    return ["", "## Changes run one fold at a time, combined", "",
            "The mean over the protocol's folds (its headline figure) of single-fold rows above.",
            "", "| protocol | change | accuracy | balanced acc. | macro-F1 | per fold | hardware |",
            "|---|---|---|---|---|---|---|", *lines]  # fmt: skip


def write_results(rows: dict) -> None:
    path = RESULTS / "ablations.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["# Ablations (one change to the defaults per row)", "",
             "Each row: `python benchmarks/ablate.py PROTOCOL --folds ... --set FIELD=VALUE`, a "
             "single run, seed 0 unless the change names another. A row's change is against "
             "today's defaults: rows run while the linear patch embedding was the default carry "
             "`stem=patch` (those without a change were the benchmark's own rows then); the "
             "'defaults before this change set' rows ran before class balancing became automatic "
             "(benchmarks/NOTES.md, \"Class-balanced sampling and weight averaging\"). Kept: the "
             "epoch whose weights the accuracy is of (rows without a rule: the best on "
             "validation). Best on validation, last epoch: the same run scored with each "
             "rule's weights (a dash: not measured in that run). Compare rows on the same hardware: the AMD EPYC trains in bf16 autocast, "
             "the Intel Xeon (no AVX-512 BF16) in fp32, so one seed lands on different models.",
             "", "| protocol | folds | change | accuracy | balanced acc. | macro-F1 | test clips | "
             "kept | best on validation | last epoch | train time | hardware |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    everything = [*rows.values(), *reference_rows(rows)]
    for r in sorted(everything,
                    key=lambda r: (r["protocol"], str(r["only_folds"]),
                                   not r["change"].startswith("defaults"), r["change"],
                                   short_hardware(r.get("hardware")))):  # fmt: skip
        lines.append(f"| {r['protocol']} | {','.join(r['only_folds'] or ['all'])} | {r['change']} | "
                     f"{r['accuracy']:.3f} | {r['balanced_accuracy']:.3f} | {r['macro_f1']:.3f} | "
                     f"{r['n']} | {kept_cell(r)} | {rule_cell(r, 'best')} | "
                     f"{rule_cell(r, 'last')} | {r['train_s'] / 60:.1f} min | "
                     f"{short_hardware(r.get('hardware'))} |")  # fmt: skip
    lines += combined_folds(everything)
    lines += seed_spread(everything)
    (RESULTS / "ablations.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "protocol",
        nargs="?",
        choices=list(PROTOCOLS),
        help="without one: only re-render ablations.md from ablations.json",
    )
    p.add_argument("--folds", nargs="+", help="only these folds (default: all)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--note", default=None,
                   help="added to the row's label: a change made in code, not by a setting")  # fmt: skip
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--workers", type=int, default=None,
                   help="folds trained at once (default: 2 on a CPU, 1 on a GPU; see accuracy.py)")  # fmt: skip
    p.add_argument("--merge", nargs="+", type=Path, default=[], metavar="JSON",
                   help="add the rows of ablations.json files written elsewhere (no training)")  # fmt: skip
    p.add_argument("--from-benchmark", type=Path, metavar="JSON",
                   help="add an accuracy.json's CPU rows run with settings other than today's")  # fmt: skip
    args = p.parse_args(argv)
    path = RESULTS / "ablations.json"
    if args.protocol is None:
        rows = load_rows(path)
        bench = [args.from_benchmark] if args.from_benchmark else []
        for src in (*args.merge, *bench):
            if not src.is_file():
                p.error(f"{src}: no such file")
        added = [load_rows(src) for src in args.merge]
        added += [benchmark_rows(json.loads(src.read_text())) for src in bench]
        for new in added:
            for key, row in new.items():
                if key in rows and rows[key] != row:
                    print(f"replaced: {key} (accuracy {rows[key]['accuracy']:.3f} -> "
                          f"{row['accuracy']:.3f})")  # fmt: skip
                rows[key] = row
        write_results(rows)
        return 0
    if args.merge or args.from_benchmark:
        p.error("--merge and --from-benchmark take no protocol")
    change = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in TrainConfig.__dataclass_fields__:
            p.error(f"{key!r} is not a TrainConfig field")
        try:
            change[key] = json.loads(value)
        except json.JSONDecodeError:
            change[key] = value
    cfg = replace(TrainConfig(cache_dir=str(args.cache_dir or default_cache_dir())), **change)
    # the device is named by the row's hardware column, not as a change of recipe
    label = ", ".join(f"{k}={v}" for k, v in change.items() if k != "device") or "defaults"
    label += f"; {args.note}" if args.note else ""
    folder = re.sub(r"[^\w=,.-]+", "_", label)  # an --init path's slashes
    run_args = argparse.Namespace(
        data=args.data, resume=False, runs=ROOT / "runs" / "ablations" / folder
    )
    workers = args.workers or default_workers(cfg.device)
    try:
        row = run_protocol(args.protocol, run_args, cfg, only=args.folds, workers=workers)
    except ValueError as e:  # a fold the protocol does not have
        p.error(str(e))
    except FoldsFailed as e:
        print(f"ablate.py: {e}", file=sys.stderr)
        return 1
    row = {k: row[k] for k in ROW_FIELDS}
    row["change"], row["only_folds"] = label, args.folds
    rows = load_rows(path)
    rows[row_key(row)] = row
    write_results(rows)
    print(f"{label}: accuracy {row['accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
