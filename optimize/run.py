"""`leukedge optimize`: every variant written with its card, measured against its float parent, gated.

What to build comes from the variant registry (optimize.variants); what data to use comes from
the run folder (split.json beside model.keras); how to measure is the one evaluation
(leukedge.evaluation). Each variant is scored through the device's own classifier on the
validation part, at a threshold re-chosen to keep the parent's sensitivity (or the parent's own
with --keep-threshold), and compared with the parent on the same images.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from leukedge import __version__
from leukedge.edge.card import CardError, ModelCard, load_card_for_model
from leukedge.edge.errors import LeukedgeError
from leukedge.edge.files import staged_dir, write_text_atomic
from leukedge.evaluation import load_part
from leukedge.options import option
from leukedge.reports import optimize_reliability_plot, optimize_summary_markdown
from leukedge.options import validate as _validate_ranges
from leukedge.train.datasets import read_dataset
from leukedge.train.splits import SPLIT_FILE, read_split, subsample
from leukedge.tfcompat import load_keras_model

from . import builders as _builders  # noqa: F401 - registers the builders in BUILDERS
from .builders import BuildContext
from .channels import CHANNEL_TILES
from .convert import IO_TYPES
from .measure import MIN_VALIDATION, OptimizeError, VariantPlan, measure_variant, parent_reference
from .variants import BUILDERS, DEFAULT_VARIANTS, VariantError, resolve

MIN_CALIBRATION = 10


@dataclass
class OptimizeOptions:
    """Options of `leukedge optimize` (also its TOML [optimize] table and --set keys); each field's help is its flag's."""

    variants: tuple[str, ...] = option(DEFAULT_VARIANTS, "Variants to build: registry rows (leukedge.optimize.variants), "
                                                         "name@PX at another input size, slimNN-ROW with channels pruned "
                                                         "to NN % of the multiply-accumulates.")
    io: str = option("int8", "Input/output type of full-integer TFLite models.")
    sparsity: float = option(0.5, "Fraction of each kernel's weights pruned to zero (pruned-* variants).")
    calibration_size: int = option(200, "Calibration images (stratified, seeded).")
    calibration: str = option("", "Calibrate on this dataset folder instead of the training split.")
    # Pruning needs a real recovery fine-tune; QAT only a short nudge of already-good weights.
    prune_steps: int = option(300, "Fine-tuning steps while pruning.")
    prune_lr: float = option(1e-4, "Learning rate of the pruning fine-tune.")
    qat_steps: int = option(100, "Quantization-aware fine-tuning steps.")
    qat_lr: float = option(1e-5, "Learning rate of the quantization-aware fine-tune.")
    resize_steps: int = option(300, "Most recovery fine-tuning steps of input-size variants (int8@160; "
                                    "optimize.recover stops early on validation).")
    # peak of the recovery's cosine schedule; 1e-5 left the distillation loss still falling at step 300 of a
    # 300-step run (benchmarks/results/seed-study-pbc112), and early stopping keeps the best step anyway
    resize_lr: float = option(1e-4, "Peak learning rate of the input-size recovery fine-tunes.")
    finetune_batch: int = option(16, "Batch size of the fine-tunes.")
    # XNNPACK has no int8 average pool; as depthwise convolutions the pools are fast but round differently on
    # x86 and aarch64 (1 output step per pool, measured under QEMU), which the golden set's 2-step rule can catch
    int8_pools: str = option("builtin", "How full-integer TFLite models run their stride-1 average pools: builtin "
                                        "(TFLite's kernel; int8 outputs bit-identical on x86 and aarch64) | "
                                        "depthwise (depthwise convolutions: 1.5-2x faster int8 on LiteRT, outputs "
                                        "differ by a step or two between processors; optimize/pooling.py).")
    # XNNPACK's int8 convolution costs by whole tiles of output channels (64 with AMX, 16 with AVX-512 or Arm
    # dot-product, 8 on AVX2 and the Pi 4's Cortex-A72): leukedge.edge.machine.int8_channel_tile
    channel_tile: str = option("none", "slimNN rows: round each convolution's kept filters for this processor's int8 "
                                       "kernel tile: none (multiples of 8 where a layer has 32 or more: portable) | auto "
                                       "(the processor optimize runs on: 64 with AMX, 16 with AVX-512 or Arm "
                                       "dot-product, else 8) | 8 | 16 | 32 | 64 (e.g. 64 for a Xeon with AMX). Layers "
                                       "within one tile keep all their filters; the card records the tile.")
    max_f1_drop: float = option(0.01, "Budget: F1 drop against the parent.")
    max_recall_drop: float = option(0.01, "Budget: sensitivity drop against the parent.")
    keep_failing: bool = option(False, "Exit 0 even when a variant is over budget (it stays marked failed).")
    keep_threshold: bool = option(False, "Keep the parent's decision threshold instead of re-choosing it per variant.")
    gate: str = option("point", "point: budgets on the point estimates; ci: on the worst end of the paired 95 % interval.")
    calibrate: bool = option(True, "Fit a temperature per logit variant on validation (temperature scaling), where "
                                   "the split can judge one.")
    threads: int = option(0, "Interpreter threads for verification (0: all cores).")
    seed: int = option(0, "Seed of the calibration set, fine-tunes, golden set and bootstrap.")
    split_file: str = option("", "The split.json to measure on (none: the one beside MODEL).")
    allow_data_drift: bool = option(False, "Measure on the recorded files still present when the data changed.")

    RANGES = {"sparsity": (0.01, 0.99), "calibration_size": (MIN_CALIBRATION, 100000), "prune_steps": (2, 10**6),
              "prune_lr": (1e-8, 1.0), "qat_steps": (0, 10**6), "qat_lr": (1e-8, 1.0), "resize_steps": (0, 10**6),
              "resize_lr": (1e-8, 1.0), "finetune_batch": (1, 4096), "max_f1_drop": (0.0, 1.0),
              "max_recall_drop": (0.0, 1.0), "threads": (0, 256)}
    CHOICES = {"io": IO_TYPES, "gate": ("point", "ci"), "int8_pools": ("builtin", "depthwise"),
               "channel_tile": CHANNEL_TILES}

    def validate(self) -> "OptimizeOptions":
        """Check ranges and variant names; raises OptimizeError naming the option."""
        if not self.variants:
            raise OptimizeError("no variants requested")
        try:
            for v in self.variants:
                resolve(v)
        except VariantError as exc:
            raise OptimizeError(str(exc)) from None
        if not 0.0 < self.sparsity < 1.0:
            raise OptimizeError(f"--sparsity must lie strictly between 0 and 1, got {self.sparsity}")
        if self.calibration_size < MIN_CALIBRATION:
            raise OptimizeError(f"--calibration-size {self.calibration_size} is too small (at least {MIN_CALIBRATION})")
        try:
            _validate_ranges(self)
        except LeukedgeError as exc:
            raise OptimizeError(str(exc)) from None
        return self


def load_parent(model_path: str | Path):
    """The float Keras model and its card; refuses anything that is not a leukedge-ready Keras model.

    Refused in one line with the fix: an imported model whose preprocessing was never checked on
    labelled data (`leukedge import` without --data); a card with no provenance and no split.json
    beside the model (a model leukedge did not train: `leukedge import`); a card that says leukedge
    trained the model while the graph is not one leukedge builds (a card copied from another model).
    Returns (tf-keras model, ModelCard). Raises OptimizeError (one line) otherwise.
    """
    p = Path(model_path)
    if p.suffix != ".keras":
        raise OptimizeError(f"{p}: expected a trained leukedge model (model.keras with its card model.keras.json)")
    try:
        card = load_card_for_model(p)
    except CardError as exc:
        raise OptimizeError(f"not a usable leukedge model: {exc}") from None
    if card.model_format != "keras":
        raise OptimizeError(f"{p}: its card says format {card.model_format!r}, expected 'keras'")
    from leukedge.train.importer import ModelImportError, require_verified

    try:
        require_verified(card, p)  # an imported model whose preprocessing was never checked on labelled data
    except ModelImportError as exc:
        raise OptimizeError(str(exc)) from None
    if not card.provenance and not (p.parent / SPLIT_FILE).exists():
        raise OptimizeError(f"{p}: its card records no provenance and no {SPLIT_FILE} is beside it — a model leukedge "
                            f"did not train; bring it in with `leukedge import {p.name} --out DIR --labels A,B "
                            "--positive A --scale ... --data DATA`")
    try:
        model = load_keras_model(p)
    except LeukedgeError as exc:
        raise OptimizeError(str(exc)) from None
    if "imported" not in card.provenance and "architecture" in card.provenance:
        from .surgery import is_nested

        if is_nested(model) or model.layers[-1].name != "probabilities":
            # a card copied from a leukedge-trained model onto another model (issue 11): its labels and
            # preprocessing describe leukedge's graph, not this one
            raise OptimizeError(f"{p}: its card says leukedge trained it, but the graph is not one leukedge builds "
                                f"({'a nested model' if is_nested(model) else 'no output layer named probabilities'}): "
                                f"a card copied from another model? Import it with `leukedge import {p.name} ...`")
    size = card.preprocessing.size
    if tuple(model.input_shape[1:]) != (size, size, 3) or model.output_shape[-1] != len(card.labels):
        raise OptimizeError(f"{p}: model shapes {model.input_shape}->{model.output_shape} disagree with its card")
    return model, card


def _calibration_samples(opts: OptimizeOptions, split, card: ModelCard):
    if opts.calibration:
        cds = read_dataset(opts.calibration, positive=card.positive_label if card.positive_label != "all" else None)
        samples = cds.labelled
        source = f"folder {Path(opts.calibration).resolve()}"
    else:
        samples = split.parts["train"]
        source = "training split"
    if len({s.label for s in samples}) < 2:
        raise OptimizeError(f"calibration set ({source}) holds a single class; it needs both")
    chosen = subsample(samples, opts.calibration_size, opts.seed)
    if len(chosen) < MIN_CALIBRATION:
        raise OptimizeError(f"calibration set ({source}) has {len(chosen)} images; at least {MIN_CALIBRATION} needed")
    return chosen, source


def optimize(model_path: str | Path, out: str | Path, opts: OptimizeOptions, data: str | None = None) -> dict:
    """Build, measure and gate every requested variant of a trained Keras model: the `leukedge optimize` step.

    model_path: model.keras with its card; its run folder's split.json (or opts.split_file) names the data.
    out: folder for `<variant>.<ext>` + card each, summary.json, summary.md and a copy of split.json
    (written all or nothing). data: the dataset folder if it moved [default: the recorded one].
    Returns the summary dict with "failed" (variants over budget). Raises OptimizeError for bad options
    or models, DatasetError/DataDriftError for data that differ from the recorded split.
    """
    opts.validate()
    variants = [resolve(v) for v in opts.variants]
    t0 = time.perf_counter()
    run = _prepare(Path(model_path), opts, data, variants)
    with staged_dir(out) as stage:
        results = [_build_and_measure(run, v, stage) for v in variants]
        summary = _write_outputs(run, results, stage, t0)
    print(optimize_summary_markdown(summary, MIN_VALIDATION))
    summary["failed"] = [r["variant"] for r in results if r["verdict"] != "pass"]
    return summary


@dataclass
class _Run:
    """One `leukedge optimize` run (optimize's state): the parent, its data, and what every variant shares.

    surgery: check_variants' report; ds / split / data_root / split_path: read_split's dataset, split,
    data folder and the split file; calibration: the calibration set's description for int8 cards;
    val_at: input size (px) -> the validation images decoded at it (the parent's size first);
    parent_ev: the parent's Evaluation on them; warnings: lines for the summary.
    """

    model_path: Path
    opts: OptimizeOptions
    model: object
    card: ModelCard
    surgery: dict
    split_path: Path
    ds: object
    split: object
    data_root: object
    ctx: BuildContext
    calibration: dict
    val_at: dict
    parent_ev: object
    warnings: list[str]

    @property
    def val(self):
        """The validation images at the parent's size."""
        return self.val_at[self.card.preprocessing.size]

    def val_for(self, size: int):
        """The validation images at `size` px, decoded once per size."""
        if size not in self.val_at:
            self.val_at[size] = load_part(self.split.parts["validation"], self.ctx.prep(size),
                                          "validation").in_label_order(self.ds.labels, self.card.labels)
        return self.val_at[size]


def _prepare(model_path: Path, opts: OptimizeOptions, data: str | None, variants: list) -> _Run:
    """Load and check the parent, read its split, choose the calibration set and score the parent on validation."""
    model, card = load_parent(model_path)
    from .surgery import SurgeryError, check_variants

    try:  # what pruning/QAT cannot handle is refused here, before any image is decoded
        surgery = check_variants(model, variants)
    except SurgeryError as exc:
        raise OptimizeError(str(exc)) from None
    split_path = Path(opts.split_file) if opts.split_file else model_path.parent / SPLIT_FILE
    ds, split, data_root = read_split(split_path, data, opts.allow_data_drift, labels=card.labels)
    calib_samples, calib_source = _calibration_samples(opts, split, card)
    ctx = BuildContext(model, card, opts, split, ds.labels, calib_samples, {})
    val = load_part(split.parts["validation"], card.preprocessing, "validation").in_label_order(ds.labels, card.labels)
    parent_ev = parent_reference(model, card, val)
    parent_rep = parent_ev.report
    warnings = _parent_warnings(len(val.labels), parent_rep)
    for w in warnings:
        print(f"leukedge optimize: warning: {w}", file=sys.stderr)
    print(f"leukedge optimize: parent {model_path} (validation F1({card.positive_label})="
          f"{parent_rep['f1_positive']:.4f}, sensitivity {parent_rep['sensitivity']:.4f}); variants: "
          f"{', '.join(v.name for v in variants)}", file=sys.stderr)
    calibration = {"source": calib_source, "images": len(calib_samples),
                   "per_class": {ds.labels[k]: sum(1 for s in calib_samples if s.label == k) for k in range(2)},
                   "selection": "stratified by class, seeded", "seed": opts.seed}
    return _Run(model_path, opts, model, card, surgery, split_path, ds, split, data_root, ctx, calibration,
                {card.preprocessing.size: val}, parent_ev, warnings)


def _parent_warnings(n_validation: int, parent_rep: dict) -> list[str]:
    """What makes every verdict of the run doubtful: too few validation images, a parent near chance."""
    warnings = []
    if n_validation < MIN_VALIDATION:
        warnings.append(f"only {n_validation} validation images: every verdict below is noisy")
    if (parent_rep.get("auroc") or 0.5) < 0.6:
        warnings.append(f"the parent itself scores near chance (AUROC {parent_rep.get('auroc') or 0:.2f})")
    return warnings


def _build_and_measure(run: _Run, v, stage: Path) -> dict:
    """Build variant `v` into `stage` with its registry builder, then measure and gate it (measure_variant)."""
    tv = time.perf_counter()
    print(f"leukedge optimize: [{v.name}] building", file=sys.stderr, flush=True)
    path = stage / f"{v.name}{v.extension}"
    optimization = BUILDERS[v.builder](run.ctx, v, path)
    size = v.input_size or run.card.preprocessing.size
    res = measure_variant(VariantPlan(
        v, path, run.card, run.parent_ev, run.val_for(size), run.ctx.prep(size), run.opts, optimization,
        run.calibration if v.needs_calibration else None,
        {"data": {"root": run.data_root}, "split": run.split.describe(run.ds), "parent_file": run.model_path.name},
        time.perf_counter() - tv))
    print(f"leukedge optimize: [{v.name}] {res['size_bytes'] / 1e6:.2f} MB, F1 {res['f1']:.4f} "
          f"(drop {res['f1_drop']:+.4f}), sensitivity {res['recall']:.4f}, agreement {res['agreement']:.3f}: "
          f"{res['verdict']}", file=sys.stderr, flush=True)
    return res


def _write_outputs(run: _Run, results: list[dict], stage: Path, t0: float) -> dict:
    """The reliability plot, split.json, summary.json and summary.md in `stage`; returns the summary dict.

    t0: time.perf_counter() when the run began (the summary's "seconds")."""
    card, opts, parent_rep = run.card, run.opts, run.parent_ev.report
    optimize_reliability_plot(stage / "reliability.png", results, card.positive_index)
    for r in results:
        for k in ("_p_uncal", "_p_cal", "_y"):
            r.pop(k, None)
    shutil.copyfile(run.split_path, stage / SPLIT_FILE)
    summary = {
        "schema": "leukedge.optimize-summary", "schema_version": 2, "leukedge_version": __version__,
        "parent": {"file": run.model_path.name, "sha256": card.model_sha256, "f1": parent_rep["f1_positive"],
                   "recall": parent_rep["sensitivity"], "threshold": card.threshold},
        "budgets": {"max_f1_drop": opts.max_f1_drop, "max_recall_drop": opts.max_recall_drop},
        "validation_images": int(len(run.val.labels)), "positive_label": card.positive_label,
        "warnings": run.warnings, "surgery": run.surgery, "variants": results,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_text_atomic(stage / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(stage / "summary.md", optimize_summary_markdown(summary, MIN_VALIDATION))
    return summary
