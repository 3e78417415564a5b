"""Classification metrics, and scoring a model on a list of labelled clips."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import distributed
from .audio import AudioError


def metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class precision/recall/F1/support and the
    confusion matrix (rows: true class, columns: predicted). Classes absent from ``y_true``
    are left out of the balanced accuracy and the macro-F1 rather than counted as zero."""
    C = len(labels)
    cm = np.zeros((C, C), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(C), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(C), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(C), where=denom > 0)
    present = support > 0
    n = int(cm.sum())
    return {
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            lb: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, lb in enumerate(labels)
        },
        "confusion_matrix": cm.tolist(),
        "labels": list(labels),
        "n": n,
    }


def format_table(m: dict) -> str:
    """The per-class table and the headline metrics, as printed after training/evaluation."""
    labels = m["labels"]
    w = max(10, *(len(lb) for lb in labels))
    lines = [f"{'class':<{w}} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"]
    for lb in labels:
        r = m["per_class"][lb]
        lines.append(
            f"{lb:<{w}} {r['precision']:>9.3f} {r['recall']:>7.3f} {r['f1']:>7.3f} "
            f"{r['support']:>8d}"
        )
    lines.append(
        f"accuracy {m['accuracy']:.4f}   balanced accuracy {m['balanced_accuracy']:.4f}   "
        f"macro-F1 {m['macro_f1']:.4f}   n = {m['n']}"
    )
    return "\n".join(lines)


def most_confused(m: dict, k: int = 5) -> list[tuple[str, str, int]]:
    """The ``k`` largest off-diagonal cells: (true label, predicted label, count)."""
    cm = np.asarray(m["confusion_matrix"])
    off = [
        (int(cm[i, j]), i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j]
    ]
    return [(m["labels"][i], m["labels"][j], c) for c, i, j in sorted(off, reverse=True)[:k]]


def evaluate_items(clf, items, cache, hop_s: float | None = None) -> tuple[dict, list[str], list]:
    """Score a loaded :class:`~audiovit.inference.Classifier` on labelled items.

    Files that cannot be decoded, and files of classes the model does not know, are skipped.
    Returns (metrics, skipped-file lines, [(item, probabilities (C,))]).
    """
    index = {lb: i for i, lb in enumerate(clf.labels)}
    skipped, kept = [], []
    unknown = sorted({it.label for it in items} - set(index))
    if unknown:
        skipped.append(
            f"{sum(it.label in unknown for it in items)} files of classes the model does not "
            f"know: {', '.join(unknown)}"
        )
    known = [it for it in items if it.label in index]

    def usable():  # decoded as they are scored: a folder of hour-long files is never all in memory
        for it, f in zip(known, cache.get_many(it.path for it in known), strict=True):
            if isinstance(f, AudioError):
                skipped.append(str(f))
            else:
                kept.append(it)
                yield f

    probs = clf.predict_clips(usable(), hop_s).numpy()
    targets = [index[it.label] for it in kept]
    m = metrics(targets, probs.argmax(axis=1) if len(probs) else np.zeros(0, int), clf.labels)
    return m, skipped, list(zip(kept, probs))


def score_clips(
    clf, feats: Sequence[np.ndarray], targets: Sequence[int], hop_s: float | None = None
) -> tuple[dict, float, np.ndarray]:
    """Score clips' log-mels (F, T_i) with known ``targets``: (whole-clip metrics, mean
    clip-level cross-entropy, probabilities (N, C)). Under torchrun each rank scores every
    world_size-th clip and the scores are gathered."""
    clf.model.eval()
    mine = distributed.shard(range(len(feats)))
    scored = list(zip(mine, clf.predict_clips((feats[i] for i in mine), hop_s).numpy()))
    by_index = dict(pair for part in distributed.all_gather(scored) for pair in part)
    probs = (
        np.stack([by_index[i] for i in range(len(feats))])
        if by_index
        else np.zeros((0, len(clf.labels)), np.float32)
    )
    m = metrics(targets, probs.argmax(axis=1), clf.labels)
    p = probs[np.arange(len(targets)), targets] if len(probs) else np.ones(1)
    return m, float(-np.log(np.clip(p, 1e-7, 1)).mean()), probs
