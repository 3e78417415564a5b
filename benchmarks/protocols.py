"""The accuracy benchmark's protocols and their runner, shared by accuracy.py and ablate.py:
datasets and folds, a fold's training run and its MFCC + SVM reference on the same splits and
log-mels, several folds at once in worker processes, and a protocol's row.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from datetime import date
from pathlib import Path

import numpy as np
import torch

from audiovit import checkpoint, data, evaluate
from audiovit.device import float_precision, resolve_device
from audiovit.features import FeatureCache, LogMel
from audiovit.inference import Classifier
from audiovit.loop import BEFORE_FIELD
from audiovit.train import TrainConfig, train
from common import hardware


@dataclass(frozen=True)
class Protocol:
    dataset: str
    description: str
    manifest: str  # relative to the data folder
    folds: str  # "split" (the manifest's split column), "all" (each fold tested once), or one fold
    headline: str  # "single", "mean" over folds, or "pooled" over every test prediction
    target: float
    # seconds of training per training clip of a fold at the defaults on the 2-core fp32 Intel
    # Xeon: only orders the folds when several train at once, longest first
    clip_s: float
    group_pattern: str | None = None  # file-name regex for groups the manifest does not name
    # a small-data protocol: at most this many clips of each class from each training fold (the
    # first by file name), the test fold whole
    per_class_fold: int | None = None
    in_benchmark: bool = True  # run by accuracy.py without names; False: by name or ablate.py


PROTOCOLS = {
    "fsdd-official": Protocol("FSDD", "official split (takes 0-4 test; speaker-dependent)",
                              "fsdd/manifest.csv", "split", "single", 0.99, clip_s=0.16),
    "fsdd-speaker": Protocol("FSDD", "leave one speaker out, 6 folds (mean)",
                             "fsdd/manifest.csv", "all", "mean", 0.92, clip_s=0.16),
    "gtzan-artist": Protocol("GTZAN (395 of 1000 clips)", "artist-filtered 3-fold CV (pooled)",
                             "gtzan/manifest.csv", "all", "pooled", 0.70, clip_s=3.6),
    "us8k": Protocol("UrbanSound8K (folds 1-3, 10)", "train folds 1-3, test fold 10",
                     "urbansound8k/manifest.csv", "10", "single", 0.78, clip_s=0.74,
                     group_pattern=r"^(\d+)-"),  # slices of one recording (fsID) stay together
    # 350 training clips of 1 s or less make epochs of 11 steps, like the held-out 20-word set
    # (360 clips) whose scratch run did not fit its training clips
    "fsdd-few": Protocol("FSDD, 7 takes per digit and speaker", "test nicolas, train 5 speakers",
                         "fsdd/manifest.csv", "nicolas", "single", 0.92, clip_s=0.16,
                         per_class_fold=7, in_benchmark=False),
}  # fmt: skip
BENCHMARK = [name for name, proto in PROTOCOLS.items() if proto.in_benchmark]


def fold_splits(ds: data.Dataset, proto: Protocol) -> list[tuple[str, data.Splits]]:
    """(fold name, splits) for each training run of the protocol."""
    opts = data.SplitOptions(group_pattern=proto.group_pattern)
    if proto.folds == "split":
        return [("official", data.make_splits(ds, opts))]
    folds = sorted({str(it.fold) for it in ds.items}) if proto.folds == "all" else [proto.folds]
    return [(f, data.make_splits(ds, replace(opts, test_fold=f))) for f in folds]


def _few(items: list[data.Item], n: int, test_fold: str) -> list[data.Item]:
    """The first ``n`` items by path of each (fold, label) outside ``test_fold``, and all of it."""
    kept: dict[tuple, int] = {}
    out = []
    for it in sorted(items, key=lambda it: str(it.path)):
        key = (str(it.fold), it.label)
        if str(it.fold) == test_fold or kept.get(key, 0) < n:
            kept[key] = kept.get(key, 0) + 1
            out.append(it)
    return out


def read_predictions(run: Path) -> tuple[list[str], list[str]]:
    with open(run / "predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["label"] for r in rows], [r["predicted"] for r in rows]


def other_rule_predictions(
    run: Path, kept: str, test: list[data.Item], cache: FeatureCache, cfg: TrainConfig
) -> tuple[list[str], list[str]] | None:
    """(true labels, predicted labels) on ``test`` from the epoch the run did not keep: the last
    epoch's weights (last.pt; its averaged weights where the run kept an EMA) where ``kept`` is
    "best", the best on validation (best.pt) where it is "last"; None where the run kept the
    last epoch and validated nothing (its validation carve trained too: TrainConfig.keep)."""
    device = resolve_device(cfg.device)
    if kept == "last" and not (run / "best.pt").is_file():
        return None
    if kept == "last":
        model, fcfg, labels, _ = checkpoint.load_model(run / "best.pt", device)
    else:
        model, fcfg, labels, _ = checkpoint.load_model(run / "model.pt", device)
        state = checkpoint.safe_load(run / "last.pt")
        model.load_state_dict(state["ema"] if "ema" in state else state["model"])
    clf = Classifier(model, fcfg, labels, device=device, precision=float_precision(device, cfg.amp))
    _, _, scored = evaluate.evaluate_items(clf, test, cache, cfg.eval_hop_s)
    return [it.label for it, _ in scored], [labels[int(p.argmax())] for _, p in scored]


def scores(true: list[str], pred: list[str], labels: list[str]) -> dict:
    index = {lb: i for i, lb in enumerate(labels)}
    m = evaluate.metrics([index[t] for t in true], [index[p] for p in pred], labels)
    return {k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "n")}


def mfcc_stats(logmel_db: np.ndarray) -> np.ndarray:
    """(F, T) log-mel in dB → 80 numbers: mean and std of 20 MFCCs and of their deltas.

    The arithmetic of librosa.feature.mfcc(S=...) and .delta (checked equal in the tests), in
    scipy alone so the benchmark also runs where librosa is not installed (the GPU machine)."""
    from scipy.fft import dct
    from scipy.signal import savgol_filter

    mfcc = dct(logmel_db.astype(np.float32), axis=0, type=2, norm="ortho")[:20]
    width = min(9, mfcc.shape[1] - (mfcc.shape[1] % 2 == 0))  # odd, at most the frame count
    delta = (savgol_filter(mfcc, width, polyorder=1, deriv=1, axis=-1, mode="interp")
             if width >= 3 else np.zeros_like(mfcc))  # fmt: skip
    return np.concatenate([mfcc.mean(1), mfcc.std(1), delta.mean(1), delta.std(1)])


def run_baseline(splits: data.Splits, cache: FeatureCache) -> tuple[list[str], list[str]]:
    """MFCC statistics + RBF SVM: (true labels, predicted labels) on the test split."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    def table(items):
        rows = [(mfcc_stats(cache.get(it.path)), it.label) for it in items]
        return np.stack([r[0] for r in rows]), [r[1] for r in rows]

    x_train, y_train = table(splits.train + splits.valid)
    x_test, y_test = table(splits.test)
    clf = make_pipeline(StandardScaler(), SVC(C=10.0, gamma="scale")).fit(x_train, y_train)
    return y_test, list(clf.predict(x_test))


@dataclass
class Job:
    """One training run of a protocol: a fold, with what a worker process needs to run it."""

    name: str  # the protocol's key in PROTOCOLS
    proto: Protocol
    fold: str
    ds: data.Dataset
    splits: data.Splits
    run: Path  # its run folder

    @property
    def cost(self) -> float:
        """Estimated seconds of training, to start the longest first."""
        return len(self.splits.train) * self.proto.clip_s


def protocol_jobs(name: str, args, only: list[str] | None = None) -> list[Job]:
    """The folds of protocol ``name`` (or those in ``only``), in the protocol's order."""
    proto = PROTOCOLS[name]
    ds = data.load_dataset(args.data / proto.manifest)
    if proto.per_class_fold:
        ds = replace(ds, items=_few(ds.items, proto.per_class_fold, proto.folds))
    folds = fold_splits(ds, proto)
    unknown = sorted(set(only or ()) - {fold for fold, _ in folds})
    if unknown:
        raise ValueError(f"{name} has no fold {', '.join(unknown)}; its folds: "
                         f"{', '.join(fold for fold, _ in folds)}")  # fmt: skip
    return [Job(name, proto, fold, ds, splits, args.runs / name / fold)
            for fold, splits in folds if only is None or fold in only]  # fmt: skip


def run_fold(job: Job, cfg: TrainConfig, resume: bool, tag: str = "",
             on_log=None) -> dict:  # fmt: skip
    """Train one fold and score it: its row of per-fold figures ("row"), and the (true,
    predicted) labels of its test clips under the kept rule ("kept"), under each rule's weights
    ("rules") and from the MFCC + SVM reference ("baseline"). ``tag`` prefixes its output lines
    (folds trained side by side print into one stream); ``on_log()`` runs after each line it
    prints, at the start, after every epoch and before the scoring."""
    labels, splits, run = job.ds.labels, job.splits, job.run
    cache = FeatureCache(cfg.cache_dir, LogMel(cfg.feature_config()))
    if run.exists() and not resume:
        shutil.rmtree(run)
    started = time.time()

    def say(s: str) -> None:
        print("\n".join(tag + ln for ln in s.split("\n")), flush=True)
        if on_log is not None:
            on_log()

    say(f"== {job.name}, fold {job.fold}: {len(splits.train)} train, {len(splits.valid)} valid, "
        f"{len(splits.test)} test ==")  # fmt: skip
    t0 = time.perf_counter()
    train(job.ds, splits, cfg, run, resume=resume, log=say)
    wall = time.perf_counter() - t0
    log = _log(run)
    teacher = {}
    if (run / "teacher").is_dir():  # distillation: the teacher's training is part of the cost
        log += _log(run / "teacher")
        own = json.loads((run / "teacher" / "metrics.json").read_text())
        teacher = {"teacher_accuracy": own["accuracy"]}
    true, pred = read_predictions(run)
    kept, best_epoch = _kept(run)
    other = "last" if kept == "best" else "best"
    rules = {kept: (true, pred), other: other_rule_predictions(run, kept, splits.test, cache, cfg)}
    bt, bp = run_baseline(splits, cache)
    row = {"fold": job.fold, **scores(true, pred, labels), "keep": kept,
           "baseline_accuracy": scores(bt, bp, labels)["accuracy"],
           **{f"{rule}_accuracy": _accuracy(pairs, labels) for rule, pairs in rules.items()},
           "train_s": round(sum(r["epoch_s"] for r in log), 1),
           "wall_s": round(wall, 1), "best_epoch": best_epoch, **teacher}  # fmt: skip
    say(f"fold {job.fold}: accuracy {row['accuracy']:.4f} ({kept} epoch kept; best on "
        f"validation {_fmt(row['best_accuracy'])}, last epoch {_fmt(row['last_accuracy'])}, "
        f"MFCC+SVM {row['baseline_accuracy']:.4f})")  # fmt: skip
    return {"row": row, "kept": (true, pred), "rules": rules, "baseline": (bt, bp),
            "span": (started, time.time())}  # fmt: skip


def _accuracy(pairs: tuple[list[str], list[str]] | None, labels: list[str]) -> float | None:
    return None if pairs is None else scores(*pairs, labels)["accuracy"]


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.4f}"


def _concat(pairs) -> tuple[list, list] | None:
    """[(true, predicted), ...] of several folds → (every true label, every predicted one);
    None where a fold has none (a rule a run could not score)."""
    pairs = list(pairs)
    if any(p is None for p in pairs):
        return None
    return [t for p in pairs for t in p[0]], [x for p in pairs for x in p[1]]


def summarise(job: Job, results: list[dict], cfg: TrainConfig, workers: int) -> dict:
    """The row of accuracy.json of ``job``'s protocol, from its folds' run_fold results (in fold
    order). Its wall time runs from its first fold's start to its last fold's end."""
    name, proto, labels = job.name, job.proto, job.ds.labels
    folds = [r["row"] for r in results]
    rule_pool = {rule: _concat(r["rules"][rule] for r in results) for rule in ("best", "last")}
    wall_s = max(r["span"][1] for r in results) - min(r["span"][0] for r in results)
    if proto.headline == "mean":
        head = {k: statistics.mean(f[k] for f in folds)
                for k in ("accuracy", "balanced_accuracy", "macro_f1")}  # fmt: skip
        head["n"] = sum(f["n"] for f in folds)
        base = statistics.mean(f["baseline_accuracy"] for f in folds)
        rules = {r: None if rule_pool[r] is None else statistics.mean(f[f"{r}_accuracy"]
                 for f in folds) for r in rule_pool}  # fmt: skip
    else:  # single fold or pooled over every test prediction: the same computation
        head = scores(*_concat(r["kept"] for r in results), labels)
        base = scores(*_concat(r["baseline"] for r in results), labels)["accuracy"]
        rules = {r: _accuracy(pairs, labels) for r, pairs in rule_pool.items()}
    device = resolve_device(cfg.device)
    return {
        "protocol": name, "dataset": proto.dataset, "description": proto.description,
        "target": proto.target, **head, "baseline_accuracy": base,
        "best_accuracy": rules["best"], "last_accuracy": rules["last"],
        "folds": folds,
        "train_s": round(sum(f["train_s"] for f in folds), 1),
        "wall_s": round(wall_s, 1), "workers": workers,
        "hardware": hardware(device, workers), "device": device.type,
        "settings": {k: v for k, v in asdict(cfg).items() if k not in ("cache_dir", "device")},
        "torch": torch.__version__, "date": date.today().isoformat(),
        "command": "python benchmarks/accuracy.py " + " ".join(sys.argv[1:]),
    }  # fmt: skip


class FoldsFailed(RuntimeError):
    """Some folds raised; the others finished and their protocols' rows were delivered."""


# in a worker process: the parent's event that says to start no more folds, the count of folds
# not yet finished (shared by every worker), the number of workers and the threads among them
_STOP = _LEFT = None
_WORKERS = _THREADS = 1


def _worker_init(workers: int, threads: int, stop, left) -> None:
    global _STOP, _LEFT, _WORKERS, _THREADS
    _STOP, _LEFT, _WORKERS, _THREADS = stop, left, workers, threads
    share_threads()
    os.environ["AUDIOVIT_PROGRESS"] = "0"  # two redrawn bars would overwrite each other's line


def share_threads() -> int:
    """Set this worker's share of the threads: an equal share while every worker has a fold,
    and once fewer folds are left than workers, the idle workers' threads too (a protocol's
    last fold would otherwise train on one core of two). Returns the share."""
    left = _LEFT.value if _LEFT is not None else _WORKERS
    share = max(1, _THREADS // max(1, min(_WORKERS, left)))
    if share != torch.get_num_threads():
        torch.set_num_threads(share)
    return share


def _worker_run_fold(job: Job, cfg: TrainConfig, resume: bool, tag: str) -> dict:
    if _STOP is not None and _STOP.is_set():
        raise KeyboardInterrupt(f"{job.name} fold {job.fold}: not started (interrupted)")
    try:
        return run_fold(job, cfg, resume, tag, on_log=share_threads)
    finally:
        with _LEFT.get_lock():
            _LEFT.value -= 1


def default_workers(device: str) -> int:
    """Folds trained at once: two on a CPU with two or more threads (the gain is in the module
    docstring and NOTES.md, "Throughput and the budget"), one on a GPU."""
    return 2 if resolve_device(device).type == "cpu" and torch.get_num_threads() >= 2 else 1


def run_protocols(names: list[str], args, cfg: TrainConfig, workers: int = 1,
                  only: list[str] | None = None, on_row=None) -> dict[str, dict]:  # fmt: skip
    """Train and score every fold of the protocols ``names`` (or the folds in ``only``); return
    their rows by protocol, calling ``on_row(row)`` as each protocol's last fold finishes.

    With ``workers`` > 1, that many folds train at once, each in its own process with an equal
    share of torch's threads, the costliest folds first (the protocols' ``clip_s``) so that the
    short ones fill in at the end; once fewer folds are left than workers, the last ones take
    the idle workers' threads from their next epoch (share_threads). Every fold's seed and data
    are its own, so a fold's result does not depend on which folds run beside it; only the
    thread count can change the arithmetic's rounding. A fold that raises does not stop the
    others: their protocols' rows are delivered, then FoldsFailed names the failures. Ctrl-C on
    the terminal reaches every process: each fold stops at the end of its epoch (its last.pt
    saved, for ``--resume``) and no other fold starts."""
    names = list(dict.fromkeys(names))  # a protocol named twice would train its folders twice
    jobs = [job for name in names for job in protocol_jobs(name, args, only)]
    workers = max(1, min(workers, len(jobs)))
    pending = {name: [j for j in jobs if j.name == name] for name in names}
    done: dict[tuple[str, str], dict] = {}
    rows, failed = {}, []

    def finished(job: Job, result: dict) -> None:
        done[job.name, job.fold] = result
        if all((job.name, j.fold) in done for j in pending[job.name]):
            results = [done[job.name, j.fold] for j in pending[job.name]]
            rows[job.name] = summarise(job, results, cfg, workers)
            if on_row is not None:
                on_row(rows[job.name])

    def failure(job: Job, e: Exception) -> None:
        failed.append((jobs.index(job), f"{job.name} fold {job.fold}: {type(e).__name__}: {e}"))
        print(f"{job.name} fold {job.fold} failed: {type(e).__name__}: {e}", file=sys.stderr,
              flush=True)  # fmt: skip

    if workers == 1:
        for job in jobs:
            try:
                result = run_fold(job, cfg, args.resume)
            except Exception as e:
                failure(job, e)
                continue
            finished(job, result)
    else:
        threads = max(1, torch.get_num_threads() // workers)
        order = sorted(jobs, key=lambda j: -j.cost)
        print(f"{len(jobs)} folds, {workers} at once with {threads} thread(s) each (the last "
              "ones with more), longest first: "
              + ", ".join(f"{j.name}/{j.fold}" for j in order), flush=True)  # fmt: skip
        # spawned, not forked: a fork copies torch's OpenMP pool state, which can deadlock, and
        # CUDA cannot be used in a forked child
        ctx = multiprocessing.get_context("spawn")
        stop, left = ctx.Event(), ctx.Value("i", len(jobs))
        pool = ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_worker_init,
            initargs=(workers, torch.get_num_threads(), stop, left))  # fmt: skip
        try:
            futures = {pool.submit(_worker_run_fold, job, cfg, args.resume,
                                   f"[{job.name} {job.fold}] "): job for job in order}  # fmt: skip
            for future in as_completed(futures):
                try:
                    result = future.result()
                except Exception as e:  # KeyboardInterrupt (a worker's Ctrl-C) goes on up
                    failure(futures[future], e)
                    continue
                finished(futures[future], result)
        except BaseException:
            stop.set()  # the fold a worker has queued must not start either
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True)  # running folds end at their epoch's end after a Ctrl-C
    if failed:
        failed = [msg for _, msg in sorted(failed)]  # in the protocols' fold order
        raise FoldsFailed(f"{len(failed)} of {len(jobs)} folds failed: " + "; ".join(failed))
    return rows


def run_protocol(name: str, args, cfg: TrainConfig, only: list[str] | None = None,
                 workers: int = 1) -> dict:  # fmt: skip
    """Train and score every fold of protocol ``name`` (or the folds in ``only``): its row."""
    return run_protocols([name], args, cfg, workers, only)[name]


def _log(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines() if ln]


def _kept(run: Path) -> tuple[str, int | None]:
    """The rule the run's model.pt followed ("best" or "last"), and its best epoch."""
    m = json.loads((run / "metrics.json").read_text())
    return m["keep"], m.get("best_epoch")


def kept_rules(row: dict) -> set[str]:
    """The rules ("best", "last") its folds' model.pt followed; a fold from before the keep
    field existed kept the best epoch (BEFORE_FIELD)."""
    return {f.get("keep", BEFORE_FIELD["keep"]) for f in row.get("folds") or [row]}


def kept_cell(row: dict) -> str:
    """kept_rules for a table cell: "best", "last" or "best/last"."""
    return "/".join(sorted(kept_rules(row)))


def rule_cell(row: dict, rule: str) -> str:
    """The accuracy of the ``rule`` epoch's weights ("best" on validation or "last"): measured
    on both in current rows; older rows hold only the kept rule's (accuracy), the oldest no
    last-epoch score."""
    v = row.get(f"{rule}_accuracy", row["accuracy"] if kept_rules(row) == {rule} else None)
    return "—" if v is None else f"{v:.3f}"
