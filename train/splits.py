"""Train/validation/test splits that never let a subject (or a duplicated image) straddle two parts.

Groups are formed first: every subject is a group; subjects sharing a byte-identical
image are merged (union-find); for data without subjects, each set of identical
files is a group. Groups are then assigned to parts, stratified by class, seeded.
"""

from __future__ import annotations

import hashlib
import random
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .datasets import Dataset, DatasetError, Sample, duplicate_groups

RULES = ("official", "subject", "random")


@dataclass
class Split:
    rule: str
    seed: int
    parts: dict[str, list[Sample]]
    notes: list[str] = field(default_factory=list)
    merged_subjects: list[list[str]] = field(default_factory=list)
    params: dict = field(default_factory=dict)

    def file_list_sha256(self, ds: Dataset) -> str:
        h = hashlib.sha256()
        for part in sorted(self.parts):
            for s in sorted(self.parts[part], key=lambda s: ds.relpath(s)):
                h.update(f"{part}\t{ds.relpath(s)}\t{s.label}\n".encode())
        return h.hexdigest()

    def describe(self, ds: Dataset) -> dict:
        return {
            "rule": self.rule,
            "seed": self.seed,
            **self.params,
            "file_list_sha256": self.file_list_sha256(ds),
            "counts": {p: dict(Counter(ds.labels[s.label] for s in ss)) for p, ss in self.parts.items()},
            "subjects": {p: len({s.subject for s in ss if s.subject}) for p, ss in self.parts.items()},
            "merged_subject_groups": self.merged_subjects,
            "notes": self.notes,
        }


class _UnionFind:
    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def group_samples(samples: list[Sample], use_subjects: bool) -> tuple[dict[str, list[Sample]], list[list[str]]]:
    """Group id -> samples. Subjects (or lone files) joined by byte-identical images share a group."""
    uf = _UnionFind()
    key = {}
    for s in samples:
        key[s.path] = f"subject:{s.subject}" if (use_subjects and s.subject) else f"file:{s.path}"
        uf.find(key[s.path])
    for dup in duplicate_groups([s.path for s in samples]):
        for other in dup[1:]:
            uf.union(key[dup[0]], key[other])
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[uf.find(key[s.path])].append(s)
    merged = []
    if use_subjects:
        members: dict[str, set[str]] = defaultdict(set)
        for s in samples:
            if s.subject:
                members[uf.find(key[s.path])].add(s.subject)
        merged = sorted(sorted(m) for m in members.values() if len(m) > 1)
    return dict(groups), merged


def _assign_groups(groups: dict[str, list[Sample]], fractions: dict[str, float], seed: int) -> dict[str, list[Sample]]:
    """Stratified greedy assignment: per majority class, shuffled groups fill each part's quota."""
    rng = random.Random(seed)
    by_class: dict[int, list[str]] = defaultdict(list)
    for gid, ss in groups.items():
        by_class[Counter(s.label for s in ss).most_common(1)[0][0]].append(gid)
    parts: dict[str, list[Sample]] = {p: [] for p in ["train", *fractions]}
    for cls in sorted(by_class):
        gids = sorted(by_class[cls])
        rng.shuffle(gids)
        total = sum(len(groups[g]) for g in gids)
        quotas = {p: f * total for p, f in fractions.items()}
        filled = {p: 0 for p in fractions}
        for gid in gids:
            size = len(groups[gid])
            # the held-out part furthest below its quota takes the group, if it has room left
            open_parts = [p for p in fractions if filled[p] < quotas[p] and filled[p] + size / 2 <= quotas[p]]
            if not open_parts:
                open_parts = [p for p in fractions if filled[p] == 0 and quotas[p] > 0]
            if open_parts:
                target = min(open_parts, key=lambda p: filled[p] / quotas[p])
                filled[target] += size
                parts[target].extend(groups[gid])
            else:
                parts["train"].extend(groups[gid])
    return parts


def make_split(ds: Dataset, rule: str | None = None, seed: int = 0, val_fraction: float = 0.2,
               test_fraction: float = 0.0, test_fold: str | None = None) -> Split:
    """Split a dataset. Default rule: 'official' for C-NMC, 'random' (stratified, groups of
    identical files kept together) for data without subjects.

    - official: train on training_data folds, validate on validation_data; `test_fold`
      moves one fold out of training into a test part.
    - subject: subject-level, stratified, seeded split of every labelled image.
    - random: image-level stratified split (duplicates still kept together).
    """
    labelled = [s for s in ds.samples if s.label is not None]
    if rule is None:
        rule = "official" if ds.layout == "cnmc" and ds.part("validation") else (
            "subject" if any(s.subject for s in labelled) else "random")
    if rule not in RULES:
        raise DatasetError(f"unknown split rule {rule!r}; one of {', '.join(RULES)}")
    if not (0.0 < val_fraction < 1.0) or not (0.0 <= test_fraction < 1.0) or val_fraction + test_fraction >= 1.0:
        raise DatasetError("need 0 < val_fraction, 0 <= test_fraction and val_fraction + test_fraction < 1")
    notes: list[str] = []
    merged: list[list[str]] = []
    if rule == "official":
        if ds.layout != "cnmc":
            raise DatasetError(f"{ds.root}: the 'official' split needs the C-NMC layout")
        train = [s for s in labelled if s.part == "train"]
        val = [s for s in labelled if s.part == "validation"]
        if not val:
            raise DatasetError(f"{ds.root}: no labelled validation_data for the official split; use --split subject")
        parts = {"train": train, "validation": val}
        if test_fold:
            folds = sorted({s.fold for s in train})
            if test_fold not in folds:
                raise DatasetError(f"{ds.root}: test fold {test_fold!r} not among {folds}")
            parts["train"] = [s for s in train if s.fold != test_fold]
            parts["test"] = [s for s in train if s.fold == test_fold]
        notes.append("official C-NMC split: training folds are subject-disjoint from validation_data")
        # The release's folds and validation subjects are disjoint, but identical images can still cross.
        train_hashes = _hashes(parts["train"])
        for name in [p for p in parts if p != "train"]:
            leaked = [s for s in parts[name] if _hash(s.path) in train_hashes]
            if leaked:
                notes.append(f"{len(leaked)} {name} image(s) are byte-identical to training images and were dropped")
                parts[name] = [s for s in parts[name] if _hash(s.path) not in train_hashes]
    else:
        use_subjects = rule == "subject"
        if use_subjects and not all(s.subject for s in labelled):
            raise DatasetError(f"{ds.root}: some images have no subject id; use --split random")
        groups, merged = group_samples(labelled, use_subjects)
        fractions = {"validation": val_fraction}
        if test_fraction > 0:
            fractions["test"] = test_fraction
        parts = _assign_groups(groups, fractions, seed)
        if not use_subjects:
            notes.append("no subject ids: stratified image-level split (byte-identical images kept together); "
                         "scores may be optimistic if one patient contributes many cells")
    for name, ss in parts.items():
        present = {s.label for s in ss}
        if len(present) < 2:
            missing = [ds.labels[k] for k in range(len(ds.labels)) if k not in present]
            raise DatasetError(
                f"{ds.root}: split '{rule}' leaves class {', '.join(missing)} empty in '{name}' "
                f"({len(ss)} images); add data or change the fractions/seed")
    params = {"val_fraction": val_fraction, "test_fraction": test_fraction, "test_fold": test_fold or ""}
    return Split(rule, seed, parts, notes, merged, params)


def split_from_card(card, data: str | None = None):
    """Re-create the split a model was trained and measured on, from its card.

    Returns (dataset, split, data_root). Warns when the files differ from the card's record.
    """
    from .datasets import read_dataset

    root = data or card.provenance.get("data", {}).get("root")
    if not root:
        raise DatasetError("no --data given and the model card records no data folder")
    if not Path(root).exists():
        raise DatasetError(f"{root}: data folder recorded in the model card is not here; pass --data")
    ds = read_dataset(root, positive=card.positive_label if card.positive_label != "all" else None)
    if ds.labels != card.labels:
        raise DatasetError(f"{root}: dataset labels {ds.labels} differ from the model's {card.labels}")
    sp = card.provenance.get("split", {})
    cfg = card.provenance.get("config", {})
    split = make_split(ds, sp.get("rule"), seed=int(sp.get("seed", 0)),
                       val_fraction=float(sp.get("val_fraction", cfg.get("val_fraction", 0.2))),
                       test_fraction=float(sp.get("test_fraction", cfg.get("test_fraction", 0.0))),
                       test_fold=sp.get("test_fold", cfg.get("test_fold")) or None)
    if sp.get("file_list_sha256") and split.file_list_sha256(ds) != sp["file_list_sha256"]:
        print("leukedge: warning: the data differ from the model's recorded split (file-list hash mismatch); "
              "measurements use the split as it is now", file=sys.stderr)
    return ds, split, str(Path(root).resolve())


_hash_cache: dict[str, str] = {}


def _hash(path: str) -> str:
    if path not in _hash_cache:
        from leukedge.edge.files import sha256_file

        _hash_cache[path] = sha256_file(path)
    return _hash_cache[path]


def _hashes(samples: list[Sample]) -> set[str]:
    return {_hash(s.path) for s in samples}


def subjects_of(samples: list[Sample]) -> set[str]:
    return {s.subject for s in samples if s.subject}


def relpaths(ds: Dataset, samples: list[Sample]) -> list[str]:
    return [str(Path(ds.relpath(s))) for s in samples]
