"""What a training batch is: cached log-mels in memory, random crops of them, and an epoch's
shuffled, optionally class-balanced batches, all drawn from one seeded generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from . import data
from .audio import AudioError
from .data import DataError
from .features import SILENCE_DB, FeatureCache, FeatureConfig
from .model import PATCH
from .progress import Progress

IMBALANCE = 1.5  # largest / smallest class above which training draws classes equally often


@dataclass
class Prepared:
    """Features in memory for one split: log-mels (F, T_i) float16 and class indices."""

    items: list[data.Item] = field(default_factory=list)
    feats: list[np.ndarray] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)

    def __add__(self, other: Prepared) -> Prepared:
        return Prepared(
            self.items + other.items, self.feats + other.feats, self.targets + other.targets
        )


def featurise(
    splits: data.Splits, cache: FeatureCache
) -> tuple[dict[str, Prepared], list[str], list[str]]:
    """Cache every file's log-mel, skipping files that cannot be decoded.

    Returns (per-split features, labels, skipped-file lines). Labels are the classes with
    training files; test/valid files of other classes are skipped with a note.
    """
    skipped: list[str] = []
    raw: dict[str, list[tuple[data.Item, np.ndarray]]] = {}
    for name in data.SPLITS:
        raw[name] = []
        items = splits[name]
        feats = cache.get_many(it.path for it in items)
        for it, f in zip(
            items, Progress(feats, f"features ({name})", total=len(items)), strict=True
        ):
            if isinstance(f, AudioError):
                skipped.append(str(f))
            else:
                raw[name].append((it, f))
    labels = sorted({it.label for it, _ in raw["train"]})
    missing = sorted({it.label for it in splits.train} - set(labels))
    if missing:
        raise DataError(f"no usable training files left for class(es) {', '.join(missing)}")
    if len(raw["train"]) < 2 or len(labels) < 2:
        raise DataError(
            f"too few usable training files ({len(raw['train'])}) or classes ({len(labels)})"
        )
    index = {lb: i for i, lb in enumerate(labels)}
    out = {}
    for name, pairs in raw.items():
        unknown = [it for it, _ in pairs if it.label not in index]
        if unknown:
            skipped.append(f"{len(unknown)} {name} files of classes with no training files")
        pairs = [(it, f) for it, f in pairs if it.label in index]
        out[name] = Prepared(
            [it for it, _ in pairs], [f for _, f in pairs], [index[it.label] for it, _ in pairs]
        )
    return out, labels, skipped


def crop_frames(
    train: Prepared, fcfg: FeatureConfig, *, crop_s: float | None, max_crop_s: float, stride: int
) -> int:
    """Window length in frames: ``crop_s``, else the median clip up to ``max_crop_s``, rounded
    up to a whole number of patch strides past one patch (no frame unused)."""
    if crop_s is None:
        median = float(np.median([f.shape[1] for f in train.feats]))
        crop_s = min(max_crop_s, fcfg.seconds(median))
    n = max(PATCH, fcfg.n_frames(crop_s))
    return PATCH + math.ceil((n - PATCH) / stride) * stride


def crops_per_clip(train: Prepared, n_frames: int, *, fixed: int | None, cap: int) -> int:
    """How many crops of each clip an epoch draws: ``fixed``, else enough that an epoch sees
    about as much audio as the (median) clip holds, up to ``cap``, so long clips aren't reduced
    to one crop each."""
    if fixed is not None:
        return fixed
    median = float(np.median([f.shape[1] for f in train.feats]))
    return int(min(cap, max(1, round(median / n_frames))))


def balanced_sampling(targets: list[int], setting: bool | None = None) -> bool:
    """Whether crops are drawn class-balanced: as set, or (None) when the training clips'
    class counts differ by IMBALANCE× or more."""
    if setting is not None:
        return setting
    counts = np.bincount(targets)
    return bool(counts.max() >= IMBALANCE * counts[counts > 0].min())


def n_batches(n: int, batch_size: int) -> int:
    """Batches in an epoch of ``n`` crops; the ragged last batch is dropped (fewer crops than
    one batch: one short batch)."""
    return n // batch_size if n >= batch_size else 1


class Batches:
    """An epoch of shuffled batches of random crops, all drawn from one seeded generator."""

    def __init__(
        self,
        prep: Prepared,
        batch_size: int,
        n_frames: int,
        repeats: int,
        epoch: int,
        g,
        balanced: bool = False,
        time_warp: float = 0.0,
        freq_warp: float = 0.0,
    ):
        self.prep, self.batch_size, self.n_frames, self.epoch, self.g = (
            prep,
            batch_size,
            n_frames,
            epoch,
            g,
        )
        self.balanced, self.time_warp, self.freq_warp = balanced, time_warp, freq_warp
        self.n = len(prep.feats) * repeats
        self.n_batches = n_batches(self.n, batch_size)

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self):
        if self.balanced:  # each clip drawn with probability ∝ 1 / its class's clip count
            counts = np.bincount(self.prep.targets)
            w = torch.from_numpy(1.0 / counts[self.prep.targets])
            order = torch.multinomial(w, self.n, replacement=True, generator=self.g).numpy()
        else:
            order = torch.randperm(self.n, generator=self.g).numpy() % len(self.prep.feats)
        targets = torch.tensor(self.prep.targets)
        for b in range(self.n_batches):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = random_crops(
                self.prep.feats, idx, self.n_frames, self.g, self.time_warp, self.freq_warp
            )
            yield x, targets[idx]


def random_crops(
    feats: list[np.ndarray],
    idx: np.ndarray,
    n: int,
    g: torch.Generator,
    time_warp: float = 0.0,
    freq_warp: float = 0.0,
) -> torch.Tensor:
    """A random window of ``n`` frames from each chosen clip → (B, F, n); short clips are
    placed at a random offset in silence.

    ``time_warp`` > 0: each window covers n·s frames, s log-uniform in [1/(1+w), 1+w], resampled
    to n (a tempo change). ``freq_warp`` > 0: the mel axis is scaled by a factor in [1-w, 1+w]
    about its lowest band (a pitch/formant shift, as in vocal-tract-length perturbation); bands
    moved in from above the top take the top band's values.
    """
    B, Fb = len(idx), feats[0].shape[0]
    offsets = torch.rand(B, generator=g).tolist()
    stretch = (
        torch.exp((2 * torch.rand(B, generator=g) - 1) * math.log1p(time_warp)).tolist()
        if time_warp > 0
        else [1.0] * B
    )
    fscale = (
        (1 + (2 * torch.rand(B, generator=g) - 1) * freq_warp).tolist()
        if freq_warp > 0
        else [1.0] * B
    )
    out = np.empty((B, Fb, n), dtype=np.float32)
    for row, (i, u, s, fs) in enumerate(zip(idx, offsets, stretch, fscale)):
        f, m = feats[i], max(2, round(n * s))
        T = f.shape[1]
        warped = m != n or fs != 1.0
        win = np.empty((Fb, m), dtype=np.float32) if warped else out[row]  # unwarped: in place
        if T >= m:
            start = int(u * (T - m + 1))
            win[:] = f[:, start : start + m]
        else:
            start = int(u * (m - T + 1))
            win.fill(SILENCE_DB)
            win[:, start : start + T] = f
        if warped:
            rows = max(2, round(Fb * fs))
            w = F.interpolate(
                torch.from_numpy(win)[None, None],
                size=(rows, n),
                mode="bilinear",
                align_corners=True,
            )[0, 0]
            if rows < Fb:  # bands moved in from above the top: the top band's values
                w = torch.cat([w, w[-1:].expand(Fb - rows, n)])
            out[row] = w[:Fb].numpy()
    return torch.from_numpy(out)
