"""What a training run leaves in its folder when it ends — model.pt's final metadata,
metrics.json, predictions.csv, the plots and report.html — and the same for an evaluation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, data, distributed, evaluate, plots, report
from .batches import Prepared
from .device import float_precision
from .evaluate import score_clips
from .inference import Classifier


def validation_score(rec: dict) -> tuple[float, float]:
    """What "best on validation" maximises in a log.jsonl record: accuracy, then lower loss."""
    return rec["valid_acc"], -rec["valid_loss"]


def finish(
    out: Path,
    prep: dict[str, Prepared],
    log_records: list[dict],
    keep: str,
    *,
    amp: bool,
    hop_s: float | None,
    device: torch.device,
    log,
) -> dict:
    """Score model.pt (the epoch ``keep`` chose) on test (else valid); write metrics.json,
    predictions.csv, the plots and report.html (rank 0; every rank returns the metrics)."""
    distributed.barrier()  # rank 0 has written model.pt
    model, fcfg, labels, saved_meta = checkpoint.load_model(out / "model.pt", device)
    clf = Classifier(model, fcfg, labels, device=device, precision=float_precision(device, amp))
    split = "test" if prep["test"].feats else "valid"
    m, _, probs = score_clips(clf, prep[split].feats, prep[split].targets, hop_s)
    validated = [r for r in log_records if r["valid_loss"] is not None]
    best = max(validated, key=validation_score, default={})
    m = {
        **m,
        "split": split,
        "epoch": saved_meta.get("epoch"),
        "keep": keep,
        "best_epoch": best.get("epoch"),
    }
    if not distributed.is_main():
        return m
    (out / "metrics.json").write_text(json.dumps(m, indent=2))
    checkpoint.save_model(
        out / "model.pt", model, fcfg, labels, {**saved_meta, "metrics": headline(m)}
    )
    plots.confusion_matrix(m, out / "confusion.png")
    plots.per_class_f1(m, out / "per_class_f1.png")
    if log_records:
        plots.training_curves(log_records, out / "curves.png")
    write_predictions(out / "predictions.csv", prep[split].items, probs, labels)
    report.write_report(out)
    log(f"\n{split} set, {report.kept_weights(m)}:\n{evaluate.format_table(m)}")
    return m


def write_predictions(path: Path, items: list[data.Item], probs: np.ndarray, labels) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "predicted", "score"])
        for it, p in zip(items, probs):
            w.writerow([it.path, it.label, labels[int(p.argmax())], f"{p.max():.4f}"])


def headline(m: dict) -> dict:
    return {k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "n", "split")}


def data_meta(ds, splits, prep, labels, skipped) -> dict:
    return {
        "labels": labels,
        "counts": {
            n: {lb: int(sum(1 for t in prep[n].targets if labels[t] == lb)) for lb in labels}
            for n in data.SPLITS
        },
        "skipped": skipped[:100],
        "n_skipped": len(skipped),
        "notes": ds.notes + splits.notes,
    }


def write_evaluation(out: Path, model: Path, m: dict, scored: list, labels: list[str]) -> None:
    """``audiovit evaluate --out``: metrics.json, predictions.csv, the confusion matrix, the
    per-class F1 and report.html, as a training run writes them; ``scored`` is
    [(item, probabilities (C,))]."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(m, indent=2))
    items = [it for it, _ in scored]
    probs = np.stack([p for _, p in scored]) if scored else np.zeros((0, len(labels)))
    write_predictions(out / "predictions.csv", items, probs, labels)
    plots.confusion_matrix(m, out / "confusion.png")
    plots.per_class_f1(m, out / "per_class_f1.png")
    report.write_report(out, model=model)
