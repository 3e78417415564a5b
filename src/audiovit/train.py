"""Training: cached log-mels → random crops → SpecAugment/mixup → AdamW with warm-up + cosine.

Each epoch draws its crops, masks, mixup and dropout from a generator seeded by (seed, epoch),
and the run folder keeps the last finished epoch's state, so a run resumed after a kill repeats
exactly what the uninterrupted run would have done (on CPU, same thread count).

Under ``torchrun`` the same code runs data-parallel (DistributedDataParallel): every rank draws
the same global batch and trains on its slice of it, validation clips are shared out and their
scores gathered, and only rank 0 logs and writes files.
"""

from __future__ import annotations

import copy
import csv
import gc
import json
import math
import signal
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from . import checkpoint, data, distributed, evaluate, plots, report
from .audio import AudioError
from .features import FeatureCache, FeatureConfig, LogMel, default_cache_dir, spec_augment
from .inference import SILENCE_DB, Classifier
from .model import (
    CONV_STRIDES,
    NORMS,
    PATCH,
    POOLS,
    PRESETS,
    STEMS,
    ModelConfig,
    ViT,
    autocast_dtype,
    load_timm_weights,
    resolve_device,
)
from .progress import Progress

MAX_BAD_STEPS = 10  # consecutive non-finite losses before the run is stopped
IMBALANCE = 1.5  # largest / smallest class above which training draws classes equally often
# TrainConfig fields whose default changed, with the earlier default: the value a run saved
# before the field existed had (its last.pt has no entry for them), so resuming such a run
# rebuilds the same model; a refused resume names it
BEFORE_FIELD = {"stem": "patch", "keep": "best", "train_on_carve": False}
# where a run's features and arithmetic happen, not what it learns: free to differ on resume
NOT_SETTINGS = ("cache_dir", "device")
KEEP = ("auto", "best", "last")  # which epoch's weights model.pt holds
# keep="auto" trusts the validation carve to pick an epoch when it holds at least this many clips
# per class: fewer, and its accuracy moves by more between epochs than the epochs differ (3 clips
# per class: one clip is 3 points of a 10-class carve)
MIN_VALID_PER_CLASS = 10
TIMINGS = ("epoch_s", "train_s", "clips_per_s")  # log.jsonl's wall-clock fields


# (field, lowest, highest or None) allowed for TrainConfig's numbers
RANGES = (
    ("epochs", 1, None), ("batch_size", 1, None), ("lr", 1e-12, None), ("min_lr", 0, None),
    ("warmup_epochs", 0, None), ("weight_decay", 0, None), ("label_smoothing", 0, 1),
    ("mixup", 0, None), ("grad_clip", 1e-12, None), ("crop_s", 1e-3, None),
    ("max_crop_s", 1e-3, None), ("patch_stride", 1, None), ("drop_path", 0, 1),
    ("crops_per_clip", 1, None), ("max_crops_per_clip", 1, None), ("freq_mask", 0, 1),
    ("time_mask", 0, 1), ("n_masks", 0, None),
    ("time_warp", 0, None), ("freq_warp", 0, 1), ("ema_epochs", 0, None), ("distill", 0, 1),
    ("distill_t", 1e-3, None), ("eval_hop_s", 1e-3, None), ("sr", 1000, None), ("n_mels", 1, None),
    ("fmax", 1, None),
)  # fmt: skip


class TrainingError(Exception):
    """Training cannot go on; the message says why in one line."""


@dataclass
class TrainConfig:
    preset: str = "tiny"  # tiny | small | base | cnn (model.PRESETS)
    depth: int | None = None  # transformer layers; None: the preset's (12; cnn: 0)
    # 25 was measured over the whole benchmark (NOTES.md, eleventh session): 93.8 min against
    # 30's 105.5 on the 2-core fp32 CPU, and lower accuracy on all four protocols
    epochs: int = 30
    batch_size: int = 32
    lr: float = 5e-4  # peak AdamW learning rate, reached after warm-up
    min_lr: float = 1e-6  # end of the cosine decay
    warmup_epochs: float = 3.0
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    # Beta(α, α) mixing of pairs in a batch; 0 turns it off. 0.2 over the whole benchmark: FSDD
    # speaker-independent +5.3 points on a GPU but -0.4 on the CPU, GTZAN -2.9, UrbanSound8K -3.4
    # (NOTES.md, "Mixup"), so off by default
    mixup: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm
    crop_s: float | None = None  # training window in seconds; None: min(3 s, median clip)
    max_crop_s: float = 3.0
    patch_stride: int = 16  # token spacing: < 16 overlaps patches (patch stem) or gives the
    # conv stem finer cells (2, 4 or 8); either way more tokens, slower
    # "conv": four strided 3×3 convs + BatchNorm (model.ConvStem); "patch": one linear map per
    # 16×16 patch, as in timm's ViT. conv fits small data faster (NOTES.md, "Convolutional stem")
    stem: str = "conv"
    pool: str = "mean"  # mean of patch tokens trains faster than a class token on small data
    norm: str = "example"  # input standardisation: "example" or "band" (per-band mean removed)
    drop_path: float = 0.1
    # crops of each clip per epoch; None: enough to cover the median clip, up to the cap below
    crops_per_clip: int | None = None
    # the cap: 30 s clips get 4 random 3 s crops per epoch, a fifth fewer steps than 5 (for the
    # benchmark's 90-minute budget). Over GTZAN's three folds, one run each with the carve held
    # out (Intel Xeon, fp32): 4 crops 0.528, 5 crops 0.552, inside the seed noise (NOTES.md,
    # "The budget"; the whole benchmark at these defaults: "The whole benchmark at today's ...")
    max_crops_per_clip: int = 4
    freq_mask: float = 0.1  # SpecAugment: max width of each frequency mask, fraction of the bins
    time_mask: float = 0.1  # SpecAugment: max width of each time mask, fraction of the crop
    n_masks: int = 2  # masks per axis
    # draw crops so every class is equally likely; None: when the classes' clip counts differ
    # by IMBALANCE× or more
    balance_classes: bool | None = None
    time_warp: float = 0.0  # crops stretched/squeezed in time by up to this factor (0.2 = ±20 %)
    freq_warp: float = 0.0  # mel axis scaled by a factor in [1 - w, 1 + w] (pitch/formant shift)
    ema_epochs: float = 0.0  # average the weights (EMA) over about this many epochs; 0 = off
    # model.pt's weights: the "best" epoch on the validation carve, or the "last" epoch's;
    # "auto": best when the carve holds MIN_VALID_PER_CLASS clips per class (on average), else
    # last. Last against best over the whole benchmark at 30 / 25 epochs: GTZAN +3.7 / +0.5
    # points (2-3 validation clips per class), UrbanSound8K -2.8 / -1.7 (~21), FSDD level (~27)
    # (NOTES.md, eleventh session)
    keep: str = "auto"
    # where "auto" keeps the last epoch, a validation split carved from the training rows
    # (data.Splits.carved) trains too, and nothing is validated: it chooses nothing (sixteenth
    # session)
    train_on_carve: bool = True
    # knowledge distillation: first train a model of this preset ("cnn": model.PRESETS) with the
    # same settings into OUT/teacher, then train this one on (1 - distill) × the label loss +
    # distill × T² · KL(teacher ‖ student) at temperature distill_t, on the same augmented crops
    teacher: str | None = None
    distill: float = 0.5
    distill_t: float = 2.0
    eval_hop_s: float | None = None  # hop between scored windows; None: one window
    sr: int = 16000
    n_mels: int = 64  # 64 bands halve the tokens of 128 (2× faster) on a CPU budget
    fmax: float | None = None  # Hz, top of the highest mel band; None: sr / 2
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast where the hardware runs it fast
    init: str | None = None  # a timm ViT/DeiT checkpoint (.safetensors or .pth) to start from
    cache_dir: str | None = None  # feature cache; None: $AUDIOVIT_CACHE or ~/.cache/audiovit

    def __post_init__(self):  # wrong choices fail here, not after the features are computed
        choices = {"preset": tuple(PRESETS), "pool": POOLS, "norm": NORMS, "stem": STEMS,
                   "keep": KEEP}  # fmt: skip
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; "
                                 f"got {getattr(self, name)!r}")  # fmt: skip
        if self.teacher is not None and self.teacher not in PRESETS:
            raise ValueError(f"teacher must be one of {', '.join(PRESETS)}; got {self.teacher!r}")
        if self.depth is not None and self.depth < 0:
            raise ValueError(f"depth must be 0 or more; got {self.depth}")
        layers = [self.depth if self.depth is not None else PRESETS[self.preset][1]]
        layers += [PRESETS[self.teacher][1]] if self.teacher else []
        if 0 in layers and self.stem != "conv":
            raise ValueError("a model with no transformer layer (the cnn preset, --depth 0) is "
                             "the conv stem alone: it needs stem='conv'")  # fmt: skip
        for name, lo, hi in RANGES:  # a 0 batch size or a negative mixup fails here, named
            v = getattr(self, name)
            if v is not None and not (lo <= v and (hi is None or v <= hi)):
                bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
                raise ValueError(f"{name} must be {bound}; got {v}")
        if self.fmax is not None and self.fmax > self.sr / 2:
            raise ValueError(f"fmax must be at most sr / 2 = {self.sr / 2:g} Hz; got {self.fmax:g}")
        if self.stem == "conv" and self.patch_stride not in CONV_STRIDES:
            raise ValueError(f"the conv stem's patch_stride (its token spacing) must be one of "
                             f"{', '.join(map(str, CONV_STRIDES))}; overlapping patches of "
                             "another stride need stem='patch' (--stem patch)")  # fmt: skip


@dataclass
class Prepared:
    """Features in memory for one split: log-mels (F, T_i) float16 and class indices."""

    items: list[data.Item] = field(default_factory=list)
    feats: list[np.ndarray] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)

    def __add__(self, other: Prepared) -> Prepared:
        return Prepared(self.items + other.items, self.feats + other.feats,
                        self.targets + other.targets)  # fmt: skip


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
        raise TrainingError(f"no usable training files left for class(es) {', '.join(missing)}")
    if len(raw["train"]) < 2 or len(labels) < 2:
        raise TrainingError(
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


def crop_frames(cfg: TrainConfig, fcfg: FeatureConfig, train: Prepared) -> int:
    """Window length in frames: a whole number of patch strides past one patch (no frame unused)."""
    if cfg.crop_s is not None:
        seconds = cfg.crop_s
    else:
        seconds = min(
            cfg.max_crop_s,
            float(np.median([f.shape[1] for f in train.feats])) / fcfg.sr * fcfg.hop_length,
        )
    n = max(PATCH, fcfg.n_frames(seconds))
    return PATCH + math.ceil((n - PATCH) / cfg.patch_stride) * cfg.patch_stride


def random_crops(
    feats: list[np.ndarray], idx: np.ndarray, n: int, g: torch.Generator,
    time_warp: float = 0.0, freq_warp: float = 0.0,
) -> torch.Tensor:  # fmt: skip
    """A random window of ``n`` frames from each chosen clip → (B, F, n); short clips are
    placed at a random offset in silence.

    ``time_warp`` > 0: each window covers n·s frames, s log-uniform in [1/(1+w), 1+w], resampled
    to n (a tempo change). ``freq_warp`` > 0: the mel axis is scaled by a factor in [1-w, 1+w]
    about its lowest band (a pitch/formant shift, as in vocal-tract-length perturbation); bands
    moved in from above the top take the top band's values.
    """
    B, Fb = len(idx), feats[0].shape[0]
    offsets = torch.rand(B, generator=g).tolist()
    stretch = torch.exp((2 * torch.rand(B, generator=g) - 1) * math.log1p(time_warp)).tolist() \
        if time_warp > 0 else [1.0] * B  # fmt: skip
    fscale = (1 + (2 * torch.rand(B, generator=g) - 1) * freq_warp).tolist() \
        if freq_warp > 0 else [1.0] * B  # fmt: skip
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
            w = F.interpolate(torch.from_numpy(win)[None, None], size=(rows, n), mode="bilinear",
                              align_corners=True)[0, 0]  # fmt: skip
            if rows < Fb:  # bands moved in from above the top: the top band's values
                w = torch.cat([w, w[-1:].expand(Fb - rows, n)])
            out[row] = w[:Fb].numpy()
    return torch.from_numpy(out)


def lr_at(step: int, total: int, warmup: int, cfg: TrainConfig) -> float:
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def train_epoch(
    model,
    opt,
    batches,
    cfg: TrainConfig,
    device,
    amp,
    step0: int,
    total: int,
    warmup: int,
    g,
    ema: WeightAverage | None = None,
    teacher: ViT | None = None,
):
    """One pass over ``batches`` of (x (B, F, T), y (B,)). Returns (mean loss, accuracy, steps).

    ``teacher`` (frozen, eval mode) sees the same augmented batch; its softened probabilities
    join the loss with weight ``cfg.distill``.

    ``model`` may be wrapped in DistributedDataParallel: each rank then augments the whole
    global batch with the shared generator and trains on rows rank, rank + world, ...
    """
    core = getattr(model, "module", model)
    r, w = distributed.rank(), distributed.world_size()
    model.train()
    losses, correct, seen, bad, step = [], 0, 0, 0, step0
    time_w = int(cfg.time_mask * batches.n_frames)
    freq_w = int(cfg.freq_mask * core.cfg.n_mels)
    bar = Progress(batches, f"epoch {batches.epoch}/{cfg.epochs}")
    for x, y in bar:
        x = spec_augment(x, freq_mask=freq_w, time_mask=time_w, n_masks=cfg.n_masks, generator=g)
        target = F.one_hot(y, core.cfg.n_classes).float()
        if cfg.mixup > 0:
            seed = int(torch.randint(2**31, (1,), generator=g))  # same λ on every rank
            lam = float(np.random.default_rng(seed).beta(cfg.mixup, cfg.mixup))
            perm = torch.randperm(len(x), generator=g)
            x, target = lam * x + (1 - lam) * x[perm], lam * target + (1 - lam) * target[perm]
        x, target, y = (_to_device(t[r::w], device) for t in (x, target, y))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, warmup, cfg)
        stats = [b.clone() for b in core.buffers()]  # BatchNorm's, put back if the step is skipped
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), target, label_smoothing=cfg.label_smoothing)
        if teacher is not None:
            loss = (1 - cfg.distill) * loss + cfg.distill * distillation_loss(
                logits, _teacher_logits(teacher, x, device, amp), cfg.distill_t
            )
        step += 1
        finite = bool(torch.isfinite(loss))
        if w > 1:  # every rank skips the step together, or DDP's all-reduce would hang
            finite = distributed.all_sum([not finite])[0] == 0
        if not finite:
            bad += 1
            warnings.warn(f"non-finite loss at step {step}: step skipped", stacklevel=1)
            if bad >= MAX_BAD_STEPS:
                raise TrainingError(
                    f"the loss was not finite for {bad} steps in a row: the learning rate "
                    f"({cfg.lr:g}) is likely too high, or the input features hold non-finite values"
                )
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                for b, saved in zip(core.buffers(), stats):
                    b.copy_(saved)
            continue
        bad = 0
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if ema is not None:
            ema.update(core)
        losses.append(loss.item())
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        bar.set(loss=float(np.mean(losses[-20:])), acc=correct / seen)
    # Over ranks: the mean of the per-rank batch means is the global batch mean (equal slices).
    loss_sum, n, correct, seen = distributed.all_sum([sum(losses), len(losses), correct, seen])
    return loss_sum / n if n else float("nan"), correct / max(seen, 1), step


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """T² · KL(softmax(teacher / T) ‖ softmax(student / T)), mean over the batch (Hinton et al.
    2015; the T² keeps its gradients on the scale of the label loss)."""
    s, q = F.log_softmax(student.float() / t, 1), F.log_softmax(teacher.float() / t, 1)
    return F.kl_div(s, q, log_target=True, reduction="batchmean") * t * t


@torch.no_grad()
def _teacher_logits(teacher: ViT, x: torch.Tensor, device, amp) -> torch.Tensor:
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        return teacher(x)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host → device; through pinned memory, asynchronously, when the device is a GPU."""
    if device.type != "cuda":
        return t
    return t.contiguous().pin_memory().to(device, non_blocking=True)


def crops_per_clip(cfg: TrainConfig, train: Prepared, n_frames: int) -> int:
    """How many crops of each clip an epoch draws: by default, enough that an epoch sees about
    as much audio as the (median) clip holds, so long clips aren't reduced to one crop each."""
    if cfg.crops_per_clip is not None:
        return cfg.crops_per_clip
    median = float(np.median([f.shape[1] for f in train.feats]))
    return int(min(cfg.max_crops_per_clip, max(1, round(median / n_frames))))


class WeightAverage:
    """An exponential moving average of the weights (``self.model``, the copy that is validated
    and saved). Its decay ramps up over the first steps so the random init fades quickly."""

    def __init__(self, model: ViT, decay: float):
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: ViT) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):  # BatchNorm statistics: copied
            e.copy_(b)


def balanced_sampling(cfg: TrainConfig, targets: list[int]) -> bool:
    """Whether crops are drawn class-balanced: as set, or (None) when the training clips'
    class counts differ by IMBALANCE× or more."""
    if cfg.balance_classes is not None:
        return cfg.balance_classes
    counts = np.bincount(targets)
    return bool(counts.max() >= IMBALANCE * counts[counts > 0].min())


def n_batches(n: int, batch_size: int) -> int:
    """Batches in an epoch of ``n`` crops; the ragged last batch is dropped (fewer crops than
    one batch: one short batch)."""
    return n // batch_size if n >= batch_size else 1


class Batches:
    """An epoch of shuffled batches of random crops, all drawn from one seeded generator."""

    def __init__(
        self, prep: Prepared, batch_size: int, n_frames: int, repeats: int, epoch: int, g,
        balanced: bool = False, time_warp: float = 0.0, freq_warp: float = 0.0,
    ):  # fmt: skip
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
            x = random_crops(self.prep.feats, idx, self.n_frames, self.g, self.time_warp,
                             self.freq_warp)  # fmt: skip
            yield x, targets[idx]


def validate(clf: Classifier, prep: Prepared, labels, hop_s) -> tuple[dict, float, np.ndarray]:
    """Whole-clip metrics, mean clip-level cross-entropy and probabilities (N, C). Under
    torchrun each rank scores every world_size-th clip and the scores are gathered."""
    clf.model.eval()
    mine = distributed.shard(range(len(prep.feats)))
    scored = list(zip(mine, clf.predict_clips((prep.feats[i] for i in mine), hop_s).numpy()))
    by_index = dict(pair for part in distributed.all_gather(scored) for pair in part)
    probs = np.stack([by_index[i] for i in range(len(prep.feats))]) if by_index \
        else np.zeros((0, len(labels)), np.float32)  # fmt: skip
    m = evaluate.metrics(prep.targets, probs.argmax(axis=1), labels)
    p = probs[np.arange(len(prep.targets)), prep.targets] if len(probs) else np.ones(1)
    return m, float(-np.log(np.clip(p, 1e-7, 1)).mean()), probs


def train(
    ds: data.Dataset,
    splits: data.Splits,
    cfg: TrainConfig,
    out: str | Path,
    resume: bool = False,
    log=print,
) -> dict:
    """Train on ``splits``, write the run folder ``out`` and return the final metrics.

    ``out`` receives model.pt (the best epoch on validation, or the last: ``cfg.keep``),
    last.pt (for ``resume``), best.pt where the last epoch is kept (the best on validation;
    none where ``keep="auto"`` trained on a carve too small to choose an epoch), log.jsonl,
    metrics.json (test split, else validation) and the plots; with ``cfg.teacher``, the
    teacher's own run folder as ``out``/teacher.
    """
    out = Path(out)
    resuming = resume and (out / "last.pt").exists()  # last.pt's weights replace --init's
    if cfg.init and not resuming and not Path(cfg.init).is_file():
        raise TrainingError(f"--init {cfg.init}: no such file")
    out.mkdir(parents=True, exist_ok=True)
    if not resuming:  # an earlier run's best.pt must not pass for this run's
        (out / "best.pt").unlink(missing_ok=True)
    device = distributed.setup(resolve_device(cfg.device))
    main = distributed.is_main()
    if cfg.batch_size % distributed.world_size():
        raise TrainingError(f"--batch-size {cfg.batch_size} does not divide among "
                            f"{distributed.world_size()} processes")  # fmt: skip
    if not main:
        log = _silent
    amp = autocast_dtype(device) if cfg.amp else None
    fcfg = FeatureConfig(sr=cfg.sr, n_mels=cfg.n_mels, fmax=cfg.fmax)
    cache = FeatureCache(cfg.cache_dir or default_cache_dir(), LogMel(fcfg))
    if not main:
        distributed.barrier()  # rank 0 fills the cache first; the others then read it
    prep, labels, skipped = featurise(splits, cache)
    if main:
        distributed.barrier()
    for line in skipped:
        log(f"skipped: {line}")
    if not prep["valid"].feats:
        raise TrainingError("the validation split is empty: give more data or a --valid-fold")
    keep = keep_rule(cfg.keep, len(prep["valid"].feats), len(labels))
    if cfg.keep == "auto":
        log(
            f"keeping the {'best epoch on validation' if keep == 'best' else 'last epoch'}: the "
            f"validation split holds {len(prep['valid'].feats) / len(labels):.1f} clips per "
            f"class on average ({'at least' if keep == 'best' else 'fewer than'} "
            f"{MIN_VALID_PER_CLASS})"
        )
        if keep == "last" and cfg.train_on_carve and splits.carved and prep["test"].feats:
            log(f"its {len(prep['valid'].feats)} clips, carved from the training data and too "
                "few to choose an epoch, train too (--no-train-on-carve keeps them out, for "
                "validation curves)")  # fmt: skip
            prep["train"], prep["valid"] = prep["train"] + prep["valid"], Prepared()
    teacher = _train_teacher(ds, splits, cfg, out, resume, device, log) if cfg.teacher else None
    n_frames = crop_frames(cfg, fcfg, prep["train"])
    repeats = crops_per_clip(cfg, prep["train"], n_frames)
    balanced = balanced_sampling(cfg, prep["train"].targets)
    model = _build_model(replace(cfg, init=None) if resuming else cfg, fcfg, len(labels), n_frames,
                         device, log)  # fmt: skip
    opt = _optimizer(model, cfg)
    steps = n_batches(len(prep["train"].feats) * repeats, cfg.batch_size)
    ema = WeightAverage(model, 1 - 1 / (cfg.ema_epochs * steps)) if cfg.ema_epochs > 0 else None
    state = (
        _restore(out, cfg, labels, model, opt, ema, log)
        if resume
        else {"epoch": 0, "step": 0, "best": None, "log": []}
    )
    scored = ema.model if ema else model  # the weights validated and saved
    net = model
    if distributed.active():
        if cfg.stem == "conv" and device.type == "cuda":  # BatchNorm over the global batch
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif cfg.stem == "conv":  # gloo has no SyncBatchNorm: each rank normalises its share
            log("the conv stem's BatchNorm normalises each process's share of the batch on "
                "CPUs (SyncBatchNorm needs CUDA), so results differ slightly from one "
                "process; --stem patch trains exactly like one process")  # fmt: skip
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    # last.pt holds the log of the epochs it has seen; an epoch cut short left no line.
    if main:
        (out / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in state["log"]))
    meta = {"train_config": asdict(cfg), "data": _data_meta(ds, splits, prep, labels, skipped)}
    clf = Classifier(scored, fcfg, labels, device=device, amp=cfg.amp)
    schedule = (
        cfg.epochs * steps,
        max(1, int(cfg.warmup_epochs * steps)),
    )  # (total, warm-up) steps
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    log(f"model: {_name(model, cfg)}, {n_params:.2f} M parameters, {model.grid[0] * model.grid[1]} "
        f"patches per {fcfg.seconds(n_frames):.2f} s window, {steps} steps "
        f"per epoch{', class-balanced crops' if balanced else ''}; device {device}"
        f"{', bf16 autocast' if amp else ''}")  # fmt: skip
    interrupted = _Interrupt()
    try:
        for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
            # stochastic depth: its own stream on each rank
            torch.manual_seed(cfg.seed * 1_000_003 + epoch + 7919 * distributed.rank())
            t0 = time.perf_counter()
            batches = Batches(prep["train"], cfg.batch_size, n_frames, repeats, epoch, g,
                              balanced, cfg.time_warp, cfg.freq_warp)  # fmt: skip
            loss, acc, state["step"] = train_epoch(
                net, opt, batches, cfg, device, amp, state["step"], *schedule, g, ema, teacher
            )
            train_s = time.perf_counter() - t0
            vm, vloss = {"accuracy": None}, None  # no validation split: the carve trains (above)
            if prep["valid"].feats:
                vm, vloss, _ = validate(clf, prep["valid"], labels, cfg.eval_hop_s)
            rec = {"epoch": epoch, "train_loss": loss, "train_acc": acc, "valid_loss": vloss,
                   "valid_acc": vm["accuracy"], "lr": opt.param_groups[0]["lr"],
                   "epoch_s": round(time.perf_counter() - t0, 2), "train_s": round(train_s, 3),
                   "clips_per_s": round(batches.n / train_s, 1)}  # fmt: skip
            state["log"].append(rec)
            is_best = vloss is not None and (
                state["best"] is None or _validation_score(rec) > tuple(state["best"])
            )
            if is_best:
                state["best"] = list(_validation_score(rec))
            if main and (is_best or keep == "last"):
                checkpoint.save_model(
                    out / "model.pt", scored, fcfg, labels, {**meta, "epoch": epoch}
                )
            if main and is_best and keep == "last":  # the other rule's weights, as last.pt is
                checkpoint.save_model(
                    out / "best.pt", scored, fcfg, labels, {**meta, "epoch": epoch}
                )
            state["epoch"] = epoch
            if main:
                _save_state(out, model, opt, ema, cfg, labels, state)
                with open(out / "log.jsonl", "a") as f:  # after the state: a logged epoch is saved
                    f.write(json.dumps(rec) + "\n")
            valid = "" if vloss is None else \
                f"  valid loss {vloss:.3f}  valid acc {vm['accuracy']:.3f}"  # fmt: skip
            log(f"epoch {epoch:3d}  loss {loss:.3f}  acc {acc:.3f}{valid}  "
                f"{rec['clips_per_s']:.0f} clips/s  {rec['epoch_s']:.0f} s"
                f"{'  *' if is_best else ''}")  # fmt: skip
            if interrupted.flag:
                raise KeyboardInterrupt
    finally:
        interrupted.restore()
    # DDP's reducer sits in reference cycles; free it while the process group is still up, not
    # at interpreter exit after the group is gone.
    del net
    gc.collect()
    return finish_run(out, fcfg, prep, labels, state["log"], cfg, keep, device, log)


def _train_teacher(ds, splits, cfg: TrainConfig, out: Path, resume: bool, device, log) -> ViT:
    """Train the distillation teacher into ``out``/teacher — the same data, splits and settings
    with ``cfg.teacher``'s preset — and return its model.pt (the epoch ``cfg.keep`` chose),
    frozen."""
    tcfg = replace(cfg, preset=cfg.teacher, teacher=None, depth=None)  # the preset as named
    tout = out / "teacher"
    log(f"distillation: training the teacher ({cfg.teacher}) first, into {tout}")
    m = train(ds, splits, tcfg, tout, resume=resume and (tout / "last.pt").exists(), log=log)
    log(f"teacher: {m['split']} accuracy {m['accuracy']:.3f}; now the student")
    teacher, *_ = checkpoint.load_model(tout / "model.pt", device)
    return teacher.requires_grad_(False)


def _name(model: ViT, cfg: TrainConfig) -> str:
    if not model.blocks:
        return "CNN (the conv stem alone, no transformer layer)"
    layers = f", {len(model.blocks)} layers" if cfg.depth is not None else ""
    return f"ViT-{cfg.preset}{layers}"


def _silent(*args, **kwargs) -> None:
    """The log of ranks other than 0."""


def _build_model(
    cfg: TrainConfig, fcfg: FeatureConfig, n_classes: int, n_frames: int, device, log
) -> ViT:
    torch.manual_seed(cfg.seed)
    mcfg = ModelConfig.from_preset(
        cfg.preset, n_classes=n_classes, n_mels=fcfg.n_mels, n_frames=n_frames,
        patch_stride=cfg.patch_stride, pool=cfg.pool, drop_path=cfg.drop_path, norm=cfg.norm,
        stem=cfg.stem,
    )  # fmt: skip
    model = ViT(mcfg if cfg.depth is None else replace(mcfg, n_layers=cfg.depth))
    if cfg.stem == "conv" and model.grid == (1, 1):  # BatchNorm of a lone value per example
        raise TrainingError(f"the conv stem needs crops of more than one 16×16 cell ({fcfg.n_mels} "
                            f"mel bands × {n_frames} frames here): use more mel bands, a longer "
                            "--crop-s, or --stem patch")  # fmt: skip
    if cfg.init:
        missing = load_timm_weights(model, _read_state_dict(cfg.init))
        log(f"initialised from {cfg.init}; {len(missing)} tensors kept their random init"
            + (" (the conv stem has no ImageNet counterpart: --stem patch loads the patch "
               "embedding too)" if cfg.stem == "conv" else ""))  # fmt: skip
    return model.to(device)


def _optimizer(model: ViT, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms, the class token and the position embedding.

    The fused kernel updates every tensor in one call: `python benchmarks/train_step.py` on the
    2-core Intel Xeon (fp32), batch 32: 175 → 162 ms per step for FSDD-sized crops (12 tokens),
    767 → 734 ms for 3 s crops, where the matmuls dominate."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim > 1 and name not in ("pos_embed", "cls_token") else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)


def _save_state(
    out: Path, model: ViT, opt, ema: WeightAverage | None, cfg: TrainConfig, labels, state: dict
) -> None:
    averaged = {"ema": ema.model.state_dict(), "ema_updates": ema.updates} if ema else {}
    checkpoint.atomic_save(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "train_config": asdict(cfg),
         "labels": labels, **averaged, **state},
        out / "last.pt",
    )  # fmt: skip


def _restore(
    out: Path, cfg: TrainConfig, labels: list[str], model: ViT, opt, ema: WeightAverage | None, log
) -> dict:
    """Load last.pt into ``model`` and ``opt``; returns the loop state (epoch, step, best, log)."""
    if not (out / "last.pt").exists():
        log(f"nothing to resume in {out}: starting afresh")
        return {"epoch": 0, "step": 0, "best": None, "log": []}
    saved = checkpoint.safe_load(out / "last.pt")
    known = {f.name for f in fields(TrainConfig)}
    # fields added since that run: the behaviour that run had, else today's default
    then = asdict(TrainConfig(**{**BEFORE_FIELD, **{
        k: v for k, v in saved.get("train_config", {}).items() if k in known}}))  # fmt: skip
    now = asdict(cfg)
    for k in NOT_SETTINGS:
        then.pop(k), now.pop(k)
    if then != now or saved.get("labels") != labels:
        earlier = lambda k: ", the earlier default" if BEFORE_FIELD.get(k) == then[k] else ""  # noqa: E731
        diff = ", ".join(f"--{k.replace('_', '-')} {then[k]} (now {now[k]}{earlier(k)})"
                         for k in now if then[k] != now[k]) or "other classes"  # fmt: skip
        raise TrainingError(f"{out / 'last.pt'}: that run used other settings or data "
                            f"({diff}); resume it with the same settings, or train into a new "
                            "--out")  # fmt: skip
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    if ema is not None:
        ema.model.load_state_dict(saved["ema"])
        ema.updates = saved["ema_updates"]
    log(f"resuming after epoch {saved['epoch']}")
    return {k: saved[k] for k in ("epoch", "step", "best", "log")}


def _validation_score(rec: dict) -> tuple[float, float]:
    """What "best on validation" maximises: accuracy, then the lower loss."""
    return rec["valid_acc"], -rec["valid_loss"]


def keep_rule(keep: str, n_valid: int, n_classes: int) -> str:
    """The epoch whose weights model.pt holds, "best" or "last" (``TrainConfig.keep``), with
    "auto" decided by the validation split's size."""
    if keep != "auto":
        return keep
    return "best" if n_valid >= MIN_VALID_PER_CLASS * n_classes else "last"


def finish_run(
    out: Path, fcfg, prep, labels, log_records, cfg: TrainConfig, keep: str, device, log
) -> dict:
    """Score model.pt (the epoch ``keep`` chose) on test (else valid); write metrics.json,
    predictions.csv, the plots and report.html (rank 0; every rank returns the metrics)."""
    distributed.barrier()  # rank 0 has written model.pt
    model, _, _, saved_meta = checkpoint.load_model(out / "model.pt", device)
    clf = Classifier(model, fcfg, labels, device=device, amp=cfg.amp)
    split = "test" if prep["test"].feats else "valid"
    m, _, probs = validate(clf, prep[split], labels, cfg.eval_hop_s)
    validated = [r for r in log_records if r["valid_loss"] is not None]
    best = max(validated, key=_validation_score, default={})
    m = {**m, "split": split, "epoch": saved_meta.get("epoch"), "keep": keep,
         "best_epoch": best.get("epoch")}  # fmt: skip
    if not distributed.is_main():
        return m
    (out / "metrics.json").write_text(json.dumps(m, indent=2))
    checkpoint.save_model(
        out / "model.pt", model, fcfg, labels, {**saved_meta, "metrics": _headline(m)}
    )
    plots.confusion_matrix(m, out / "confusion.png")
    plots.per_class_f1(m, out / "per_class_f1.png")
    if log_records:
        plots.training_curves(log_records, out / "curves.png")
    _write_predictions(out / "predictions.csv", prep[split].items, probs, labels)
    report.write_report(out)
    log(f"\n{split} set, {report.kept_weights(m)}:\n{evaluate.format_table(m)}")
    return m


def _write_predictions(path: Path, items: list[data.Item], probs: np.ndarray, labels) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "predicted", "score"])
        for it, p in zip(items, probs):
            w.writerow([it.path, it.label, labels[int(p.argmax())], f"{p.max():.4f}"])


def _headline(m: dict) -> dict:
    return {k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "n", "split")}


def _data_meta(ds, splits, prep, labels, skipped) -> dict:
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


def _read_state_dict(path: str) -> dict:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as e:  # SafetensorError (not a public class), OSError
            msg = f"{path}: not a readable safetensors file ({e})"
            raise checkpoint.CheckpointError(msg) from None
    return checkpoint.safe_load(path)


class _Interrupt:
    """First Ctrl-C: finish the epoch, save, stop. Second: stop now (last epoch's state is kept)."""

    def __init__(self):
        self.flag = False
        self._old = signal.getsignal(signal.SIGINT)
        try:
            signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread
            self._old = None

    def _handle(self, signum, frame):
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True
        print("\ninterrupt: finishing this epoch and saving (Ctrl-C again to stop now)", flush=True)

    def restore(self):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
