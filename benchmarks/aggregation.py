"""Test-time aggregation: how a clip's windows are combined, re-scored on the models that
benchmarks/accuracy.py trained (no training here).

    python benchmarks/aggregation.py [gtzan-artist us8k] [--runs runs/accuracy] [--cache-dir DIR]

For each protocol's run folders (RUNS/<protocol>/<fold>), every test clip's windows are scored
with the weights the run kept (model.pt) at three hops (a quarter, half and a whole window —
the default, windows back to back) and combined four ways: mean of probabilities (the default),
mean of log-probabilities, majority vote of the windows' labels, and the centre window alone.
Accuracy is pooled over the protocol's folds. Two more rows score, with the default
aggregation, both epoch rules' weights whichever of them the run kept: the best epoch on
validation (best.pt where the run kept the last epoch, else model.pt) and the last (last.pt). Writes
benchmarks/results/aggregation.{md,json}.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import date
from pathlib import Path

import numpy as np
import torch

from audiovit import checkpoint
from audiovit.features import FeatureCache, default_cache_dir
from audiovit.inference import frame_windows, load_model
from common import RESULTS, ROOT, hardware

RULES = {
    "mean of probabilities": lambda p: p.mean(0),
    "mean of log-probabilities": lambda p: p.clamp_min(1e-9).log().mean(0),
    "majority vote": lambda p: (
        torch.bincount(p.argmax(1), minlength=p.shape[1]).float() + 1e-3 * p.mean(0)
    ),  # ties broken by the mean
    "centre window": lambda p: p[len(p) // 2],
}
HOPS = {"¼ window": 4, "½ window": 2, "1 window (default)": 1}
DEFAULT = "1 window (default)"
WEIGHTS = ("best epoch on validation", "last epoch")  # rows: the mean of probabilities with each


def score_protocol(runs: Path, cache_dir: Path) -> dict:
    correct = {(h, r): 0 for h in HOPS for r in RULES}
    other = dict.fromkeys(WEIGHTS, 0)  # the default aggregation with each rule's weights
    kept, n = [], 0
    for run in sorted(p for p in runs.iterdir() if (p / "predictions.csv").is_file()):
        clf = load_model(run / "model.pt", device="cpu")
        cache = FeatureCache(cache_dir, clf.logmel)
        index = {lb: i for i, lb in enumerate(clf.labels)}
        rule = json.loads((run / "metrics.json").read_text()).get("keep", "best")
        kept.append(rule)
        if rule == "last" and not (run / "best.pt").is_file():
            sys.exit(f"{run}: kept the last epoch but holds no best.pt (an older run, or one "
                     "whose validation carve trained too: nothing to compare against)")  # fmt: skip
        best = load_model(run / ("best.pt" if rule == "last" else "model.pt"), device="cpu")
        last = load_model(run / "model.pt", device="cpu")
        state = checkpoint.safe_load(run / "last.pt")  # the averaged weights where it kept an EMA
        last.model.load_state_dict(state["ema"] if "ema" in state else state["model"])
        with open(run / "predictions.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            feats = torch.from_numpy(cache.get(row["path"]).astype(np.float32))
            target = index[row["label"]]
            for hop_name, div in HOPS.items():
                windows, _ = frame_windows(feats, clf.win, max(1, clf.win // div))
                probs = clf.window_probs(windows)
                for r, fn in RULES.items():
                    correct[hop_name, r] += int(fn(probs).argmax()) == target
            for name, c in zip(WEIGHTS, (best, last)):
                other[name] += int(c.predict_features(feats).argmax()) == target
        n += len(rows)
    acc = {f"{h} | {r}": c / n for (h, r), c in correct.items()}
    acc.update(
        {f"{DEFAULT} | mean of probabilities, {w}'s weights": c / n for w, c in other.items()}
    )
    return {"n": n, "kept": kept, "accuracy": acc}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("protocols", nargs="*", default=["gtzan-artist", "us8k"])
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "accuracy",
                   help="accuracy.py's --runs folder (default: runs/accuracy)")  # fmt: skip
    p.add_argument(
        "--cache-dir", type=Path, default=None, help="feature cache (default: audiovit's)"
    )
    args = p.parse_args(argv)
    out = {}
    for name in args.protocols:
        runs = args.runs / name
        if not runs.is_dir():
            print(f"{name}: no runs in {runs}; run benchmarks/accuracy.py {name} first")
            continue
        out[name] = score_protocol(runs, args.cache_dir or default_cache_dir())
        print(name, json.dumps(out[name], indent=1), flush=True)
    if not out:
        return 1
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "aggregation.json").write_text(json.dumps(out, indent=2) + "\n")
    names = list(out)
    kept = "; ".join(f"{p}: {', '.join(out[p]['kept'])}" for p in names)
    command = " ".join(["python benchmarks/aggregation.py", *(argv or sys.argv[1:])])
    lines = ["# Test-time aggregation (models from benchmarks/accuracy.py, pooled test accuracy)",
             "", f"Command: `{command}`, {date.today()}, {hardware(torch.device('cpu'))}. The",
             "hop and rule rows score the epoch each run kept (model.pt; per fold: "
             f"{kept}).", "",
             "| hop | rule | " + " | ".join(f"{p} (n={out[p]['n']})" for p in names) + " |",
             "|---|---|" + "---|" * len(names)]  # fmt: skip
    for key in out[names[0]]["accuracy"]:
        h, r = key.split(" | ")
        cells = " | ".join(f"{out[p]['accuracy'][key]:.3f}" for p in names)
        lines.append(f"| {h} | {r} | {cells} |")
    (RESULTS / "aggregation.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
