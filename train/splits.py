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

    val_fraction, test_fraction: shares of the labelled images (by group) in validation and test.
    Byte-identical images are found by size then SHA-256 (this is the one step that hashes images;
    later steps read the result from split.json). Returns a Split whose parts are lists of Samples.
    Raises DatasetError for an unknown rule, bad fractions, or a part left without one class.
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


SPLIT_FILE = "split.json"
SPLIT_SCHEMA = "leukedge.split"
SPLIT_SCHEMA_VERSION = 1


class DataDriftError(DatasetError):
    """The dataset on disk is not the one a run's split.json recorded."""


def subsample(samples: list[Sample], n: int, seed: int) -> list[Sample]:
    """A stratified, seeded subsample of n samples (quick runs, calibration sets); all of them if n is 0 or >= len."""
    if not n or n >= len(samples):
        return samples
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.array([s.label for s in samples])
    keep = []
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        take = max(1, round(n * len(idx) / len(samples)))
        keep.extend(rng.choice(idx, size=min(take, len(idx)), replace=False).tolist())
    return [samples[i] for i in sorted(keep)]


def split_record(split: Split, ds: Dataset) -> dict:
    """The JSON document train (and tune) write as split.json: rule, seed, parameters, and per part
    the relative paths, label indices and subjects; `excluded` lists labelled files deliberately left
    out (e.g. validation images byte-identical to training ones) so the record accounts for every
    labelled file of the dataset."""
    used = {s.path for ss in split.parts.values() for s in ss}
    excluded = [[ds.relpath(s), s.label, "excluded by the split rule"] for s in ds.labelled if s.path not in used]
    return {
        "schema": SPLIT_SCHEMA, "schema_version": SPLIT_SCHEMA_VERSION,
        "data": {"root": str(Path(ds.root).resolve()), "layout": ds.layout, "labels": list(ds.labels),
                 "positive_label": ds.positive_label},
        **{k: v for k, v in split.describe(ds).items() if k not in ("counts", "subjects")},
        "parts": {part: [[ds.relpath(s), s.label, s.subject, s.fold] for s in ss] for part, ss in split.parts.items()},
        "excluded": excluded,
    }


def write_split(split: Split, ds: Dataset, path: str | Path) -> Path:
    """Write split.json atomically (see split_record); returns the path."""
    import json

    from leukedge.edge.files import write_text_atomic

    write_text_atomic(path, json.dumps(split_record(split, ds), indent=1) + "\n")
    return Path(path)


def read_split(path: str | Path, data: str | Path | None = None, allow_drift: bool = False,
               labels: list[str] | None = None) -> tuple[Dataset, Split, str]:
    """The split a run recorded, re-joined to the dataset on disk; no image is read or hashed.

    path: a split.json (or a folder holding one). data: the dataset folder [default: the recorded
    root]. labels: the model's labels in output order, checked against the record (by name).
    The dataset is listed (file names only) and compared with the record: a recorded file that is
    gone, a labelled file the record does not know, or a changed label raises DataDriftError naming
    what changed — unless allow_drift, which warns and keeps the recorded files still present.
    A file whose content changed under the same name is NOT noticed (nothing is hashed).
    Returns (dataset, split, resolved data root).
    """
    import json

    from .datasets import read_dataset

    p = Path(path)
    if p.is_dir():
        p = p / SPLIT_FILE
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{p}: no split.json (the split a model was trained on); train writes it beside "
                           "model.keras — pass --split-file, or re-train") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{p}: unreadable split file: {exc}") from None
    if rec.get("schema") != SPLIT_SCHEMA:
        raise DatasetError(f"{p}: not a leukedge split file")
    if rec.get("schema_version", 0) > SPLIT_SCHEMA_VERSION:
        raise DatasetError(f"{p}: split schema {rec.get('schema_version')} is newer than this leukedge understands")
    recorded = rec["data"]
    root = Path(data or recorded["root"])
    if not root.exists():
        raise DatasetError(f"{root}: data folder recorded in {p.name} is not here; pass --data")
    if labels is not None and list(labels) != list(recorded["labels"]):
        if sorted(labels) != sorted(recorded["labels"]):
            raise DatasetError(f"{p}: split labels {recorded['labels']} differ from the model's {list(labels)}")
    positive = recorded["positive_label"]
    ds = read_dataset(root, positive=positive if recorded["layout"] != "cnmc" else None)
    if sorted(ds.labels) != sorted(recorded["labels"]):
        raise DatasetError(f"{root}: dataset labels {ds.labels} differ from the recorded {recorded['labels']}")
    # label indices in the record follow the recorded label order; map them by name to this dataset's
    remap = {i: ds.labels.index(name) for i, name in enumerate(recorded["labels"])}
    now = {ds.relpath(s): s for s in ds.labelled}
    then: dict[str, int] = {}
    for rows in rec["parts"].values():
        then.update({r[0]: remap[r[1]] for r in rows})
    then.update({r[0]: remap[r[1]] for r in rec.get("excluded", [])})
    missing = sorted(set(then) - set(now))
    added = sorted(set(now) - set(then))
    relabelled = sorted(r for r in set(then) & set(now) if now[r].label != then[r])
    if missing or added or relabelled:
        what = "; ".join(f"{len(v)} {k} (e.g. {v[0]})" for k, v in
                         (("missing", missing), ("new", added), ("relabelled", relabelled)) if v)
        if not allow_drift:
            raise DataDriftError(f"{root}: the data differ from the split recorded in {p}: {what}; "
                                 "re-train, or pass --allow-data-drift to measure on the recorded files still present")
        print(f"leukedge: warning: data drift ({what}); measuring on the recorded files still present",
              file=sys.stderr)
    parts = {}
    for part, rows in rec["parts"].items():
        parts[part] = [Sample(str(root / r[0]), remap[r[1]], r[2], r[3] if len(r) > 3 else None,
                              now[r[0]].part if r[0] in now else "train")
                       for r in rows if r[0] in now]
    params = {k: rec[k] for k in ("val_fraction", "test_fraction", "test_fold") if k in rec}
    split = Split(rec["rule"], int(rec.get("seed", 0)), parts, list(rec.get("notes", [])),
                  [list(g) for g in rec.get("merged_subject_groups", [])], params)
    return ds, split, str(root.resolve())


_hash_cache: dict[str, str] = {}


def _hash(path: str) -> str:
    if path not in _hash_cache:
        from leukedge.edge.files import sha256_file

        _hash_cache[path] = sha256_file(path)
    return _hash_cache[path]


def _hashes(samples: list[Sample]) -> set[str]:
    return {_hash(s.path) for s in samples}
