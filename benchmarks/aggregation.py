"""Test-time aggregation: how a clip's windows are combined, re-scored on the models that
benchmarks/accuracy.py trained (no training here).

    python benchmarks/aggregation.py [gtzan-artist us8k]

For each protocol's run folders (runs/accuracy/<protocol>/<fold>), every test clip's windows are
scored at three hops (a quarter, half — the default — and a whole window) and combined four
ways: mean of probabilities (the default), mean of log-probabilities, majority vote of the
windows' labels, and the centre window alone. Accuracy is pooled over the protocol's folds. One more row scores the last epoch's
weights (from last.pt) instead of the epoch chosen on validation, with the default aggregation.
Writes benchmarks/results/aggregation.{md,json}.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

from audiovit import checkpoint
from audiovit.features import FeatureCache, default_cache_dir
from audiovit.inference import frame_windows, load_model

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RULES = {
    "mean of probabilities": lambda p: p.mean(0),
    "mean of log-probabilities": lambda p: p.clamp_min(1e-9).log().mean(0),
    "majority vote": lambda p: (
        torch.bincount(p.argmax(1), minlength=p.shape[1]).float() + 1e-3 * p.mean(0)
    ),  # ties broken by the mean
    "centre window": lambda p: p[len(p) // 2],
}
HOPS = {"¼ window": 4, "½ window (default)": 2, "1 window": 1}
DEFAULT = "½ window (default)"


def score_protocol(runs: Path, cache_dir: Path) -> dict:
    correct = {(h, r): 0 for h in HOPS for r in RULES}
    last_correct, n = 0, 0
    for run in sorted(p for p in runs.iterdir() if (p / "predictions.csv").is_file()):
        clf = load_model(run / "model.pt", device="cpu")
        cache = FeatureCache(cache_dir, clf.logmel)
        index = {lb: i for i, lb in enumerate(clf.labels)}
        last = load_model(run / "model.pt", device="cpu")
        last.model.load_state_dict(checkpoint.safe_load(run / "last.pt")["model"])
        with open(run / "predictions.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            feats = torch.from_numpy(cache.get(row["path"]).astype(np.float32))
            target = index[row["label"]]
            for hop_name, div in HOPS.items():
                windows, _ = frame_windows(feats, clf.win, max(1, clf.win // div))
                probs = clf.window_probs(windows)
                for rule, fn in RULES.items():
                    correct[hop_name, rule] += int(fn(probs).argmax()) == target
            last_correct += int(last.predict_features(feats).argmax()) == target
        n += len(rows)
    acc = {f"{h} | {r}": c / n for (h, r), c in correct.items()}
    return {"n": n, "accuracy": {**acc, f"{DEFAULT} | last epoch's weights": last_correct / n}}


def main(argv: list[str]) -> int:
    protocols = argv or ["gtzan-artist", "us8k"]
    out = {}
    for name in protocols:
        runs = ROOT / "runs" / "accuracy" / name
        if not runs.is_dir():
            print(f"{name}: no runs in {runs}; run benchmarks/accuracy.py {name} first")
            continue
        out[name] = score_protocol(runs, default_cache_dir())
        print(name, json.dumps(out[name], indent=1), flush=True)
    if not out:
        return 1
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "aggregation.json").write_text(json.dumps(out, indent=2) + "\n")
    names = list(out)
    lines = ["# Test-time aggregation (models from benchmarks/accuracy.py, pooled test accuracy)",
             "", "Command: `python benchmarks/aggregation.py " + " ".join(protocols) + "`", "",
             "| hop | rule | " + " | ".join(f"{p} (n={out[p]['n']})" for p in names) + " |",
             "|---|---|" + "---|" * len(names)]  # fmt: skip
    for key in out[names[0]]["accuracy"]:
        h, r = key.split(" | ")
        cells = " | ".join(f"{out[p]['accuracy'][key]:.3f}" for p in names)
        lines.append(f"| {h} | {r} | {cells} |")
    (RESULTS / "aggregation.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
