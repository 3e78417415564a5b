"""The benchmarks' own arithmetic: the MFCC + SVM reference's features equal librosa's, and the
column of the epoch a run did not keep scores the same pipeline as the run's own predictions."""

import argparse
import csv

import numpy as np
import pytest
import torch

import protocols  # benchmarks/ is on the path (pyproject's pytest pythonpath)
from audiovit import checkpoint
from audiovit.train import TrainConfig
from helpers import FAST
from protocols import mfcc_stats

librosa = pytest.importorskip("librosa")


@pytest.mark.parametrize("frames", [2, 3, 8, 9, 301])
def test_mfcc_statistics_equal_librosas(frames):
    S = np.random.default_rng(frames).standard_normal((64, frames)).astype(np.float32) * 20 - 50
    mfcc = librosa.feature.mfcc(S=S, n_mfcc=20)
    width = min(9, frames - (frames % 2 == 0))
    delta = librosa.feature.delta(mfcc, width=width) if width >= 3 else np.zeros_like(mfcc)
    want = np.concatenate([mfcc.mean(1), mfcc.std(1), delta.mean(1), delta.std(1)])
    np.testing.assert_allclose(mfcc_stats(S), want, rtol=1e-5, atol=1e-4)


def two_fold_protocol(synth_root, tmp_path, monkeypatch) -> protocols.Protocol:
    """A protocol "synth" over the synthetic clips: two folds, each tested once, pooled."""
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "fold"])
        for i, wav in enumerate(sorted(synth_root.glob("*/*.wav"))):
            w.writerow([wav, wav.parent.name, i % 2])
    proto = protocols.Protocol("synth", "two folds", "manifest.csv", "all", "pooled", 0.5, 1.0)
    monkeypatch.setitem(protocols.PROTOCOLS, "synth", proto)
    return proto


@pytest.mark.parametrize("keep", ["best", "last", "auto"])
def test_the_other_rule_column_scores_its_weights_like_the_run_scores_its_model(
    synth_root, tmp_path, monkeypatch, keep
):
    """After one epoch the last epoch is also the best, so scoring the weights the run did not
    keep (last.pt, or best.pt under keep=last) must give the run's own test predictions, clip
    for clip; other weights in that file must change them. Under keep=auto the folds' carves are
    too small to choose an epoch and train too: there is no other rule to score."""
    proto = two_fold_protocol(synth_root, tmp_path, monkeypatch)
    cfg = TrainConfig(**{**FAST, "epochs": 1}, keep=keep, cache_dir=str(tmp_path / "cache"))
    args = argparse.Namespace(data=tmp_path, runs=tmp_path / "runs", resume=False)
    row = protocols.run_protocol("synth", args, cfg)
    assert [f["fold"] for f in row["folds"]] == ["0", "1"]
    ds = protocols.data.load_dataset(tmp_path / "manifest.csv")
    cache = protocols.FeatureCache(cfg.cache_dir, protocols.LogMel(cfg.feature_config()))
    if keep == "auto":  # the folds' carves are too small to choose an epoch: they train too
        for f, (fold, splits) in zip(row["folds"], protocols.fold_splits(ds, proto), strict=True):
            assert f["keep"] == "last" and f["best_epoch"] is None
            assert f["best_accuracy"] is None and f["last_accuracy"] == f["accuracy"]
            run = tmp_path / "runs" / "synth" / fold
            assert protocols.other_rule_predictions(run, "last", splits.test, cache, cfg) is None
        assert row["best_accuracy"] is None and protocols.rule_cell(row, "best") == "—"
        return
    for f, (fold, splits) in zip(row["folds"], protocols.fold_splits(ds, proto), strict=True):
        assert f["fold"] == fold and f["best_epoch"] == 1 and f["keep"] == keep
        assert f["last_accuracy"] == f["best_accuracy"] == f["accuracy"]
        run = tmp_path / "runs" / "synth" / fold
        other = protocols.other_rule_predictions(run, keep, splits.test, cache, cfg)
        assert other == protocols.read_predictions(run)  # (true, predicted) per clip, in order
    assert row["last_accuracy"] == row["best_accuracy"] == row["accuracy"]

    g = torch.Generator().manual_seed(0)
    noisy = lambda sd: {k: v + torch.randn(v.shape, generator=g) if v.is_floating_point() else v  # noqa: E731
                        for k, v in sd.items()}  # fmt: skip
    if keep == "best":
        state = checkpoint.safe_load(run / "last.pt")
        state["model"] = noisy(state["model"])
        checkpoint.atomic_save(state, run / "last.pt")
    else:
        model, fcfg, labels, meta = checkpoint.load_model(run / "best.pt")
        model.load_state_dict(noisy(model.state_dict()))
        checkpoint.save_model(run / "best.pt", model, fcfg, labels, meta)
    assert protocols.other_rule_predictions(run, keep, splits.test, cache, cfg) != other


def test_folds_side_by_side_score_as_one_after_the_other(synth_root, tmp_path, monkeypatch):
    """Two folds trained at once, in two one-thread worker processes (two threads shared by two
    workers), give the rows and the clip-by-clip predictions of the same folds trained one after
    the other in this process with one thread: a fold's result does not depend on the fold
    beside it."""
    two_fold_protocol(synth_root, tmp_path, monkeypatch)
    cfg = TrainConfig(**{**FAST, "epochs": 2}, cache_dir=str(tmp_path / "cache"))
    args = lambda runs: argparse.Namespace(data=tmp_path, runs=tmp_path / runs, resume=False)  # noqa: E731
    threads, seen = torch.get_num_threads(), []
    try:
        torch.set_num_threads(1)
        one = protocols.run_protocols(["synth"], args("one"), cfg, workers=1)["synth"]
        torch.set_num_threads(2)
        two = protocols.run_protocols(["synth"], args("two"), cfg, workers=2, on_row=seen.append)
    finally:
        torch.set_num_threads(threads)
    assert seen == [two["synth"]]
    two = two["synth"]
    assert two["workers"] == 2 and "2 folds at once, 1 thread each" in two["hardware"]
    assert one["workers"] == 1 and "folds at once" not in one["hardware"]
    timing = ("train_s", "wall_s")
    strip = lambda row: {k: v for k, v in row.items() if k not in timing}  # noqa: E731
    assert [strip(f) for f in two["folds"]] == [strip(f) for f in one["folds"]]
    assert [f["fold"] for f in two["folds"]] == ["0", "1"]
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "n", "best_accuracy", "last_accuracy",
                "baseline_accuracy"):  # fmt: skip
        assert two[key] == one[key], key
    for fold in ("0", "1"):
        assert protocols.read_predictions(tmp_path / "two" / "synth" / fold) == (
            protocols.read_predictions(tmp_path / "one" / "synth" / fold))  # fmt: skip


def test_the_last_folds_take_the_idle_workers_threads(monkeypatch):
    """A worker's fold trains on its share of the threads while every worker has a fold, and on
    every thread once it is the last fold left; a finished or failed fold counts itself out."""
    import multiprocessing

    left = multiprocessing.Value("i", 3)
    monkeypatch.setattr(protocols, "_STOP", None)
    monkeypatch.setattr(protocols, "_LEFT", left)
    monkeypatch.setattr(protocols, "_WORKERS", 2)
    monkeypatch.setattr(protocols, "_THREADS", 2)
    seen = []

    def fold(job, cfg, resume, tag, on_log):  # stands in for training: logs twice
        seen.append(on_log())
        with left.get_lock():
            left.value -= 1  # meanwhile, the other worker's fold finishes
        seen.append(on_log())
        if job == "bad":
            raise RuntimeError("unreadable")
        return {}

    monkeypatch.setattr(protocols, "run_fold", fold)
    threads = torch.get_num_threads()
    try:
        protocols._worker_run_fold("good", None, False, "")  # 3 folds left, then 2: one each
        assert seen == [1, 1] and left.value == 1
        left.value = 2
        with pytest.raises(RuntimeError):  # 2 left, then this one alone: both threads
            protocols._worker_run_fold("bad", None, False, "")
        assert seen[2:] == [1, 2] and torch.get_num_threads() == 2 and left.value == 0
    finally:
        torch.set_num_threads(threads)


def test_a_failing_fold_leaves_the_others_rows_and_is_named(synth_root, tmp_path, monkeypatch):
    """Folds side by side: a protocol whose clips are all unreadable fails its folds, while the
    good protocol's row is still delivered; then one error names the failed folds. Asking for
    a fold a protocol lacks is refused up front."""
    two_fold_protocol(synth_root, tmp_path, monkeypatch)
    bad = tmp_path / "bad"
    bad.mkdir()
    with open(tmp_path / "broken.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "fold"])
        for i in range(12):
            (bad / f"{i}.wav").write_bytes(b"not audio")
            w.writerow([bad / f"{i}.wav", "ab"[i % 2], i % 2])
    broken = protocols.Protocol("broken", "unreadable", "broken.csv", "all", "pooled", 0.5, 9.0)
    monkeypatch.setitem(protocols.PROTOCOLS, "broken", broken)
    cfg = TrainConfig(**{**FAST, "epochs": 1}, cache_dir=str(tmp_path / "cache"))
    args = argparse.Namespace(data=tmp_path, runs=tmp_path / "runs", resume=False)
    with pytest.raises(ValueError, match="synth has no fold 7; its folds: 0, 1"):
        protocols.run_protocols(["synth"], args, cfg, only=["7"])
    seen = []
    with pytest.raises(
        protocols.FoldsFailed, match="2 of 4 folds failed: broken fold 0: .*broken fold 1"
    ):
        protocols.run_protocols(["broken", "synth"], args, cfg, workers=2, on_row=seen.append)
    assert [r["protocol"] for r in seen] == ["synth"]
    assert [f["fold"] for f in seen[0]["folds"]] == ["0", "1"]


def test_rule_columns_read_each_rules_score_and_older_rows_their_kept_one():
    new = {"accuracy": 0.5, "best_accuracy": 0.4, "last_accuracy": 0.5,
           "folds": [{"keep": "last"}, {"keep": "last"}]}  # fmt: skip
    assert (protocols.rule_cell(new, "best"), protocols.rule_cell(new, "last")) == (
        "0.400",
        "0.500",
    )
    old = {"accuracy": 0.7, "last_accuracy": 0.6}  # before keep existed: the best was kept
    assert (protocols.rule_cell(old, "best"), protocols.rule_cell(old, "last")) == (
        "0.700",
        "0.600",
    )
    older = {"accuracy": 0.7}  # before the last epoch was scored
    assert protocols.rule_cell(older, "last") == "—"
    kept_last = {"accuracy": 0.7, "folds": [{"keep": "last"}]}
    assert (protocols.rule_cell(kept_last, "best"), protocols.rule_cell(kept_last, "last")) == (
        "—", "0.700")  # fmt: skip
    assert protocols.kept_rules({"folds": [{"keep": "last"}, {}]}) == {"best", "last"}


def test_a_small_data_protocol_keeps_n_clips_per_class_and_training_fold_and_the_test_fold_whole(
    synth_root, tmp_path, monkeypatch
):
    two_fold_protocol(synth_root, tmp_path, monkeypatch)
    small = protocols.Protocol("synth", "few", "manifest.csv", "1", "single", 0.5, 1.0,
                               per_class_fold=2, in_benchmark=False)  # fmt: skip
    monkeypatch.setitem(protocols.PROTOCOLS, "small", small)
    args = argparse.Namespace(data=tmp_path, runs=tmp_path / "runs")
    [job] = protocols.protocol_jobs("small", args)
    full = protocols.data.load_dataset(tmp_path / "manifest.csv")
    test = [it for it in full.items if it.fold == "1"]
    assert sorted(map(str, (it.path for it in job.splits.test))) == sorted(
        str(it.path) for it in test
    )
    kept = job.splits.train + job.splits.valid
    assert len(kept) == 2 * len(full.labels)  # 2 of each class from the one training fold
    for label in full.labels:
        first = sorted(str(it.path) for it in full.items if it.fold == "0" and it.label == label)
        assert sorted(str(it.path) for it in kept if it.label == label) == first[:2]
    # accuracy.py runs the four headline protocols unless it is named
    assert protocols.BENCHMARK == ["fsdd-official", "fsdd-speaker", "gtzan-artist", "us8k"]


def test_the_int8_benchmark_scores_one_model_in_fp32_and_both_int8_routes(
    trained, synth_root, tmp_path
):
    pytest.importorskip("onnxruntime")
    import int8  # benchmarks/int8.py

    from audiovit.features import FeatureCache, LogMel
    from audiovit.inference import load_model

    items = protocols.data.load_dataset(synth_root).items[::4]
    scores = int8.compare(trained / "model.pt", items, tmp_path / "cache")
    clf = load_model(trained / "model.pt", device="cpu", precision="fp32")
    cache = FeatureCache(tmp_path / "cache", LogMel(clf.feature_cfg))
    own = protocols.evaluate.evaluate_items(clf, items, cache)[0]
    assert scores["fp32"] == {"accuracy": own["accuracy"], "n": len(items)}
    for route in int8.ROUTES:
        assert scores[route]["n"] == len(items)
        assert 0 < scores[route]["max_prob_change"] < 0.05  # quantized, and close
        assert scores[route]["labels_changed"] <= 1
    row = {"protocol": "synth", "fold": "0", "model": "m.pt", "scores": scores,
           "hardware": "cpu", "date": "today"}  # fmt: skip
    assert f"| synth | 0 | `m.pt` | {len(items)} | {own['accuracy']:.3f} |" in int8.render(
        {"k": row}
    )


def test_seed_spread_groups_seeds_of_one_change_and_keeps_a_code_note_apart():
    import ablate  # benchmarks/ablate.py

    def row(change: str, acc: float) -> dict:
        return {"protocol": "fsdd-few", "only_folds": None, "change": change, "accuracy": acc,
                "balanced_accuracy": acc, "best_accuracy": None, "last_accuracy": acc,
                "hardware": "cpu"}  # fmt: skip

    rows = [row("lr=0.001", 0.5), row("lr=0.001, seed=1", 0.7),
            row("lr=0.001, seed=0; cut", 0.2), row("lr=0.001, seed=2; cut", 0.4)]  # fmt: skip
    lines = [s for s in ablate.seed_spread(rows) if s.startswith("| fsdd-few")]
    assert len(lines) == 2
    cut, plain = sorted(lines, key=lambda s: "cut" not in s)
    assert "| lr=0.001; cut |" in cut and "| 0, 2 | 0.200, 0.400 | 0.300 (0.200-0.400)" in cut
    assert "| lr=0.001 |" in plain and "| 0, 1 | 0.500, 0.700 | 0.600 (0.500-0.700)" in plain
