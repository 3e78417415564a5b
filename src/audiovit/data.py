"""Datasets from a folder per class or a CSV manifest, and train / valid / test splits.

Splits come from, in order: a test fold (``test_fold``, optionally ``valid_fold``); published
split lists (``train.txt``, ``valid.txt``, ``test.txt``); the manifest's ``split`` column; or a
seeded stratified split. Items sharing a group (a speaker, an artist) never straddle splits.
"""

from __future__ import annotations

import csv
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from .audio import is_audio_path

SPLITS = ("train", "valid", "test")
MIN_TEST_PER_CLASS = 5  # fewer test clips of a class, and its figures are too coarse to trust


class DataError(Exception):
    """A dataset that cannot be used as given; the message says why in one line."""


@dataclass(frozen=True)
class Item:
    path: Path
    label: str
    split: str | None = None
    fold: str | None = None
    group: str | None = None


@dataclass
class Dataset:
    root: Path  # paths in split lists are relative to this
    items: list[Item]
    notes: list[str] = field(default_factory=list)  # what was skipped while reading, and why

    @property
    def labels(self) -> list[str]:
        return sorted({it.label for it in self.items})


@dataclass
class SplitOptions:
    test_fold: str | None = None  # items whose fold is this are the test set
    valid_fold: str | None = None  # likewise for validation; else carved from train
    split_lists: Path | None = None  # a folder with train.txt / valid.txt / test.txt
    group_pattern: str | None = None  # regex; its first group of the file name is the group
    valid_frac: float = 0.1
    test_frac: float = 0.1
    seed: int = 0


@dataclass
class Splits:
    train: list[Item]
    valid: list[Item]
    test: list[Item]
    notes: list[str] = field(default_factory=list)
    carved: bool = False  # valid was carved from the training rows (no fold, list or column)

    def __getitem__(self, name: str) -> list[Item]:
        return getattr(self, name)


def load_dataset(source: str | Path) -> Dataset:
    """A folder with a sub-folder per class, or a CSV manifest (path,label[,split,fold,group])."""
    source = Path(source)
    if source.is_dir():
        return scan_folder(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        return read_manifest(source)
    raise DataError(f"{source}: not a folder of class folders nor a .csv manifest")


def scan_folder(root: Path) -> Dataset:
    items, notes = [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in class_dir.rglob("*") if is_audio_path(p) and not p.is_dir())
        items += [Item(path=p, label=class_dir.name) for p in files]
    if not items:
        raise DataError(f"{root}: no audio files found in class sub-folders (<root>/<label>/*.wav)")
    loose = [p for p in root.iterdir() if p.is_file() and is_audio_path(p)]
    if loose:
        notes.append(f"{len(loose)} audio files directly in {root} ignored (no class folder)")
    return Dataset(root=root, items=items, notes=notes)


def read_manifest(csv_path: Path) -> Dataset:
    root = csv_path.parent
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{csv_path}: cannot read manifest ({e})") from None
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise DataError(f"{csv_path}: a manifest needs a header with at least 'path' and 'label'")
    items, bad_split, incomplete = [], 0, []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        path, label = ((row.get(k) or "").strip() for k in ("path", "label"))
        if not path or not label:  # a short or half-filled row
            incomplete.append(line)
            continue
        split = (row.get("split") or "").strip().lower() or None
        if split is not None and split not in SPLITS:
            bad_split += 1
            split = None
        opt = {k: (row.get(k) or "").strip() or None for k in ("fold", "group")}
        items.append(Item(path=root / path, label=label, split=split, **opt))
    notes = [f"{bad_split} rows with a split other than train/valid/test"] if bad_split else []
    if incomplete:
        shown = ", ".join(map(str, incomplete[:10])) + (", ..." if len(incomplete) > 10 else "")
        notes.append(f"{len(incomplete)} rows without a path or a label skipped (lines {shown})")
    return Dataset(root=root, items=items, notes=notes)


def make_splits(ds: Dataset, opts: SplitOptions) -> Splits:
    items = ds.items
    if opts.group_pattern:
        items = _apply_group_pattern(items, opts.group_pattern)
    notes: list[str] = []
    carved = False
    if opts.test_fold is not None:
        folds = {it.fold for it in items}
        for name, fold in (("test", opts.test_fold), ("valid", opts.valid_fold)):
            if fold is not None and fold not in folds:
                if folds == {None}:
                    raise DataError(
                        f"--{name}-fold {fold}: this dataset has no folds (a "
                        "manifest's fold column gives them)"
                    )
                raise DataError(
                    f"{name} fold {fold!r} not found; folds are {sorted(map(str, folds))}"
                )
        test = [it for it in items if it.fold == opts.test_fold]
        rest = [it for it in items if it.fold != opts.test_fold]
        if opts.valid_fold is not None:
            valid = [it for it in rest if it.fold == opts.valid_fold]
            train = [it for it in rest if it.fold != opts.valid_fold]
        else:
            parts = stratified_group_split(rest, {"valid": opts.valid_frac}, opts.seed)
            train, valid, carved = parts["train"], parts["valid"], True
    elif opts.split_lists is not None:
        train, valid, test, notes = _from_split_lists(items, ds.root, Path(opts.split_lists))
    elif any(it.split for it in items):
        by = defaultdict(list)
        for it in items:
            by[it.split or "train"].append(it)
        train, valid, test = by["train"], by["valid"], by["test"]
        if not valid:
            parts = stratified_group_split(train, {"valid": opts.valid_frac}, opts.seed)
            train, valid, carved = parts["train"], parts["valid"], True
    else:
        fracs = {"valid": opts.valid_frac, "test": opts.test_frac}
        parts = stratified_group_split(items, fracs, opts.seed)
        train, valid, test, carved = parts["train"], parts["valid"], parts["test"], True
        if not test and opts.test_frac > 0:
            raise DataError(_empty_test(items, opts.test_frac))
    splits = Splits(train=train, valid=valid, test=test, notes=notes, carved=carved)
    _check_groups(splits)
    few = sorted(lb for lb, n in Counter(it.label for it in test).items() if n < MIN_TEST_PER_CLASS)
    if few:
        splits.notes.append(
            f"the test split holds fewer than {MIN_TEST_PER_CLASS} clips of {len(few)} class(es) "
            f"({', '.join(few[:5])}{', ...' if len(few) > 5 else ''}): each of their clips moves "
            "that class's recall by 20 points or more"
        )
    return splits


def _empty_test(items: list[Item], test_frac: float) -> str:
    """Why the automatic split left no test clip, with the numbers and the ways out."""
    n_groups = len({it.group if it.group is not None else it.path for it in items})
    unit = "groups" if any(it.group is not None for it in items) else "files"
    return (
        f"the test split is empty: {n_groups} {unit} of {len({it.label for it in items})} "
        f"classes are too few for --test-frac {test_frac:g}; give more data, a larger "
        "--test-frac, a --test-fold, or --test-frac 0 to train without a test split"
    )


def _apply_group_pattern(items: list[Item], pattern: str) -> list[Item]:
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise DataError(f"--group-pattern {pattern!r} is not a valid regex ({e})") from None
    if rx.groups < 1:
        raise DataError(f"--group-pattern {pattern!r} needs a capture group, e.g. '^(\\w+)_'")
    out, matched = [], 0
    for it in items:
        m = rx.search(it.path.name)
        matched += m is not None
        out.append(replace(it, group=m.group(1) if m else it.path.name))
    example = items[0].path.name if items else ""
    if items and not matched:
        raise DataError(
            f"--group-pattern {pattern!r} matches no file name (e.g. {example!r}): "
            "files would be split one by one and groups would leak"
        )
    groups = {it.group for it in out}
    if len(groups) == 1:
        raise DataError(
            f"--group-pattern {pattern!r} puts every file in one group "
            f"({groups.pop()!r}): no split can keep groups apart"
        )
    return out


def stratified_group_split(
    items: list[Item], fracs: dict[str, float], seed: int
) -> dict[str, list[Item]]:
    """Split into ``train`` plus the named fractions, whole groups at a time.

    Items without a group are their own group. Where groups keep to one class (artists of a
    genre, source recordings of a sound), each class is split on its own, so that every split
    keeps roughly the class's share: see :func:`_deal`. Where groups span the classes (speakers
    who each say every word), a group cannot follow its class, and the groups are dealt as one
    pool; each split asked for then gets at least one group where there are enough, since a
    test split of speakers no model has heard is the point of grouping by speaker.
    """
    rng = random.Random(seed)
    groups: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        groups[it.group if it.group is not None else f"\0{it.path}"].append(it)
    pools = list(groups.values())
    majority = [Counter(m.label for m in members).most_common(1)[0] for members in pools]
    if sum(n for _, n in majority) < 0.9 * len(items):  # groups span the classes
        rng.shuffle(pools)
        out = _deal(pools, fracs, at_least_one=True)
        trained = {it.label for g in out["train"] for it in g}
        for label in sorted({it.label for it in items} - trained):
            if any(it.label == label for g in out["train"] for it in g):
                continue  # a group moved for another class brought it along
            # a class no training group holds: its smallest group trains
            name, g = min(
                ((k, g) for k in fracs for g in out[k] if any(it.label == label for it in g)),
                key=lambda kg: len(kg[1]),
            )
            out[name].remove(g)
            out["train"].append(g)
        return {k: [it for g in v for it in g] for k, v in out.items()}
    by_class: dict[str, list[list[Item]]] = defaultdict(list)
    for members, (label, _) in zip(pools, majority):
        by_class[label].append(members)
    out: dict[str, list[Item]] = {"train": [], **{k: [] for k in fracs}}
    for label in sorted(by_class):
        rng.shuffle(by_class[label])
        for name, part in _deal(by_class[label], fracs, at_least_one=False).items():
            out[name] += [it for g in part for it in g]
    return out


def _deal(
    groups: list[list[Item]], fracs: dict[str, float], at_least_one: bool
) -> dict[str, list[list[Item]]]:
    """Deal groups, largest first, to whichever split is furthest below its share of the items;
    the largest goes to train, so that train is never empty. With ``at_least_one``, a split asked
    for that got nothing takes the smallest group of a train that has two or more."""
    groups = sorted(groups, key=len, reverse=True)  # stable: ties keep their shuffled order
    total = sum(map(len, groups))
    want = {k: f * total for k, f in fracs.items()}
    want = {"train": total - sum(want.values()), **want}
    got = dict.fromkeys(want, 0)
    dealt: dict[str, list[list[Item]]] = {k: [] for k in want}
    for i, members in enumerate(groups):
        name = "train" if i == 0 else max(want, key=lambda k: (want[k] - got[k], k == "train"))
        dealt[name].append(members)
        got[name] += len(members)
    if at_least_one:
        for name in sorted(fracs, key=lambda k: k != "test"):  # test first
            if fracs[name] > 0 and not dealt[name] and len(dealt["train"]) > 1:
                dealt[name].append(dealt["train"].pop())  # train's smallest
    return dealt


def _relkey(path: str | Path) -> str:
    """Match split-list entries to files: relative posix path without extension."""
    return Path(path).with_suffix("").as_posix()


def _from_split_lists(items: list[Item], root: Path, folder: Path):
    by_key = {
        _relkey(it.path.relative_to(root)) if it.path.is_relative_to(root) else None: it
        for it in items
    }
    out, missing, notes = {}, 0, []
    for name in SPLITS:
        f = folder / f"{name}.txt"
        if not f.is_file():
            if name == "train":
                raise DataError(f"{f}: split lists need at least train.txt")
            out[name] = []
            continue
        lines = [ln.strip() for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
        found = [by_key[_relkey(ln)] for ln in lines if _relkey(ln) in by_key]
        missing += len(lines) - len(found)
        out[name] = found
    listed = {id(it) for v in out.values() for it in v}
    unlisted = sum(id(it) not in listed for it in items)
    if missing:
        notes.append(f"{missing} files named in the split lists are not in the dataset")
    if unlisted:
        notes.append(f"{unlisted} files of the dataset are in no split list (left out)")
    return out["train"], out["valid"], out["test"], notes


def _check_groups(splits: Splits) -> None:
    seen: dict[str, str] = {}
    for name in SPLITS:
        for it in splits[name]:
            if it.group is None:
                continue
            if seen.setdefault(it.group, name) != name:
                raise DataError(
                    f"group {it.group!r} is in both {seen[it.group]} and {name}: "
                    "the split would leak a speaker/artist; fix the folds or split lists"
                )


def summary(labels: list[str], splits: Splits) -> str:
    """A short table: items per class and split."""
    counts = {n: Counter(it.label for it in splits[n]) for n in SPLITS}
    w = max(8, *(len(lb) for lb in labels))
    lines = [f"{'class':<{w}} " + " ".join(f"{n:>6}" for n in SPLITS)]
    for lb in labels:
        lines.append(f"{lb:<{w}} " + " ".join(f"{counts[n][lb]:>6}" for n in SPLITS))
    lines.append(f"{'total':<{w}} " + " ".join(f"{len(splits[n]):>6}" for n in SPLITS))
    return "\n".join(lines + splits.notes)
