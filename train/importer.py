"""`leukedge import`: bring a model leukedge did not train into a leukedge run folder.

A model trained elsewhere (the public ALL-vs-HEM notebook: `Sequential([InceptionV3(..., pooling='max'),
BatchNormalization(), Dense(256), Dropout, Dense(2, softmax)])` on raw 0..255 pixels, nearest resize,
outputs [all, hem]) carries none of what leukedge's later steps rely on: which pixels it expects, the
order of its outputs, which class is positive, its decision rule. The user declares them; with labelled
data the import then *checks* the declaration against the model's behaviour, because a wrong scaling
or a reversed label order does not fail loudly — it yields a near-constant P(positive) (issue 11: a
copied card gave P(all) ~ 0.78 for every cell, silently).

Writes OUT/model.keras (a flat tf-keras copy: nested models flattened, outputs checked equal on probe
inputs) and its card OUT/model.keras.json (labels in the model's output order, the positive label by
name, the declared preprocessing, the decision threshold, provenance.imported); with --data also
OUT/split.json (so optimize and benchmark can run) and OUT/import-report.json/.md (the preprocessing
check and a validation report — on images the model may have been trained on: its training images
are unknown).

Scalings (input = (x - mean) / std on 0..255 RGB, per channel):
    raw            x               mean 0,     std 1       (the notebook: no rescaling)
    unit           x / 255         mean 0,     std 255     (tf.keras Rescaling(1/255))
    tf             x / 127.5 - 1   mean 127.5, std 127.5   (keras.applications.inception_v3.preprocess_input)
    inception-2015 (x - 128) / 128 mean 128,   std 128     (Google's 2015 InceptionV3 graph; leukedge's own)

Here: the declaration and the step (import_model). The preprocessing check and the errors are in
train/import_check.py, opening and conforming the source (Keras 3 rebuilt in tf-keras) in train/import_source.py,
import-report.md in leukedge.reports.train.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from leukedge import __version__
from leukedge.edge.card import ModelCard, card_path_for
from leukedge.edge.files import sha256_file, staged_dir, write_text_atomic
from leukedge.edge.preprocess import Preprocessing, normalize
from leukedge.options import option
from leukedge.reports.train import TRAINING_IMAGES_UNKNOWN, import_report_markdown

from .cells import measure_training_cells
from .import_check import (CHECK_SAMPLE, SCALINGS, ModelImportError, PreprocessingMismatch, check_preprocessing,
                           verify_card_behaviour)
from .import_source import conform, open_source, output_kind

IMPORT_REPORT = "import-report.json"


def scaling_of(name: str | None = None, mean: float | None = None, std: float | None = None) -> tuple[float, float, str]:
    """(mean, std, description) of a named scaling or of an explicit --mean/--std (exactly one of the two).

    Raises ModelImportError for an unknown name, both or neither given, or std <= 0."""
    if name and (mean is not None or std is not None):
        raise ModelImportError("give either --scale or --mean/--std, not both")
    if name:
        if name not in SCALINGS:
            raise ModelImportError(f"unknown --scale {name!r}; one of {', '.join(SCALINGS)} (or --mean M --std S)")
        return SCALINGS[name]
    if mean is None or std is None:
        raise ModelImportError("say how the model expects its pixels: --scale " + "|".join(SCALINGS)
                               + " or --mean M --std S (input = (x - M) / S on 0..255 RGB)")
    if not std > 0:
        raise ModelImportError(f"--std must be positive, got {std}")
    return float(mean), float(std), f"(x-{mean:g})/{std:g}"


def parse_threshold(value: str | float, n_labels: int = 2) -> tuple[float, str]:
    """(threshold on P(positive), rule text). 'argmax' with two classes is 0.5: the positive class wins
    the argmax exactly when P(positive) > 0.5 (a tie at exactly 0.5 goes to the positive class here)."""
    if isinstance(value, str) and value.strip().lower() == "argmax":
        if n_labels != 2:
            raise ModelImportError("--threshold argmax needs a two-class model")
        return 0.5, "argmax (0.5 on P(positive)), the model's own rule"
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ModelImportError(f"--threshold must be 'argmax' or a number in [0, 1], got {value!r}") from None
    if not 0.0 <= t <= 1.0:
        raise ModelImportError(f"--threshold {t} outside [0, 1]")
    return t, f"declared at import ({t:g} on P(positive))"


# -- the step ---------------------------------------------------------------------------------------------


@dataclass
class ImportOptions:
    """Options of `leukedge import` (see import_model)."""

    labels: tuple[str, ...] = option((), "The model's labels in OUTPUT order, comma-separated (e.g. all,hem).")
    positive: str = option("", "The positive label, by name (e.g. all).")
    size: int = option(0, "Input size in px (0: the model's own fixed input size).")
    resize: str = option("bilinear", "Resize filter the model was trained with (Keras's image loader: nearest).")
    scale: str = option("", "Pixel scaling: raw = x (0..255), unit = x/255, tf = x/127.5-1 (Keras InceptionV3 "
                            "preprocess_input), inception-2015 = (x-128)/128. Or give --mean/--std.")
    mean: float | None = option(None, "Input = (x - MEAN) / STD on 0..255 RGB (instead of --scale).")
    std: float | None = option(None, "See --mean.")
    # --decision-rule: `--threshold` means a P cut-off everywhere else (edge-classify); kept here as an alias
    threshold: str = option("argmax", "Decision rule: argmax (0.5 on P(positive) for two classes) or a number in [0, 1].",
                            flags=("--decision-rule", "--threshold"))
    data: str = option("", "Labelled dataset: checks the declared preprocessing, writes split.json and a validation report.")
    sample: int = option(CHECK_SAMPLE, "Labelled images scored per candidate preprocessing in the check.")
    seed: int = option(0, "Seed of the check's sample and the split.")
    name: str = option("", "The model's name in its card (default: imported-<file stem>).")

    RANGES = {"size": (0, 4096), "sample": (10, 100000)}
    CHOICES = {"resize": ("nearest", "bilinear", "bicubic", "lanczos", "area")}  # --scale: checked by scaling_of


@dataclass
class ImportPlan:
    """One `leukedge import` as it goes through its stages (see import_model): the declaration, the opened and
    conformed model and, with labelled data, the dataset, its split and the preprocessing check's result."""

    src: Path
    labels: list[str]  # in the model's output order
    positive: int  # index of the positive label in `labels`
    prep: Preprocessing
    threshold: float  # on P(positive)
    rule: str  # the decision rule in words
    declared: dict  # what the user declared, for provenance.imported
    model: object  # the source model as opened (tf-keras)
    flavour: dict  # open_source's {"flavour", "version", "opens_with", "tensorflow_version"}
    kind: str  # output_kind: "probabilities" | "logits"
    flat: object  # the conformed flat tf-keras model that is written
    steps: list[str]  # what conform did
    ds: object = None  # train.datasets.Dataset with --data
    split: object = None  # train.splits.Split with --data
    check: dict | None = None  # check_preprocessing's dict with --data


def _plan(src: Path, opts: ImportOptions) -> ImportPlan:
    """Validate the declaration (labels, positive, scaling, threshold), open the source and conform it.
    Raises ModelImportError in one line."""
    labels = [x.strip() for x in opts.labels if x.strip()]
    if len(labels) != 2 or len(set(labels)) != 2:
        raise ModelImportError(f"--labels must name two distinct classes in the model's output order, got {labels}")
    if opts.positive not in labels:
        raise ModelImportError(f"--positive {opts.positive!r} is not one of --labels {labels}")
    mean, std, scale_text = scaling_of(opts.scale or None, opts.mean, opts.std)
    threshold, rule = parse_threshold(opts.threshold)
    model, flavour = open_source(src)
    size = opts.size or (model.input_shape[1] if model.input_shape[1] == model.input_shape[2] else 0)
    if not size:
        raise ModelImportError(f"{src}: the model takes any input size; say which with --size PX")
    try:
        prep = Preprocessing(size=int(size), resize=opts.resize, mean=(mean,) * 3, std=(std,) * 3)
    except ValueError as exc:
        raise ModelImportError(f"invalid preprocessing: {exc}") from None
    if model.output_shape[-1] != len(labels):
        raise ModelImportError(f"{src}: the model has {model.output_shape[-1]} outputs but --labels names {len(labels)}")
    kind = output_kind(model)
    flat, steps = conform(model, prep.size)
    declared = {"labels": labels, "positive": opts.positive, "size": prep.size, "resize": prep.resize,
                "scaling": scale_text, "mean": mean, "std": std, "threshold": opts.threshold}
    return ImportPlan(src, labels, labels.index(opts.positive), prep, threshold, rule, declared, model, flavour,
                      kind, flat, steps)


def _check_on_data(plan: ImportPlan, opts: ImportOptions) -> None:
    """With opts.data: read the dataset, run the preprocessing check on a stratified sample (opts.sample,
    opts.seed) and make the split (plan.ds, plan.check, plan.split). Raises ModelImportError when the dataset's
    labels differ, PreprocessingMismatch, DatasetError."""
    from .datasets import read_dataset
    from .splits import make_split, subsample

    labels = plan.labels
    ds = read_dataset(opts.data, positive=opts.positive)
    if sorted(ds.labels) != sorted(labels):
        raise ModelImportError(f"{opts.data}: dataset labels {ds.labels} differ from --labels {labels}")
    chosen = [SimpleNamespace(path=s.path, label=labels.index(ds.labels[s.label]))  # model's label order
              for s in subsample(ds.labelled, opts.sample, opts.seed)]
    plan.check = check_preprocessing(plan.flat, chosen, plan.prep, labels, plan.positive, plan.threshold, plan.kind,
                                     opts.scale or "")
    plan.ds, plan.split = ds, make_split(ds, seed=opts.seed)


def _imported(plan: ImportPlan, source_sha: str) -> dict:
    """The card's provenance.imported: the source file, its Keras flavour, the declaration, whether the
    preprocessing was verified (and the check's summary), the surgery steps."""
    check, src = plan.check, plan.src
    return {
        "source": {"file": src.name, "path": str(src.resolve()), "sha256": source_sha},
        "keras": plan.flavour,
        "training_images": "unknown",
        "declared": plan.declared,
        "preprocessing_verified": bool(check and check["verified"]),
        "preprocessing_check": ({k: check[k] for k in ("images", "declared", "best", "rule", "reason")} if check else
                                "not run (no --data): optimize and benchmark refuse this model until it is "
                                "re-imported with labelled data"),
        "surgery": plan.steps,
    }


def _card(plan: ImportPlan, opts: ImportOptions, imported: dict) -> ModelCard:
    """model.keras's card: labels in output order, positive label, declared preprocessing, threshold, output
    kind, the training cells' look (with data) and provenance (versions, imported, data and split)."""
    import tf_keras

    from leukedge.tfcompat import tensorflow

    tf = tensorflow()
    ds = plan.ds
    return ModelCard(labels=plan.labels, positive_label=opts.positive, preprocessing=plan.prep,
                     model_file="model.keras", model_format="keras", threshold=plan.threshold,
                     name=opts.name or f"imported-{plan.src.stem}", variant="float", output=plan.kind,
                     cells=(measure_training_cells([s.path for s in ds.labelled], root=ds.root, step="import",
                                                   seed=opts.seed) if ds is not None else None),
                     provenance={"leukedge_version": __version__, "imported": imported,
                                 "keras": {"flavour": "tf-keras", "version": getattr(tf_keras, "__version__", ""),
                                           "opens_with": "tf-keras 2 with TF_USE_LEGACY_KERAS=1 (not Keras 3)"},
                                 "tensorflow_version": tf.__version__, "threshold_rule": plan.rule,
                                 **({"data": {"root": str(Path(ds.root).resolve()), "layout": ds.layout},
                                     "split": plan.split.describe(ds)} if ds is not None else {})})


def _validate(plan: ImportPlan, stage: Path) -> dict:
    """Write split.json into `stage` and score the flat model on the split's validation part at the declared
    threshold; returns the binary report with "images" and the training-images-unknown note."""
    from leukedge.evaluation import KerasScorer, evaluate, load_part

    from .splits import SPLIT_FILE, write_split

    labels, positive = plan.labels, plan.positive
    write_split(plan.split, plan.ds, stage / SPLIT_FILE)
    val = load_part(plan.split.parts["validation"], plan.prep, "validation").in_label_order(plan.ds.labels, labels)
    ev = evaluate(KerasScorer(plan.flat, plan.prep, positive, output=plan.kind), val, plan.threshold, labels, positive)
    return {**ev.report, "images": int(len(val.labels)), "note": TRAINING_IMAGES_UNKNOWN}


def _write(plan: ImportPlan, card: ModelCard, out: str | Path, source: dict) -> dict | None:
    """Everything into `out`, all or nothing: model.keras (its outputs checked equal to the source's), with data
    split.json and the validation report, the card, import-report.json/.md. Returns the validation report or None."""
    validation = None
    with staged_dir(out) as stage:
        path = stage / "model.keras"
        plan.flat.save(path)
        _check_copy(plan.model, path, plan.prep)
        if plan.split is not None:
            validation = _validate(plan, stage)
            card.metrics = {"validation": validation}
        card.bind(path)
        card.save(card_path_for(path))
        if plan.check is not None:
            report = {"schema": "leukedge.import-report", "schema_version": 1, "source": source,
                      "check": plan.check, "validation": validation, "card": card_path_for(path).name}
            write_text_atomic(stage / IMPORT_REPORT, json.dumps(report, indent=2) + "\n")
            write_text_atomic(stage / "import-report.md", import_report_markdown(report, plan.labels, plan.positive))
    return validation


def import_model(source: str | Path, out: str | Path, opts: ImportOptions) -> dict:
    """Import a Keras model trained elsewhere into a leukedge run folder: the `leukedge import` step.

    source: a tf-keras 2 `.keras` or an `.h5` file. out: the folder for model.keras, its card and, with
    opts.data, split.json and import-report.json/.md (written all or nothing).
    opts.labels: the model's labels in OUTPUT order (index 0 first); opts.positive: the positive label
    by name; opts.size: input size in px; opts.resize: resize filter (nearest for Keras's image loader);
    opts.scale or opts.mean/std: the pixel scaling (SCALINGS); opts.threshold: 'argmax' or a number.
    Without data the card records preprocessing_verified = false, and optimize/benchmark refuse it.
    Returns {"out", "card", "check" (or None), "validation" (or None)}. Raises ModelImportError (or
    PreprocessingMismatch, DatasetError) in one line.

    Stages (an ImportPlan carries the state): plan (declaration, open, conform), the check on data, the card,
    write.
    """
    src = Path(source)
    plan = _plan(src, opts)
    source_sha = sha256_file(src)
    if opts.data:
        _check_on_data(plan, opts)
    imported = _imported(plan, source_sha)
    card = _card(plan, opts, imported)
    validation = _write(plan, card, out, imported["source"])
    check = plan.check
    print(f"leukedge import: wrote {Path(out)}/model.keras and its card from {src.name} "
          f"({plan.flavour['flavour']}; preprocessing {'verified on ' + str(check['images']) + ' images' if check and check['verified'] else 'UNVERIFIED'})",
          file=sys.stderr)
    return {"out": str(out), "card": card.to_dict(), "check": check, "validation": validation}


def _check_copy(source_model, saved: Path, prep: Preprocessing, atol: float = 1e-5) -> None:
    """The saved flat copy gives the source's outputs on probe inputs (seeded uniform 0..255 pixels)."""
    from leukedge.tfcompat import load_keras_model

    copy = load_keras_model(saved)
    rng = np.random.default_rng(0)
    x = normalize(rng.integers(0, 256, (4, prep.size, prep.size, 3), dtype=np.uint8), prep)
    a = source_model.predict(x, verbose=0)
    b = copy.predict(x, verbose=0)
    diff = float(np.max(np.abs(a - b)))
    if not diff <= atol:
        raise ModelImportError(f"{saved.name}: the flat copy's outputs differ from the source's by {diff:.2e} "
                               f"on probe inputs (tolerance {atol}); not written")


def require_verified(card: ModelCard, model_path: str | Path) -> None:
    """Refuse (ModelImportError, one line with the fix) an imported model whose preprocessing was never
    checked on labelled data. Models leukedge trained, and verified imports, pass."""
    imported = (card.provenance or {}).get("imported")
    if imported is not None and not imported.get("preprocessing_verified"):
        src = (imported.get("source") or {}).get("file", "MODEL")
        raise ModelImportError(f"{model_path}: imported without labelled data, so its preprocessing is unverified — "
                               f"re-run `leukedge import {src} --out DIR ... --data DATA` to check it")


__all__ = ["IMPORT_REPORT", "SCALINGS", "ImportOptions", "ImportPlan", "ModelImportError", "PreprocessingMismatch",
           "check_preprocessing", "import_model", "parse_threshold", "require_verified", "scaling_of",
           "verify_card_behaviour"]
