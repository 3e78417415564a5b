"""Self-describing model files and resumable training state, written atomically.

A model file is a ``torch.save`` dict of plain data — configs, labels, metadata — and tensors,
loaded with ``weights_only=True``, so opening one never runs code from the file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .features import FeatureConfig
from .model import ModelConfig, ViT

FORMAT = "audiovit-model/1"


class CheckpointError(Exception):
    """A model or state file that cannot be used; one line naming the file."""


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``:
    a kill at any instant leaves either the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def first_line(e: Exception) -> str:
    """An exception's first line (at most 200 characters), or its type where it says nothing."""
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a file written by :func:`atomic_save` without executing any code from it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] != b"PK" and magic[:1] != b"\x80":  # neither torch's zip nor a legacy pickle
        kind = " (an ONNX graph: use it with --backend onnx)" if path.suffix == ".onnx" else ""
        raise CheckpointError(f"{path}: not an audiovit model file{kind}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle.UnpicklingError for crafted files, RuntimeError for torn ones
        raise CheckpointError(f"{path}: not a loadable audiovit file ({first_line(e)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not an audiovit file")
    return obj


def save_model(
    path: str | os.PathLike,
    model: ViT,
    feature_cfg: FeatureConfig,
    labels: list[str],
    meta: dict | None = None,
) -> None:
    """Write the unwrapped model with everything needed to rebuild and use it."""
    atomic_save(
        {
            "format": FORMAT,
            "model_config": model.cfg.to_dict(),
            "feature_config": feature_cfg.to_dict(),
            "labels": list(labels),
            "meta": meta or {},  # JSON-like: training data summary, settings, metrics
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        },
        path,
    )


def read_model_file(path: str | os.PathLike) -> dict:
    """A model file's contents (format, configs, labels, meta, state_dict), checked to be one."""
    obj = safe_load(path)
    if obj.get("format") != FORMAT:
        hint = " (a training state: use the run's model.pt)" if "optimizer" in obj else ""
        raise CheckpointError(f"{path}: not an audiovit model file{hint}")
    return obj


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild (model in eval mode, FeatureConfig, labels, meta) from a model file alone."""
    obj = read_model_file(path)
    model = ViT(ModelConfig(**obj["model_config"]))
    model.load_state_dict(obj["state_dict"])
    return (
        model.to(device).eval(),
        FeatureConfig(**obj["feature_config"]),
        obj["labels"],
        obj["meta"],
    )


def summary(path: str | os.PathLike, obj: dict) -> str:
    """A model file in a few lines: architecture, classes, window, training data, metrics and
    where its weights began (``audiovit info``; ``--json`` gives everything)."""
    m, f, meta = obj["model_config"], obj["feature_config"], obj.get("meta") or {}
    n_params = sum(v.numel() for v in obj["state_dict"].values()) / 1e6
    arch = f"{m['n_layers']} layers" if m["n_layers"] else "no transformer layer"
    lines = [
        f"{path}: ViT {m['width']} wide, {arch}, {m['stem']} stem, {n_params:.2f} M parameters",
        f"classes ({len(obj['labels'])}): {', '.join(obj['labels']) or 'none (a backbone)'}",
        f"window: {m['n_frames'] * f['hop_length'] / f['sr']:.2f} s ({m['n_mels']} mel bands × "
        f"{m['n_frames']} frames at {f['sr']} Hz)",
    ]
    counts = (meta.get("data") or {}).get("counts")
    if counts:
        n = {split: sum(c.values()) for split, c in counts.items()}
        lines.append(
            f"trained on: {n.get('train', 0)} train, {n.get('valid', 0)} valid, "
            f"{n.get('test', 0)} test clips; epoch {meta.get('epoch', '?')}"
        )
    if "pretrain" in meta:
        lines.append(
            f"pretrained: {meta['steps']} steps, {meta['crops']} crops, "
            f"{meta['wall_s']:.0f} s; last loss {meta['loss']:.4f}"
        )
    if meta.get("metrics"):
        r = meta["metrics"]
        lines.append(
            f"metrics ({r['split']}, {r['n']} clips): accuracy {r['accuracy']:.3f}, "
            f"balanced {r['balanced_accuracy']:.3f}, macro-F1 {r['macro_f1']:.3f}"
        )
    start, arrow = meta.get("start"), "started from"
    while start:
        classes = f"{len(start['labels'])} classes" if start.get("labels") else "no classes"
        lines.append(f"{arrow}: {start['path']} ({start['kind']}; {classes})")
        start, arrow = start.get("start"), "  which started from"
    return "\n".join(lines)
