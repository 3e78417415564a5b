"""int8 against fp32 on a benchmark protocol's test clips: one trained model scored both ways
(torch's dynamic quantization, and onnxruntime's for the exported graph). Writes
benchmarks/results/int8.{md,json}; a row per (protocol, fold, model), merged with earlier rows.

    python benchmarks/int8.py PROTOCOL FOLD MODEL.pt [MODEL.pt ...] [--data DIR]

FOLD is the protocol's test fold (``official`` for a split protocol). The model must be one that
never saw that fold's test clips (the fold's own run of ``ablate.py`` or ``accuracy.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
import torch

from audiovit.evaluate import evaluate_items
from audiovit.export import export_onnx, load_onnx
from audiovit.features import FeatureCache, LogMel, default_cache_dir
from audiovit.inference import load_model
from common import RESULTS, ROOT, hardware
from protocols import PROTOCOLS, protocol_jobs

ROUTES = ("torch int8", "onnxruntime int8")


def compare(model: Path, items, cache_dir: Path) -> dict:
    """Accuracy of fp32 and of each int8 route on ``items``, and how far int8 moved from fp32:
    clips whose label changed, and the largest change of a class probability."""
    out = {}
    with tempfile.TemporaryDirectory() as d:
        onnx = Path(d) / "model.onnx"
        export_onnx(model, onnx, int8=True)
        classifiers = {"fp32": load_model(model, device="cpu", precision="fp32"),
                       "torch int8": load_model(model, device="cpu", precision="int8"),
                       "onnxruntime int8": load_onnx(onnx)}  # fmt: skip
        probs = {}
        for name, clf in classifiers.items():
            cache = FeatureCache(cache_dir, LogMel(clf.feature_cfg))
            m, _, scored = evaluate_items(clf, items, cache)
            probs[name] = np.stack([p for _, p in scored])
            out[name] = {"accuracy": m["accuracy"], "n": m["n"]}
    for name in ROUTES:
        changed = probs[name].argmax(1) != probs["fp32"].argmax(1)
        out[name]["labels_changed"] = int(changed.sum())
        out[name]["max_prob_change"] = float(np.abs(probs[name] - probs["fp32"]).max())
    return out


def render(rows: dict) -> str:
    lines = ["# int8 against fp32 on the protocols' test clips", "",
             "Each row: one trained model scored in fp32 and in int8 (`python benchmarks/int8.py "
             "PROTOCOL FOLD MODEL`). Labels changed: test clips whose predicted class differs "
             "from fp32's; Δp: the largest change of any class probability.", "",
             "| protocol | fold | model | test clips | fp32 | torch int8 | labels changed | "
             "Δp | onnxruntime int8 | labels changed | Δp | hardware | date |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in sorted(rows.values(), key=lambda r: (r["protocol"], r["fold"], r["model"])):
        s = r["scores"]
        cells = [r["protocol"], r["fold"], f"`{r['model']}`", str(s["fp32"]["n"]),
                 f"{s['fp32']['accuracy']:.3f}"]  # fmt: skip
        for name in ROUTES:
            cells += [f"{s[name]['accuracy']:.3f}", str(s[name]["labels_changed"]),
                      f"{s[name]['max_prob_change']:.3f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells + [r["hardware"], r["date"]]) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("protocol", choices=list(PROTOCOLS))
    p.add_argument("fold")
    p.add_argument("models", nargs="+", type=Path)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = p.parse_args()
    runs = Path(tempfile.gettempdir()) / "audiovit-int8"  # protocol_jobs names run folders
    [job] = protocol_jobs(args.protocol, argparse.Namespace(data=args.data, runs=runs),
                          only=[args.fold])  # fmt: skip
    path = RESULTS / "int8.json"
    rows = json.loads(path.read_text()) if path.exists() else {}
    for model in args.models:
        scores = compare(model, job.splits.test, default_cache_dir())
        name = str(model.resolve().relative_to(ROOT) if model.resolve().is_relative_to(ROOT)
                   else model)  # fmt: skip
        rows[f"{args.protocol}|{args.fold}|{name}"] = {
            "protocol": args.protocol, "fold": args.fold, "model": name, "scores": scores,
            "hardware": hardware(torch.device("cpu")), "date": str(date.today())}  # fmt: skip
        print(f"{name}: " + ", ".join(f"{k} {v['accuracy']:.4f}" for k, v in scores.items()))
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(rows, indent=2) + "\n")
    (RESULTS / "int8.md").write_text(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
