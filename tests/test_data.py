from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiovit import data
from audiovit.data import DataError, Item, SplitOptions


def _touch_dataset(root: Path, per_class: dict[str, int], ext=".wav") -> Path:
    for label, n in per_class.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / label / f"{label}.{i:05d}{ext}").write_bytes(b"x")
    return root


def test_folder_per_class_with_utf8_names(tmp_path):
    _touch_dataset(tmp_path, {"música": 3, "日本語": 2})
    (tmp_path / "notes.txt").write_text("ignored")
    ds = data.load_dataset(tmp_path)
    assert ds.labels == ["música", "日本語"] and len(ds.items) == 5


def test_manifest_with_folds(tmp_path):
    (tmp_path / "a").mkdir()
    rows = ["path,label,fold,group"] + [
        f"a/{i}.wav,{'xy'[i % 2]},{i % 3},{i % 6}" for i in range(24)
    ]
    (tmp_path / "m.csv").write_text("\n".join(rows))
    ds = data.load_dataset(tmp_path / "m.csv")
    s = data.make_splits(ds, SplitOptions(test_fold="1"))
    assert {it.fold for it in s.test} == {"1"} and all(it.fold != "1" for it in s.train + s.valid)
    s = data.make_splits(ds, SplitOptions(test_fold="1", valid_fold="2"))
    assert {it.fold for it in s.valid} == {"2"} and {it.fold for it in s.train} == {"0"}
    with pytest.raises(DataError, match="not found"):
        data.make_splits(ds, SplitOptions(test_fold="7"))


def test_manifest_rows_without_path_or_label_are_skipped_and_counted(tmp_path):
    rows = ["path,label,fold", "a.wav,dog,1", "b.wav,,1", "c.wav", ",cat,2", "d.wav, cat ,2"]
    (tmp_path / "m.csv").write_text("\n".join(rows))
    ds = data.load_dataset(tmp_path / "m.csv")
    assert [(it.path.name, it.label) for it in ds.items] == [("a.wav", "dog"), ("d.wav", "cat")]
    assert ds.notes == ["3 rows without a path or a label skipped (lines 3, 4, 5)"]


def test_manifest_split_column(tmp_path):
    rows = ["path,label,split"] + [
        f"{i}.wav,{'ab'[i % 2]},{['train', 'test', 'train'][i % 3]}" for i in range(30)
    ]
    (tmp_path / "m.csv").write_text("\n".join(rows))
    s = data.make_splits(data.load_dataset(tmp_path / "m.csv"), SplitOptions())
    assert len(s.test) == 10 and len(s.train) + len(s.valid) == 20 and s.valid


def test_split_lists_ignore_extension_and_count_missing(tmp_path):
    _touch_dataset(tmp_path / "d", {"blues": 6, "jazz": 6}, ext=".ogg")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_text(
        "blues/blues.00000.wav\nblues/blues.00001.wav\njazz/jazz.00000.wav\njazz/jazz.00099.wav\n"
    )
    (lists / "valid.txt").write_text("blues/blues.00002.wav\njazz/jazz.00001.wav\n")
    (lists / "test.txt").write_text(
        "blues/blues.00003.wav\njazz/jazz.00002.wav\nrock/rock.00000.wav\n"
    )
    s = data.make_splits(data.load_dataset(tmp_path / "d"), SplitOptions(split_lists=lists))
    assert [it.path.name for it in s.train] == [
        "blues.00000.ogg",
        "blues.00001.ogg",
        "jazz.00000.ogg",
    ]
    assert len(s.valid) == 2 and len(s.test) == 2
    assert any("2 files named in the split lists are not in the dataset" in n for n in s.notes)
    assert any("5 files of the dataset are in no split list" in n for n in s.notes)


def test_automatic_split_is_stratified_and_seeded(tmp_path):
    _touch_dataset(tmp_path, {"a": 50, "b": 30, "c": 20})
    ds = data.load_dataset(tmp_path)
    s = data.make_splits(ds, SplitOptions(seed=3))
    for split, frac in (("valid", 0.1), ("test", 0.1), ("train", 0.8)):
        counts = Counter(it.label for it in s[split])
        assert counts == {lb: round(frac * n) for lb, n in {"a": 50, "b": 30, "c": 20}.items()}
    again = data.make_splits(ds, SplitOptions(seed=3))
    assert [it.path for it in again.test] == [it.path for it in s.test]
    other = data.make_splits(ds, SplitOptions(seed=4))
    assert [it.path for it in other.test] != [it.path for it in s.test]


def test_group_pattern_keeps_speakers_together(tmp_path):
    root = tmp_path / "d"
    for digit in "0123":
        (root / digit).mkdir(parents=True)
        for spk in ["ann", "bob", "cy", "dee", "eve", "fay", "gus", "hal", "ida", "jo"]:
            for take in range(3):
                (root / digit / f"{digit}_{spk}_{take}.wav").write_bytes(b"x")
    s = data.make_splits(data.load_dataset(root), SplitOptions(group_pattern=r"^\d+_([a-z]+)_"))
    speakers = {name: {it.path.name.split("_")[1] for it in s[name]} for name in data.SPLITS}
    assert not (speakers["train"] & speakers["test"]) and not (
        speakers["train"] & speakers["valid"]
    )
    assert s.test and s.valid and s.train


def test_groups_straddling_given_folds_are_refused(tmp_path):
    rows = ["path,label,fold,group", "a.wav,x,1,g", "b.wav,x,2,g", "c.wav,y,2,h", "d.wav,y,2,k"]
    (tmp_path / "m.csv").write_text("\n".join(rows))
    with pytest.raises(DataError, match="group 'g'"):
        data.make_splits(data.load_dataset(tmp_path / "m.csv"), SplitOptions(test_fold="1"))


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.sampled_from("abcd"), min_size=1, max_size=80),
    groups=st.lists(st.integers(0, 12), min_size=80, max_size=80),
    seed=st.integers(0, 10),
)
def test_split_properties(labels, groups, seed):
    items = [
        Item(Path(f"{i}.wav"), lb, group=str(g)) for i, (lb, g) in enumerate(zip(labels, groups))
    ]
    parts = data.stratified_group_split(items, {"valid": 0.1, "test": 0.2}, seed)
    placed = [it for name in parts for it in parts[name]]
    assert sorted(id(it) for it in placed) == sorted(id(it) for it in items)  # each item once
    where = {}
    for name, members in parts.items():
        for it in members:
            assert where.setdefault(it.group, name) == name  # no group straddles
    train_labels = {it.label for it in parts["train"]}
    majority = {}
    for it in items:
        majority.setdefault(it.group, Counter())[it.label] += 1
    for lb in {c.most_common(1)[0][0] for c in majority.values()}:
        assert lb in train_labels  # every class keeps training data


def _speakers(root: Path, speakers: list[str], digits="0123", takes=3) -> Path:
    for digit in digits:
        (root / digit).mkdir(parents=True, exist_ok=True)
        for spk in speakers:
            for take in range(takes):
                (root / digit / f"{digit}_{spk}_{take}.wav").write_bytes(b"x")
    return root


def test_a_group_pattern_that_groups_nothing_or_everything_is_refused(tmp_path):
    ds = data.load_dataset(_speakers(tmp_path / "d", ["ann", "bob", "cy"]))
    with pytest.raises(DataError, match=r"matches no file name \(e.g. '0_ann_0.wav'\)"):
        data.make_splits(ds, SplitOptions(group_pattern=r"^speaker-(\w+)"))
    with pytest.raises(DataError, match=r"every file in one group \('.wav'\)"):
        data.make_splits(ds, SplitOptions(group_pattern=r"(\.wav)$"))


def test_too_few_groups_for_a_test_split_is_refused_with_the_numbers(tmp_path):
    ds = data.load_dataset(_speakers(tmp_path / "d", ["ann", "bob", "cy", "dee", "eve"], "0"))
    opts = SplitOptions(group_pattern=r"^\d+_([a-z]+)_")
    with pytest.raises(DataError, match="test split is empty: 5 groups of 1 classes .* 0.1"):
        data.make_splits(ds, opts)
    s = data.make_splits(ds, SplitOptions(group_pattern=opts.group_pattern, test_frac=0.2))
    assert len({it.group for it in s.test}) == 1
    assert not data.make_splits(
        ds, SplitOptions(group_pattern=opts.group_pattern, test_frac=0)
    ).test


def test_a_test_split_with_few_clips_per_class_is_flagged(tmp_path):
    ds = data.load_dataset(_touch_dataset(tmp_path / "d", {"a": 10, "b": 10, "c": 60}))
    s = data.make_splits(ds, SplitOptions(seed=0))
    assert any("fewer than 5 clips of 2 class(es) (a, b)" in n for n in s.notes), s.notes
    assert "fewer than 5" in data.summary(ds.labels, s)


def test_a_test_fold_on_a_dataset_without_folds_says_so(tmp_path):
    ds = data.load_dataset(_touch_dataset(tmp_path / "d", {"a": 4, "b": 4}))
    with pytest.raises(DataError, match="--test-fold 1: this dataset has no folds"):
        data.make_splits(ds, SplitOptions(test_fold="1"))


def test_speakers_who_say_every_word_still_give_a_test_split(tmp_path):
    """FSDD-like names: 5 speakers × 10 digits, grouped by the README's --group-pattern."""
    import re

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    pattern = re.search(r"--group-pattern '([^']+)'", readme).group(1)
    for digit in range(10):
        (tmp_path / str(digit)).mkdir()
        for speaker in ("george", "jackson", "lucas", "nicolas", "theo"):
            for take in range(4):
                (tmp_path / str(digit) / f"{digit}_{speaker}_{take}.wav").touch()
    ds = data.load_dataset(tmp_path)
    for seed in range(3):
        splits = data.make_splits(ds, SplitOptions(group_pattern=pattern, seed=seed))
        speakers = {n: {it.group for it in splits[n]} for n in ("train", "valid", "test")}
        assert [len(speakers[n]) for n in ("train", "valid", "test")] == [3, 1, 1], speakers
        assert {it.label for it in splits["test"]} == {str(d) for d in range(10)}
