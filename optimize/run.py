"""`leukedge optimize`: every variant written with its card, measured against its float parent, gated.

What to build comes from the variant registry (optimize.variants); what data to use comes from
the run folder (split.json beside model.keras); how to measure is the one evaluation
(leukedge.evaluation). Each variant is scored through the device's own classifier on the
validation part, at a threshold re-chosen to keep the parent's sensitivity (or the parent's own
with --keep-threshold), and compared with the parent on the same images.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leukedge import __version__
from leukedge.edge.card import CardError, ModelCard, card_path_for, inherit_card, load_card_for_model
from leukedge.edge.errors import LeukedgeError
from leukedge.edge.files import staged_dir, write_text_atomic
from leukedge.edge.preprocess import normalize
from leukedge.evaluation import Evaluation, ImageArrays, KerasScorer, decode_samples, evaluate, gzip_bytes, load_part, scorer_for
from leukedge.metrics import choose_threshold
from leukedge.options import option
from leukedge.options import validate as _validate_ranges
from leukedge.train.datasets import read_dataset
from leukedge.train.splits import SPLIT_FILE, read_split, subsample
from leukedge.tfcompat import load_keras_model, tensorflow

from .convert import IO_TYPES, representative_from, to_tflite
from .variants import BUILDERS, DEFAULT_VARIANTS, VARIANTS, Variant, VariantError, choices, resolve

MIN_CALIBRATION = 10
MIN_VALIDATION = 50  # below this a gate verdict is noise; warned about, not refused


class OptimizeError(LeukedgeError, ValueError):
    pass


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
    CHOICES = {"io": IO_TYPES, "gate": ("point", "ci")}

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


def uncalibrated_threshold(card: ModelCard) -> float:
    """The card's decision threshold on the uncalibrated (T = 1) P scale, same decisions.

    A card without a temperature (or T = 1) returns its threshold. A temperature-scaled card returns the
    recorded `calibration.threshold_uncalibrated`, else the closed form for two classes:
    P_T = sigmoid(d / T) >= t  <=>  sigmoid(d) >= sigmoid(T * logit(t))  (d = the logit difference;
    see leukedge.stats.threshold_on_calibrated_scale, which goes the other way).
    """
    t = float(card.threshold)
    temperature = float((card.calibration or {}).get("temperature", 1.0))
    if temperature == 1.0 or t in (0.0, 1.0):
        return t
    recorded = (card.calibration or {}).get("threshold_uncalibrated")
    if recorded is not None:
        return float(recorded)
    import math

    return 1.0 / (1.0 + math.exp(-temperature * (math.log(t) - math.log1p(-t))))


def parent_reference(model, parent_card: ModelCard, val: ImageArrays) -> Evaluation:
    """The float parent scored on `val` the way its variants are gated (issue 18: like with like):
    its P(positive) from its own output kind (softmax applied to a logits head), at T = 1, decided at its
    threshold re-expressed on that T = 1 scale (uncalibrated_threshold). Variants are scored at T = 1 too,
    so P, |dP| and decisions compare on one scale. Returns the Evaluation (report, p, threshold)."""
    positive = parent_card.positive_index
    from leukedge.edge.calibration import NotProbabilitiesError, check_probabilities, p_positive_from_logits

    y = KerasScorer(model, parent_card.preprocessing, positive).outputs(val.images)
    if parent_card.output == "logits":
        p = p_positive_from_logits(y, positive, 1.0)
    else:
        try:
            p = check_probabilities(y, f"the parent model ({parent_card.model_file})")[:, positive]
        except NotProbabilitiesError as exc:
            raise OptimizeError(str(exc)) from None
    return evaluate(p, val, uncalibrated_threshold(parent_card), parent_card.labels, positive, name="parent")


@dataclass
class BuildContext:
    """What builders share: the parent, data loaders, options, and models built once for several variants."""

    model: object
    card: ModelCard
    opts: OptimizeOptions
    split: object
    ds_labels: list[str]
    calib_samples: list
    cache: dict

    def prep(self, size: int | None = None):
        return dataclasses.replace(self.card.preprocessing, size=size or self.card.preprocessing.size)

    def calibration_inputs(self, size: int | None = None) -> np.ndarray:
        """float32 model inputs (N, S, S, 3) of the calibration set at `size`, decoded once per size."""
        key = ("calib", size)
        if key not in self.cache:
            prep = self.prep(size)
            self.cache[key] = normalize(decode_samples(self.calib_samples, prep, what="calibration images").images, prep)
        return self.cache[key]

    def finetune_data(self, size: int | None = None):
        """A shuffled, augmented tf.data pipeline over the training part at `size` (decoded once per size)."""
        key = ("train", size)
        if key not in self.cache:
            from leukedge.train.pipeline import make_dataset

            prep = self.prep(size)
            arrays = decode_samples(self.split.parts["train"], prep, what="fine-tune images")
            arrays = arrays.in_label_order(self.ds_labels, self.card.labels)
            self.cache[key] = make_dataset(arrays, prep, self.opts.finetune_batch, training=True, seed=self.opts.seed)
        return self.cache[key]

    def logits(self, model):
        """`model` with its final softmax removed (a clone sharing no variables), so exported variants
        output logits and the device applies softmax with the card's temperature. Returns (model, output kind):
        'logits' for the clone; a model whose last layer is not a softmax Dense is returned as it is, with
        the output kind its parent's card declares (a logits head stays 'logits': issue 18)."""
        tf = tensorflow()
        last = model.layers[-1]
        if not isinstance(last, tf.keras.layers.Dense) or last.get_config().get("activation") != "softmax":
            return model, self.card.output
        key = ("logits", id(model))
        if key not in self.cache:
            def clone(layer):
                cfg = layer.get_config()
                if layer is last:
                    cfg["activation"] = "linear"
                return layer.__class__.from_config(cfg)

            copy = tf.keras.models.clone_model(model, clone_function=clone)
            copy.set_weights(model.get_weights())
            self.cache[key] = (copy, model)  # keep `model` alive so its id stays unique
        return self.cache[key][0], "logits"

    def pruned(self):
        if "pruned" not in self.cache:
            from .prune import prune, sparsity_report

            pruned = prune(self.model, self.finetune_data(), self.opts.sparsity, self.opts.prune_steps,
                           self.opts.prune_lr, progress=sys.stderr.isatty())
            self.cache["pruned"] = (pruned, {**sparsity_report(pruned, self.opts.sparsity),
                                             "schedule": "polynomial decay 0 -> target over 70% of steps",
                                             "finetune_steps": self.opts.prune_steps,
                                             "finetune_lr": self.opts.prune_lr})
        return self.cache["pruned"]


def _model_at_size(ctx: BuildContext, size: int):
    """The parent's weights at another input size, recovered there (optimize.recover: BatchNorm
    re-estimation, then up to resize_steps of distillation from the parent, early-stopped on validation)."""
    key = ("resized", size)
    if key not in ctx.cache:
        from .channels import at_size, count_macs, count_params
        from .recover import recover_in_context

        resized, recovery = recover_in_context(ctx, at_size(ctx.model, size), size, ctx.opts.resize_steps,
                                               ctx.opts.resize_lr)
        info = {"input_size": size, "from_size": ctx.card.preprocessing.size, "finetune_steps": ctx.opts.resize_steps,
                "finetune_lr": ctx.opts.resize_lr, "macs": count_macs(resized), "params": count_params(resized),
                "recovery": recovery}
        ctx.cache[key] = (resized, info)
    return ctx.cache[key]


def _build_convert(ctx: BuildContext, v: Variant, path: Path) -> dict:
    model, info = ctx.model, {}
    if v.input_size and v.input_size != ctx.card.preprocessing.size:
        model, resized = _model_at_size(ctx, v.input_size)
        info["resized"] = resized
    model, info["output"] = ctx.logits(model)
    rep = representative_from(ctx.calibration_inputs(v.input_size)) if v.needs_calibration else None
    path.write_bytes(to_tflite(model, v.conversion, rep, io=ctx.opts.io))
    return info


def _build_prune(ctx: BuildContext, v: Variant, path: Path) -> dict:
    pruned, report = ctx.pruned()
    model, output = ctx.logits(pruned)
    path.write_bytes(to_tflite(model, v.conversion, representative_from(ctx.calibration_inputs()), io=ctx.opts.io))
    return {"pruning": report, "output": output}


def _build_qat(ctx: BuildContext, v: Variant, path: Path) -> dict:
    from .qat import quantization_aware

    info = {"output": ctx.card.output}  # QAT keeps the parent's head: its card's output kind, whatever it is
    base = ctx.model
    if v.prunes:
        base, info["pruning"] = ctx.pruned()
    qat = quantization_aware(base, ctx.finetune_data(), ctx.opts.qat_steps, ctx.opts.qat_lr,
                             preserve_sparsity=v.prunes, progress=sys.stderr.isatty(),
                             calibration=ctx.calibration_inputs())
    from .prune import surgery_steps

    info["qat"] = {"steps": ctx.opts.qat_steps, "lr": ctx.opts.qat_lr,
                   "scheme": "Default8BitPrunePreserveQuantizeScheme" if v.prunes else "Default8BitQuantizeScheme",
                   "surgery": surgery_steps(qat)}
    path.write_bytes(to_tflite(qat, "qat", representative_from(ctx.calibration_inputs()), io=ctx.opts.io))
    return info


def _build_onnx(ctx: BuildContext, v: Variant, path: Path) -> dict:
    from .onnx_export import export_onnx, quantize_qdq

    model, output = ctx.logits(ctx.model)
    if v.conversion == "onnx-float32":
        return {"onnx": export_onnx(model, path), "output": output}
    float_path = path.with_name(path.stem + ".float-tmp.onnx")
    try:
        desc = export_onnx(model, float_path)
        recipe = quantize_qdq(float_path, path, ctx.calibration_inputs())
    finally:
        float_path.unlink(missing_ok=True)
    return {"onnx": {**desc, "quantization": recipe}, "output": output}


BUILDERS.update({"convert": _build_convert, "prune": _build_prune, "qat": _build_qat, "prune+qat": _build_qat,
                 "onnx": _build_onnx, "onnx-cpu": lambda ctx, v, path: __import__(
                     "leukedge.optimize.onnx_export", fromlist=["build_onnx_cpu"]).build_onnx_cpu(ctx, v, path),
                 "slim": lambda ctx, v, path: __import__(
                     "leukedge.optimize.channels", fromlist=["build_slim"]).build_slim(ctx, v, path)})


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
    model, parent_card = load_parent(model_path)
    from .surgery import SurgeryError, check_variants

    try:  # what pruning/QAT cannot handle is refused here, before any image is decoded
        surgery = check_variants(model, variants)
    except SurgeryError as exc:
        raise OptimizeError(str(exc)) from None
    split_path = Path(opts.split_file) if opts.split_file else Path(model_path).parent / SPLIT_FILE
    ds, split, data_root = read_split(split_path, data, opts.allow_data_drift, labels=parent_card.labels)
    labels, positive = parent_card.labels, parent_card.positive_index
    calib_samples, calib_source = _calibration_samples(opts, split, parent_card)
    ctx = BuildContext(model, parent_card, opts, split, ds.labels, calib_samples, {})

    val = load_part(split.parts["validation"], parent_card.preprocessing, "validation").in_label_order(ds.labels, labels)
    parent_ev = parent_reference(model, parent_card, val)
    parent_rep = parent_ev.report
    warnings = []
    if len(val.labels) < MIN_VALIDATION:
        warnings.append(f"only {len(val.labels)} validation images: every verdict below is noisy")
    if (parent_rep.get("auroc") or 0.5) < 0.6:
        warnings.append(f"the parent itself scores near chance (AUROC {parent_rep.get('auroc') or 0:.2f})")
    for w in warnings:
        print(f"leukedge optimize: warning: {w}", file=sys.stderr)
    print(f"leukedge optimize: parent {Path(model_path)} (validation F1({parent_card.positive_label})="
          f"{parent_rep['f1_positive']:.4f}, sensitivity {parent_rep['sensitivity']:.4f}); variants: "
          f"{', '.join(v.name for v in variants)}", file=sys.stderr)
    calibration = {"source": calib_source, "images": len(calib_samples),
                   "per_class": {ds.labels[k]: sum(1 for s in calib_samples if s.label == k) for k in range(2)},
                   "selection": "stratified by class, seeded", "seed": opts.seed}
    val_at = {parent_card.preprocessing.size: val}

    results = []
    with staged_dir(out) as stage:
        for v in variants:
            tv = time.perf_counter()
            print(f"leukedge optimize: [{v.name}] building", file=sys.stderr, flush=True)
            path = stage / f"{v.name}{v.extension}"
            optimization = BUILDERS[v.builder](ctx, v, path)
            size = v.input_size or parent_card.preprocessing.size
            if size not in val_at:
                val_at[size] = load_part(split.parts["validation"], ctx.prep(size), "validation").in_label_order(
                    ds.labels, labels)
            res = _measure_variant(v, path, parent_card, parent_ev, val_at[size], opts, optimization,
                                   calibration if v.needs_calibration else None, time.perf_counter() - tv,
                                   data_root, split.describe(ds), ctx.prep(size), Path(model_path).name)
            results.append(res)
            print(f"leukedge optimize: [{v.name}] {res['size_bytes'] / 1e6:.2f} MB, F1 {res['f1']:.4f} "
                  f"(drop {res['f1_drop']:+.4f}), sensitivity {res['recall']:.4f}, agreement {res['agreement']:.3f}: "
                  f"{res['verdict']}", file=sys.stderr, flush=True)
        _reliability_plot(stage / "reliability.png", results, parent_ev)
        for r in results:
            for k in ("_p_uncal", "_p_cal", "_y"):
                r.pop(k, None)
        shutil.copyfile(split_path, stage / SPLIT_FILE)
        summary = {
            "schema": "leukedge.optimize-summary", "schema_version": 2, "leukedge_version": __version__,
            "parent": {"file": Path(model_path).name, "sha256": parent_card.model_sha256, "f1": parent_rep["f1_positive"],
                       "recall": parent_rep["sensitivity"], "threshold": parent_card.threshold},
            "budgets": {"max_f1_drop": opts.max_f1_drop, "max_recall_drop": opts.max_recall_drop},
            "validation_images": int(len(val.labels)), "positive_label": parent_card.positive_label,
            "warnings": warnings, "surgery": surgery, "variants": results, "seconds": round(time.perf_counter() - t0, 1),
        }
        write_text_atomic(stage / "summary.json", json.dumps(summary, indent=2) + "\n")
        write_text_atomic(stage / "summary.md", summary_markdown(summary))
    print(summary_markdown(summary))
    summary["failed"] = [r["variant"] for r in results if r["verdict"] != "pass"]
    return summary


def _reliability_plot(path: Path, results: list[dict], parent_ev: Evaluation) -> None:
    """Reliability diagram (validation) of each calibrated variant before and after temperature scaling."""
    from leukedge import stats

    curves = {}
    for r in results:
        if r.get("temperature") is not None:
            is_pos = r["_y"] == parent_ev.report["positive_index"]
            if r.get("calibration_status") == "not fitted":
                curves[f"{r['variant']} T=1 (not fitted)"] = (is_pos, r["_p_uncal"])
                continue
            curves[f"{r['variant']} T=1"] = (is_pos, r["_p_uncal"])
            curves[f"{r['variant']} T={r['temperature']:.2f}"] = (is_pos, r["_p_cal"])
    if curves:
        try:
            stats.plot_reliability(path, curves)
        except ImportError:  # matplotlib is in the train extra; without it there is no plot, nothing else lost
            pass


def _io_params(backend) -> dict:
    q = lambda dt, qp: {"dtype": np.dtype(dt).name, "scale": float(qp[0]), "zero_point": int(qp[1])}  # noqa: E731
    return {"input": q(backend.input_dtype, backend.input_quantization),
            "output": q(backend.output_dtype, backend.output_quantization)}


def _gate(parent: Evaluation, ev: Evaluation, opts: OptimizeOptions, positive_label: str) -> tuple[str, list[str], dict]:
    """pass/fail against the parent: F1 drop and sensitivity drop, each with its own budget."""
    f1_drop = parent.report["f1_positive"] - ev.report["f1_positive"]
    recall_drop = parent.report["sensitivity"] - ev.report["sensitivity"]
    reasons = []
    if f1_drop > opts.max_f1_drop + 1e-9:
        reasons.append(f"F1 drop {f1_drop:.4f} > budget {opts.max_f1_drop}")
    if recall_drop > opts.max_recall_drop + 1e-9:
        reasons.append(f"{positive_label} sensitivity drop {recall_drop:.4f} > budget {opts.max_recall_drop}")
    return ("fail" if reasons else "pass"), reasons, {"f1_drop": f1_drop, "recall_drop": recall_drop}


def _measure_variant(v: Variant, path: Path, parent_card: ModelCard, parent_ev: Evaluation, val: ImageArrays,
                     opts: OptimizeOptions, optimization: dict, calibration: dict | None, build_s: float,
                     data_root: str, split_desc: dict, prep, parent_file: str) -> dict:
    """Score one built variant on validation through the device's own path, choose its threshold, gate it
    against the parent, fit its temperature (logit variants), and write its card. Returns the summary row."""
    from leukedge import stats

    # Everything the parent declares (labels, preprocessing, output kind, ...) comes from its card, in one
    # place (edge.card.inherit_card); the builder only says whether it removed a final softmax.
    card = inherit_card(parent_card, model_file=path.name, model_format=v.format, variant=v.name, size=prep.size,
                        output=optimization.pop("output", None), onnx=optimization.pop("onnx", None))
    output = card.output
    card.bind(path)
    from leukedge.edge.calibration import NotProbabilitiesError

    try:  # a card that says probabilities is checked on probe inputs at load and on every validation row
        scorer = scorer_for(path, card, threads=opts.threads or None)
        positive = card.positive_index
        z = None
        if output == "logits":  # one inference pass: logits give P at T = 1 now and the temperature fit below
            from leukedge.edge.calibration import p_positive_from_logits

            z = scorer.classifier.logits_for_images(val.images)
            p = p_positive_from_logits(z, card.positive_index, 1.0)
        else:
            p = scorer.p_positive(val.images)  # uncalibrated (T = 1): what the gate and the parent comparison use
    except NotProbabilitiesError as exc:
        raise OptimizeError(f"[{v.name}] build failed: {exc}") from None
    if opts.keep_threshold:
        thr = parent_ev.threshold  # the parent's threshold on the T = 1 scale (parent_reference)
        rule = "the parent's threshold, kept (--keep-threshold)"
    else:  # keep the parent's sensitivity on validation
        thr = choose_threshold(val.labels, p, positive, min_recall=parent_ev.report["sensitivity"])
        rule = (f"best-F1 threshold keeping {card.positive_label} sensitivity >= the parent's "
                f"({parent_ev.report['sensitivity']:.4f}) on validation")
    ev = evaluate(p, val, thr, card.labels, positive, name=v.name)
    same_cells = len(parent_ev.p) == len(ev.p)
    if same_cells:
        ev.against(parent_ev)
    verdict, reasons, drops = _gate(parent_ev, ev, opts, card.positive_label)
    groups = val.subjects if val.subjects and all(val.subjects) else None
    paired = stats.paired_differences(val.labels, p, thr, parent_ev.p, parent_ev.threshold, groups=groups,
                                      positive=positive, seed=opts.seed) if same_cells else None
    if opts.gate == "ci" and paired:
        for metric, budget, what in (("f1_positive", opts.max_f1_drop, "F1"),
                                     ("sensitivity", opts.max_recall_drop, "sensitivity")):
            low = paired[metric]["low"]
            if low is not None and low < -budget - 1e-9 and not any(what in r for r in reasons):
                reasons.append(f"{what} drop up to {-low:.4f} at the 95 % interval's worst end > budget {budget}")
        verdict = "fail" if reasons else "pass"
    p_cal = p
    if output == "logits" and opts.calibrate:
        temperature, status, why = stats.fit_temperature_if_judgeable(z, val.labels, positive, MIN_VALIDATION)
        p_cal = stats.p_positive_from_logits(z, positive, temperature)
        thr_cal = stats.threshold_on_calibrated_scale(thr, temperature, logits=z, positive_index=positive,
                                                      p_before=p, p_after=p_cal)
        card.calibration = {**stats.calibration_report(z, val.labels, temperature, positive),
                            "method": "temperature scaling, NLL on validation", "split": "validation",
                            "status": status, "reason": why, "threshold_uncalibrated": thr}
        if status == stats.FITTED:
            rule += f"; re-expressed on the calibrated scale (T = {temperature:.3f}, same decisions)"
        else:
            print(f"leukedge optimize: [{v.name}] temperature not fitted (T = 1): {why}", file=sys.stderr)
        thr = thr_cal
    card.threshold = thr
    backend = getattr(getattr(scorer, "classifier", None), "backend", None)
    card.quantization = {"mode": v.quantization, "io": _io_params(backend) if backend is not None else None}
    if calibration:
        card.quantization["calibration"] = calibration
    card.optimization = optimization
    card.provenance = {"leukedge_version": __version__, "parent": {"file": parent_file, "sha256": parent_card.model_sha256},
                       "data": {"root": data_root}, "split": split_desc, "threshold_rule": rule,
                       "variant": {"prunes": v.prunes, "quantization_aware": v.quantization_aware,
                                   "conversion": v.conversion, "runtime": v.runtime},
                       **({"imported": parent_card.provenance["imported"]} if "imported" in parent_card.provenance else {})}
    vs_parent = {**ev.vs_reference(), **drops, "paired_bootstrap": paired}
    card.metrics = {"validation": {**ev.report, "threshold": thr},
                    "validation_intervals": stats.screening_intervals(val.labels, p_cal, thr, groups=groups,
                                                                      positive=positive, seed=opts.seed),
                    "vs_parent": vs_parent}
    card.verdict = {"status": verdict, "reasons": reasons, "gate": opts.gate,
                    "budgets": {"max_f1_drop": opts.max_f1_drop, "max_recall_drop": opts.max_recall_drop}}
    if card.model_format in ("tflite", "onnx"):
        # The device self-test's golden set (synthetic inputs, never patient images), measured with the
        # final card (temperature, threshold) by a fresh classifier, so `edge-classify --self-test` on the
        # device compares like with like.
        from leukedge.edge.classifier import Classifier

        from .golden import make_golden

        card.golden = make_golden(Classifier(path, card, threads=opts.threads or None), seed=opts.seed)
    card.save(card_path_for(path))
    size_bytes = path.stat().st_size
    return {"variant": v.name, "file": path.name, "format": v.format, "size_bytes": size_bytes,
            "gzip_bytes": gzip_bytes(path), "input_size": prep.size, "output": output,
            "temperature": (card.calibration or {}).get("temperature"),
            "calibration_status": (card.calibration or {}).get("status"),
            "calibration_reason": (card.calibration or {}).get("reason"),
            "ece_before": (card.calibration or {}).get("ece_before"),
            "ece_after": (card.calibration or {}).get("ece_after"),
            "f1": ev.report["f1_positive"], "recall": ev.report["sensitivity"],
            "specificity": ev.report["specificity"], "threshold": thr, "agreement": ev.agreement,
            "max_abs_delta_p": ev.max_abs_delta_p, "f1_drop": drops["f1_drop"], "recall_drop": drops["recall_drop"],
            "f1_drop_ci": None if not paired else [-paired["f1_positive"]["high"], -paired["f1_positive"]["low"]],
            "verdict": verdict, "reasons": reasons, "sparsity": optimization.get("pruning", {}).get("overall"),
            "build_seconds": round(build_s, 1), "_p_uncal": p, "_p_cal": p_cal, "_y": val.labels}


def summary_markdown(summary: dict) -> str:
    pos = summary["positive_label"]
    par = summary["parent"]
    lines = [
        f"# leukedge optimize: {par['file']}",
        "",
        f"Parent (float Keras): F1({pos}) {par['f1']:.4f}, {pos} sensitivity {par['recall']:.4f} at threshold "
        f"{par['threshold']:.4f}, on {summary['validation_images']} validation images (the split part every "
        f"threshold below was chosen on). Budgets: F1 drop <= {summary['budgets']['max_f1_drop']}, sensitivity drop <= "
        f"{summary['budgets']['max_recall_drop']}.",
        *[f"\n**Warning:** {w}." for w in summary.get("warnings", [])],
        "",
        f"| variant | px | size MB | gzip MB | size vs float32 | F1({pos}) | F1 drop (95 % CI) | {pos} sensitivity | agreement | max dP | T | ECE before -> after | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    f32 = next((r["size_bytes"] for r in summary["variants"] if r["variant"] == "float32"), None)
    f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
    ci = lambda c: "" if not c or None in c else f" ({c[0]:+.3f}, {c[1]:+.3f})"  # noqa: E731
    def ece(r):
        if r.get("ece_before") is None:
            return "-"
        if r.get("calibration_status") == "not fitted":
            return f"{r['ece_before']:.3f} (T not fitted)"
        return f"{r['ece_before']:.3f} -> {r['ece_after']:.3f}"
    for r in summary["variants"]:
        ratio = f"{r['size_bytes'] / f32:.1%}" if f32 else "-"
        lines.append(f"| {r['variant']} | {r.get('input_size', '-')} | {r['size_bytes'] / 1e6:.2f} | {r['gzip_bytes'] / 1e6:.2f} | "
                     f"{ratio} | {r['f1']:.4f} | {r['f1_drop']:+.4f}{ci(r.get('f1_drop_ci'))} | {r['recall']:.4f} | "
                     f"{f(r['agreement'], '.3f')} | {f(r['max_abs_delta_p'], '.3f')} | {f(r.get('temperature'), '.2f')} | "
                     f"{ece(r)} | {r['verdict']}{' (' + '; '.join(r['reasons']) + ')' if r['reasons'] else ''} |")
    lines += [f"\nTemperature of {r['variant']} not fitted (T = 1): {r['calibration_reason']}."
              for r in summary["variants"] if r.get("calibration_status") == "not fitted"]
    lines += ["", "All figures: the validation part (where thresholds and temperatures were chosen). gzip MB: gzip "
              "level 9 of the model file. F1 drop CI: paired bootstrap (1,000 resamples, seeded; subjects when the "
              "split has them). T: the fitted temperature of a logit variant; ECE: 15 equal-width bins on P(positive), "
              "before and after temperature scaling (reliability.png); a temperature is not fitted (T = 1) below "
              f"{MIN_VALIDATION} validation images or where the validation scores separate the classes. Variants at another input size (px) are scored "
              "on the validation images decoded at that size; agreement and max dP (uncalibrated) compare with the "
              "parent on the same cells."]
    return "\n".join(lines) + "\n"
