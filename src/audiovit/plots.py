"""Figures written to PNG files with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import colorsys
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def confusion_matrix(m: dict, path: str | os.PathLike) -> None:
    """Counts on the left, row-normalised (recall per true class) on the right."""
    cm = np.asarray(m["confusion_matrix"], dtype=float)
    labels = m["labels"]
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = max(5.0, 0.45 * len(labels) + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size), constrained_layout=True)
    for ax, data, title, fmt in (
        (axes[0], cm, "counts", "{:.0f}"),
        (axes[1], norm, "row-normalised", "{:.2f}"),
    ):
        ax.imshow(data, cmap="Blues", vmin=0)
        ax.set_title(f"Confusion matrix ({title}), accuracy {m['accuracy']:.3f}")
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if len(labels) <= 25:
            hi = data.max() / 2 if data.max() > 0 else 1
            for i in range(len(labels)):
                for j in range(len(labels)):
                    if cm[i, j]:
                        ax.text(
                            j,
                            i,
                            fmt.format(data[i, j]),
                            ha="center",
                            va="center",
                            fontsize=8,
                            color="white" if data[i, j] > hi else "black",
                        )
    fig.savefig(path, dpi=100)
    plt.close(fig)


def training_curves(log: list[dict], path: str | os.PathLike) -> None:
    """Loss and accuracy per epoch, train and validation (where the run validated), from the
    run's log.jsonl records."""
    ep = [r["epoch"] for r in log]
    valid = [r for r in log if r["valid_loss"] is not None]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    a1.plot(ep, [r["train_loss"] for r in log], label="train")
    a2.plot(ep, [r["train_acc"] for r in log], label="train (crops, augmented)")
    if valid:
        a1.plot([r["epoch"] for r in valid], [r["valid_loss"] for r in valid], label="valid")
        a2.plot(
            [r["epoch"] for r in valid],
            [r["valid_acc"] for r in valid],
            label="valid (whole clips)",
        )
    a1.set(xlabel="epoch", ylabel="loss", title="Loss")
    a2.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1.02))
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def per_class_f1(m: dict, path: str | os.PathLike) -> None:
    labels = m["labels"]
    f1 = [m["per_class"][lb]["f1"] for lb in labels]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(labels) + 2), 4), constrained_layout=True)
    ax.bar(range(len(labels)), f1, color="tab:blue")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
    ax.set(ylim=(0, 1), ylabel="F1", title=f"Per-class F1 (macro {m['macro_f1']:.3f})")
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def timeline_classes(pred, max_lines: int = 10) -> tuple[list[int], list[int]]:
    """The classes a timeline plot draws: every class that wins a window, most windows first
    (indices into ``pred.labels``), and those past ``max_lines - 1`` merged as "other"."""
    wins = np.bincount(pred.probs.argmax(axis=1), minlength=len(pred.labels))
    winners = [int(c) for c in np.argsort(-wins, kind="stable") if wins[c] > 0]
    if len(winners) <= max_lines:
        return winners, []
    return winners[: max_lines - 1], winners[max_lines - 1 :]


def class_colour(labels: list[str], label: str) -> tuple[float, ...]:
    """One colour per class, by its index, the same in every figure of a model and on the
    service's page (page.html's ``colour``): tab10 up to 10 classes; beyond, golden-angle hues at
    two lightnesses, so that no two classes share a colour however many there are."""
    i = labels.index(label)
    if len(labels) <= 10:
        return plt.get_cmap("tab10")(i)
    return colorsys.hls_to_rgb((i * 137.508) % 360 / 360, 0.36 if i % 2 else 0.50, 0.65)


def timeline(pred, path: str | os.PathLike, max_lines: int = 10) -> None:
    """Class probabilities over time above the log-mel, for every class that wins a window
    (the rest as "other"), each run of one label shaded in its class's colour; ``pred`` needs
    an ``overview``."""
    probs, labels = pred.probs, pred.labels
    centres = np.array([(w.start_s + w.end_s) / 2 for w in pred.segments])
    drawn, rest = timeline_classes(pred, max_lines)
    fig, (a1, a2) = plt.subplots(
        2, 1, figsize=(13, 6), sharex=True, height_ratios=[1, 1.3], layout="constrained"
    )
    marker = "." if len(centres) < 60 else None
    for c in drawn:
        colour = class_colour(labels, labels[c])
        a1.plot(centres, probs[:, c], color=colour, label=labels[c], marker=marker)
    if rest:
        a1.plot(centres, probs[:, rest].max(axis=1), color="0.5", ls="--", label="other")
    for seg in pred.timeline():
        colour = class_colour(labels, seg.label) if labels.index(seg.label) in drawn else "0.5"
        a1.axvspan(seg.start_s, seg.end_s, color=colour, alpha=0.1)
    shares = ", ".join(f"{lb} {s:.0%}" for lb, s in pred.time_shares()[:4])
    name = Path(pred.path or "waveform").name
    a1.set(ylim=(0, 1.02), ylabel="probability", title=f"{name}: {shares} of the time")
    fig.legend(loc="outside right upper", fontsize=8)
    a1.grid(alpha=0.3)
    if pred.overview is not None:
        a2.imshow(
            pred.overview,
            origin="lower",
            aspect="auto",
            cmap="magma",
            extent=(0, pred.duration_s, 0, pred.overview.shape[0]),
        )
    a2.set(xlabel="time (s)", ylabel="mel band", xlim=(0, pred.duration_s))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def explanation(ex, path: str | os.PathLike) -> None:
    """The span's log-mel with the saliency of the explained class laid over it
    (``ex``: explain.Explanation)."""
    fig, ax = plt.subplots(figsize=(12, 4.5), constrained_layout=True)
    extent = (ex.start_s, ex.end_s, 0, ex.log_mel.shape[0])
    ax.imshow(ex.log_mel, origin="lower", aspect="auto", cmap="gray", extent=extent)
    s = ex.saliency / (ex.saliency.max() + 1e-12)
    ax.imshow(
        np.ma.masked_less(s, 0.15),
        origin="lower",
        aspect="auto",
        cmap="inferno",
        alpha=0.6,
        extent=extent,
    )
    top = ", ".join(f"{lb} {sc:.2f}" for lb, sc in ex.prediction.top_k)
    ax.set(
        xlabel="time (s)",
        ylabel="mel band",
        title=f"{ex.label} ({ex.score:.2f}): gradient saliency |∂logit/∂log-mel| (top-k: {top})",
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)
