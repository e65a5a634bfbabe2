"""Reading labelled cell-image datasets: the C-NMC release in its two packagings, and plain class folders.

Every sample knows its path, label, subject (C-NMC) and fold. C-NMC, as on Kaggle ("kaggle"):

    C-NMC_Leukemia/training_data/fold_<k>/{all,hem}/UID_<subject>_<image>_<cell>_<all|hem>.bmp
    C-NMC_Leukemia/validation_data/C-NMC_test_prelim_phase_data/<n>.bmp
    C-NMC_Leukemia/validation_data/C-NMC_test_prelim_phase_data_labels.csv  (Patient_ID,new_names,labels)
    C-NMC_Leukemia/testing_data/C-NMC_test_final_phase_data/<n>.bmp        (unlabelled: predict only)

and as TCIA's package "PKG - C-NMC 2019" ("tcia"), the recommended download:

    PKG - C-NMC 2019/C-NMC_training_data/fold_<k>/{all,hem}/...
    PKG - C-NMC 2019/C-NMC_test_prelim_phase_data/<n>.bmp and its *labels*.csv inside
    PKG - C-NMC 2019/C-NMC_test_final_phase_data/<n>.bmp                   (unlabelled: never trained on)

Both read into the same parts: train (folds), validation (preliminary test set, labelled by its
CSV) and test (final test set, unlabelled). Temp and OS-metadata files (macOS `._*` AppleDouble
sidecars, Thumbs.db, ...: edge.files.is_ignored_name) are never images or label files. Images
under the root that the layout does not use are reported in `Dataset.problems`, per folder.
"""

from __future__ import annotations

import csv
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from leukedge.edge.errors import LeukedgeError
from leukedge.edge.summary import cnmc_subject
from leukedge.edge.files import is_ignored_name, sha256_file
from leukedge.edge.preprocess import is_image_name

from .crop import REVIEWED, UNLABELLED, unreviewed_note

CNMC_LABELS = ["hem", "all"]  # output order: index 1 = ALL, the positive class
KNOWN_POSITIVES = ("all", "ig", "blast", "positive", "leukemic")
TCIA_DIRS = {"train": "C-NMC_training_data", "validation": "C-NMC_test_prelim_phase_data",
             "test": "C-NMC_test_final_phase_data"}
TCIA_PACKAGE = "PKG - C-NMC 2019"
# Folder names that name a split or a release part, not a class (compared lower-case, as words).
_SPLIT_WORDS = re.compile(r"(^|[^a-z])(train|training|test|testing|val|valid|validation|dev|holdout|prelim|final|"
                          r"fold|folds|split|phase|data|dataset|c-nmc)([^a-z]|$)")


class DatasetError(LeukedgeError, ValueError):
    """A dataset that cannot be used as given; the message names the path and the problem."""


@dataclass(frozen=True)
class Sample:
    path: str
    label: int | None  # index into Dataset.labels; None when unlabelled
    subject: str | None = None
    fold: str | None = None
    part: str = "train"  # C-NMC part: train | validation | test


@dataclass
class Dataset:
    root: str
    layout: str  # "cnmc" | "folders"
    labels: list[str]
    positive_label: str
    samples: list[Sample]
    problems: list[tuple[str, str]] = field(default_factory=list)
    package: str = ""  # C-NMC: "kaggle" or "tcia"; "" for class folders

    @property
    def labelled(self) -> list[Sample]:
        return [s for s in self.samples if s.label is not None]

    def part(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.part == name]

    def relpath(self, sample: Sample) -> str:
        try:
            return str(Path(sample.path).relative_to(self.root))
        except ValueError:
            return sample.path


def subject_from_name(name: str) -> str | None:
    """C-NMC subject id from a file name: 'UID_h3_...' and 'UID_H3_...' are the same subject 'H3'
    (edge.summary.cnmc_subject: the device's per-subject summary uses the same rule)."""
    return cnmc_subject(name)


def find_cnmc_root(path: Path) -> Path | None:
    """The Kaggle-layout C-NMC root at or just below `path` (holding training_data/ or validation_data/)."""
    for cand in (path, path / "C-NMC_Leukemia"):
        if (cand / "training_data").is_dir() or (cand / "validation_data").is_dir():
            return cand
    return None


def find_tcia_root(path: Path) -> Path | None:
    """The TCIA-package C-NMC root at `path`, in `path/PKG - C-NMC 2019`, or in its only subfolder."""
    cands = [path, path / TCIA_PACKAGE]
    try:
        subs = [p for p in path.iterdir() if p.is_dir() and not is_ignored_name(p.name)]
    except OSError:
        subs = []
    if len(subs) == 1:
        cands.append(subs[0])
    for cand in cands:
        if any((cand / d).is_dir() for d in TCIA_DIRS.values()):
            return cand
    return None


def is_wanted_image(path: Path) -> bool:
    """An image file name (edge.preprocess.IMAGE_EXTENSIONS) that is not a temp/OS-metadata file."""
    return is_image_name(path) and not is_ignored_name(path.name)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_wanted_image(p) and p.is_file())


def _labels_csvs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*labels*.csv") if not is_ignored_name(p.name) and p.is_file())


def read_cnmc(root: Path) -> Dataset:
    """Read the Kaggle layout of C-NMC (module docstring). Raises DatasetError for a malformed labels CSV."""
    return _read_cnmc_parts(root, root / "training_data", root / "validation_data", root / "testing_data", "kaggle")


def read_cnmc_tcia(root: Path) -> Dataset:
    """Read TCIA's "PKG - C-NMC 2019" package (module docstring): same parts as the Kaggle layout."""
    prelim = root / TCIA_DIRS["validation"]
    final = root / TCIA_DIRS["test"]
    return _read_cnmc_parts(root, root / TCIA_DIRS["train"], prelim, None, "tcia", prelim_images=[prelim],
                            final_dirs=[final] if final.is_dir() else [])


def _read_cnmc_parts(root: Path, train_dir: Path, val_dir: Path, test_dir: Path | None, package: str,
                     prelim_images: list[Path] | None = None, final_dirs: list[Path] | None = None) -> Dataset:
    samples: list[Sample] = []
    problems: list[tuple[str, str]] = []
    if train_dir.is_dir():
        for fold in sorted(p for p in train_dir.iterdir() if p.is_dir() and p.name.startswith("fold_")):
            for label_idx, cls in enumerate(CNMC_LABELS):
                cls_dir = fold / cls
                if not cls_dir.is_dir():
                    continue
                for img in _images(cls_dir):
                    subject = subject_from_name(img.name)
                    if subject is None:
                        problems.append((str(img), "name does not follow UID_<subject>_..., subject unknown"))
                    samples.append(Sample(str(img), label_idx, subject, fold.name, "train"))
    if val_dir.is_dir():
        csvs = _labels_csvs(val_dir)
        img_dirs = prelim_images if prelim_images is not None else [p for p in val_dir.iterdir() if p.is_dir()]
        files = {p.name: p for d in img_dirs for p in _images(d)}
        if files and not csvs:
            problems.append((str(val_dir), "validation images without a labels CSV: not used"))
        for csv_path in csvs:
            with open(csv_path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                need = {"Patient_ID", "new_names", "labels"}
                if not need <= set(reader.fieldnames or []):
                    raise DatasetError(f"{csv_path}: expected columns {sorted(need)}, got {reader.fieldnames}")
                seen = set()
                for row_no, row in enumerate(reader, start=2):
                    name = (row["new_names"] or "").strip()
                    if name not in files:
                        problems.append((str(csv_path), f"row {row_no}: {name!r} listed but no such file"))
                        continue
                    try:
                        label = int(row["labels"])
                        if label not in (0, 1):
                            raise ValueError
                    except ValueError:
                        problems.append((str(csv_path), f"row {row_no}: label {row['labels']!r} is not 0 or 1"))
                        continue
                    seen.add(name)
                    samples.append(Sample(str(files[name]), label, subject_from_name(row["Patient_ID"]),
                                          "validation", "validation"))
            for name in sorted(set(files) - seen):
                problems.append((str(files[name]), "file has no row in the labels CSV: not used"))
    if final_dirs is None:
        final_dirs = sorted(p for p in test_dir.iterdir() if p.is_dir()) if test_dir and test_dir.is_dir() else []
    for d in final_dirs:
        for img in _images(d):
            samples.append(Sample(str(img), None, None, None, "test"))
    ds = Dataset(str(root), "cnmc", list(CNMC_LABELS), "all", samples, problems, package=package)
    report_unused(ds)
    return ds


def looks_like_split(name: str) -> bool:
    """True for folder names that name a dataset split or release part (train, test_data, fold_0, ...), not a class."""
    return bool(_SPLIT_WORDS.search(name.lower().replace("_", " ")))


def report_unused(ds: Dataset, min_images: int = 1) -> dict[str, int]:
    """Add a problem for each folder under the root holding images the dataset does not use.

    Counts wanted images (not `._*` sidecars etc.) per folder relative to the root, minus the
    samples and files already named in problems; returns {folder: count} for those with at
    least `min_images`. Catches a tree read with the wrong layout (e.g. whole training folds ignored).
    """
    root = Path(ds.root)
    used = {s.path for s in ds.samples} | {p for p, _ in ds.problems}
    unused: Counter = Counter()
    for p in root.rglob("*"):
        if is_wanted_image(p) and str(p) not in used and p.is_file():
            unused[str(p.parent.relative_to(root)) or "."] += 1
    total = len(ds.samples) + sum(unused.values())
    out = {d: n for d, n in sorted(unused.items()) if n >= min_images}
    for d, n in out.items():
        share = f"{100.0 * n / total:.0f} % of the images under the root" if total else ""
        ds.problems.append((str(root / d), f"{n} images here are not used by the {ds.layout} layout ({share})"))
    return out


def read_class_folders(root: Path, positive: str | None = None) -> Dataset:
    """root/<class>/<images> with exactly two classes. Raises DatasetError (one line) when the
    two folders look like splits (train/test, ...) rather than classes, or the classes are unclear."""
    classes = sorted(p.name for p in root.iterdir()
                     if p.is_dir() and not p.name.startswith(".") and not is_ignored_name(p.name))
    # `leukedge data crop` leaves the cells nobody labelled in unlabelled/: not a class (report_unused counts them)
    classes = [c for c in classes if c.lower() != UNLABELLED and _images(root / c)]
    splitty = [c for c in classes if looks_like_split(c)]
    if len(classes) >= 2 and splitty:
        raise DatasetError(
            f"{root}: folders {', '.join(repr(c) for c in splitty)} look like dataset splits or release parts, "
            "not classes; point at a folder whose subfolders are the classes (e.g. .../fold_0 with all/ and hem/), "
            "or at the C-NMC release root")
    if len(classes) < 2:
        raise DatasetError(
            f"{root}: needs two class folders with images (root/<class>/<images>), found {classes or 'none'}")
    if len(classes) > 2:
        raise DatasetError(f"{root}: leukedge screens two classes; found {len(classes)} class folders: {classes}")
    if positive is None:
        known = [c for c in classes if c.lower() in KNOWN_POSITIVES]
        if len(known) != 1:
            raise DatasetError(f"{root}: which class is positive? pass --positive ({' or '.join(classes)})")
        positive = known[0]
    if positive not in classes:
        raise DatasetError(f"{root}: positive class {positive!r} is not one of {classes}")
    labels = [c for c in classes if c != positive] + [positive]
    samples = []
    for idx, cls in enumerate(labels):
        for img in _images(root / cls):
            samples.append(Sample(str(img), idx, None, None, "train"))
    ds = Dataset(str(root), "folders", labels, positive, samples, [])
    report_unused(ds)
    note = unreviewed_note(root, [s.path for s in samples])  # a `data crop` dataset sorted by a model
    if note:
        ds.problems.append((str(root / REVIEWED), note))
    return ds


def read_dataset(path: str | Path, positive: str | None = None) -> Dataset:
    """Read a dataset folder: C-NMC (Kaggle layout, then TCIA package), else two class folders.

    positive: the positive class of class folders (C-NMC's is always 'all'). Raises DatasetError
    (one line naming the folder) when the layout is not recognised or a class has no images.
    """
    root = Path(path)
    if not root.exists():
        raise DatasetError(f"{root}: no such folder")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    cnmc = find_cnmc_root(root)
    tcia = None if cnmc else find_tcia_root(root)
    if cnmc:
        ds = read_cnmc(cnmc)
    elif tcia:
        ds = read_cnmc_tcia(tcia)
    else:
        ds = read_class_folders(root, positive)
    if (cnmc or tcia) and positive not in (None, "all"):
        raise DatasetError(f"{root}: a C-NMC dataset's positive class is 'all', not {positive!r}")
    if not ds.labelled:
        raise DatasetError(f"{root}: no labelled images found")
    counts = Counter(s.label for s in ds.labelled)
    if len(counts) < 2:
        only = ds.labels[next(iter(counts))]
        raise DatasetError(f"{root}: only one class has images ({only!r}); a screening model needs both")
    return ds


def duplicate_groups(paths: list[str]) -> list[list[str]]:
    """Groups (2+) of byte-identical files, found by size then SHA-256."""
    by_size: dict[int, list[str]] = defaultdict(list)
    for p in paths:
        by_size[Path(p).stat().st_size].append(p)
    groups = []
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        by_hash: dict[str, list[str]] = defaultdict(list)
        for p in same_size:
            by_hash[sha256_file(p)].append(p)
        groups.extend(sorted(g) for g in by_hash.values() if len(g) > 1)
    return sorted(groups)


def inspect(ds: Dataset, image_stats: bool = True, quality_size: int | None = 224) -> dict:
    """Counts per class, part, fold and subject; image sizes and modes; byte-identical duplicates.

    With quality_size (the model's input side), every image is also decoded by the device's
    decoder and checked by `leukedge.edge.quality` against the dataset's own statistics:
    report["quality"] holds counts per reason and the first few paths (see quality.dataset_report);
    files the decoder refuses join report["unreadable"].
    """
    from PIL import Image

    labelled = ds.labelled
    per_class = Counter(ds.labels[s.label] for s in labelled)
    per_part = Counter(s.part for s in ds.samples)
    per_fold: dict[str, Counter] = defaultdict(Counter)
    subjects: dict[str, Counter] = defaultdict(Counter)
    for s in labelled:
        per_fold[s.fold or "-"][ds.labels[s.label]] += 1
        if s.subject:
            subjects[s.subject][ds.labels[s.label]] += 1
    sizes: Counter = Counter()
    modes: Counter = Counter()
    unreadable = []
    if image_stats:
        for s in ds.samples:
            try:
                with Image.open(s.path) as im:
                    sizes[f"{im.width}x{im.height}"] += 1
                    modes[im.mode] += 1
            except Exception as exc:  # noqa: BLE001 - report every unreadable file, keep going
                unreadable.append((s.path, str(exc)))
    quality = None
    if image_stats and quality_size:
        from leukedge.edge.quality import dataset_report

        quality = dataset_report([s.path for s in ds.samples], size=quality_size)
        listed = {str(p) for p, _ in unreadable}
        unreadable += [(p, problem) for p, problem in quality["unreadable"] if p not in listed]
    dups = duplicate_groups([s.path for s in ds.samples])
    cross = []
    by_path = {s.path: s for s in ds.samples}
    for g in dups:
        subs = sorted({by_path[p].subject for p in g if by_path[p].subject})
        if len(subs) > 1:
            cross.append({"subjects": subs, "files": [ds.relpath(by_path[p]) for p in g]})
    return {
        "root": ds.root,
        "layout": ds.layout,
        "labels": ds.labels,
        "positive_label": ds.positive_label,
        "images": len(ds.samples),
        "labelled": len(labelled),
        "per_class": dict(per_class),
        "per_part": dict(per_part),
        "per_fold": {k: dict(v) for k, v in sorted(per_fold.items())},
        "subjects": len(subjects),
        "subjects_per_class": dict(Counter(max(c, key=c.get) for c in subjects.values())),
        "per_subject": {k: dict(v) for k, v in sorted(subjects.items())},
        "sizes": dict(sizes.most_common()),
        "modes": dict(modes.most_common()),
        "unreadable": unreadable,
        "quality": quality,
        "duplicate_groups": len(dups),
        "duplicate_files": sum(len(g) for g in dups),
        "duplicates_across_subjects": cross,
        "problems": ds.problems,
    }
