"""`leukedge optimize`: every variant written with its card, measured against its float parent, gated."""

from __future__ import annotations

import gzip
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leukedge import __version__
from leukedge.edge.card import CardError, ModelCard, load_card_for_model
from leukedge.edge.classifier import Classifier
from leukedge.edge.errors import LeukedgeError
from leukedge.edge.files import staged_dir, write_text_atomic
from leukedge.metrics import choose_threshold, report_at_threshold
from leukedge.edge.preprocess import normalize
from leukedge.train.datasets import Dataset, read_dataset
from leukedge.train.fit import subsample
from leukedge.train.pipeline import ImageArrays, decode_samples, make_dataset
from leukedge.train.splits import split_from_card
from leukedge.train.tfcompat import tensorflow

from .convert import IO_TYPES, representative_from, to_tflite

VARIANTS = ("float32", "float16", "dynamic", "int8", "pruned-int8", "qat-int8", "pruned-qat-int8")
DEFAULT_VARIANTS = ("float32", "float16", "dynamic", "int8", "pruned-int8", "qat-int8", "pruned-qat-int8")
MIN_CALIBRATION = 10


class OptimizeError(LeukedgeError, ValueError):
    pass


@dataclass
class OptimizeOptions:
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    io: str = "int8"
    sparsity: float = 0.5
    calibration_size: int = 200
    calibration: str | None = None  # a dataset folder instead of the training split
    # Pruning needs a real recovery fine-tune; QAT only a short nudge of already-good weights.
    prune_steps: int = 300
    prune_lr: float = 1e-4
    qat_steps: int = 100
    qat_lr: float = 1e-5
    finetune_batch: int = 16
    max_f1_drop: float = 0.01
    max_recall_drop: float = 0.01
    keep_failing: bool = False
    threads: int | None = None
    seed: int = 0

    def validate(self) -> "OptimizeOptions":
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise OptimizeError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
        if not self.variants:
            raise OptimizeError("no variants requested")
        if not 0.0 < self.sparsity < 1.0:
            raise OptimizeError(f"--sparsity must lie strictly between 0 and 1, got {self.sparsity}")
        if self.io not in IO_TYPES:
            raise OptimizeError(f"--io must be one of {', '.join(IO_TYPES)}")
        if self.calibration_size < MIN_CALIBRATION:
            raise OptimizeError(f"--calibration-size {self.calibration_size} is too small (at least {MIN_CALIBRATION})")
        if self.max_f1_drop < 0 or self.max_recall_drop < 0:
            raise OptimizeError("budgets must be >= 0")
        return self


def load_parent(model_path: str | Path):
    """The float Keras model and its card; refuses anything that is not a leukedge model."""
    p = Path(model_path)
    if p.suffix != ".keras":
        raise OptimizeError(f"{p}: expected a trained leukedge model (model.keras with model.json beside it)")
    try:
        card = load_card_for_model(p)
    except CardError as exc:
        raise OptimizeError(f"not a usable leukedge model: {exc}") from None
    if card.model_format != "keras":
        raise OptimizeError(f"{p}: its card says format {card.model_format!r}, expected 'keras'")
    tf = tensorflow()
    try:
        model = tf.keras.models.load_model(p, compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad file
        raise OptimizeError(f"{p}: cannot load as a Keras model: {str(exc).splitlines()[0]}") from None
    size = card.preprocessing.size
    if tuple(model.input_shape[1:]) != (size, size, 3) or model.output_shape[-1] != len(card.labels):
        raise OptimizeError(f"{p}: model shapes {model.input_shape}->{model.output_shape} disagree with its card")
    return model, card


def _calibration_samples(opts: OptimizeOptions, ds: Dataset, split, card: ModelCard):
    if opts.calibration:
        cds = read_dataset(opts.calibration, positive=card.positive_label if card.positive_label != "all" else None)
        samples = cds.labelled
        source = f"folder {Path(opts.calibration).resolve()}"
    else:
        samples = split.parts["train"]
        source = "training split"
    present = {s.label for s in samples}
    if len(present) < 2:
        raise OptimizeError(f"calibration set ({source}) holds a single class; it needs both")
    chosen = subsample(samples, opts.calibration_size, opts.seed)
    if len(chosen) < MIN_CALIBRATION:
        raise OptimizeError(f"calibration set ({source}) has {len(chosen)} images; at least {MIN_CALIBRATION} needed")
    return chosen, source


def _gzip_size(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9))


def _io_params(clf: Classifier) -> dict:
    det_in = clf.interpreter.get_input_details()[0]
    det_out = clf.interpreter.get_output_details()[0]
    q = lambda d: {"dtype": np.dtype(d["dtype"]).name, "scale": float(d["quantization"][0]),  # noqa: E731
                   "zero_point": int(d["quantization"][1])}
    return {"input": q(det_in), "output": q(det_out)}


def optimize(model_path: str | Path, out: str | Path, opts: OptimizeOptions, data: str | None = None) -> dict:
    opts.validate()
    t0 = time.perf_counter()
    model, parent_card = load_parent(model_path)
    ds, split, data_root = split_from_card(parent_card, data)
    prep = parent_card.preprocessing
    positive = parent_card.positive_index

    val = decode_samples(split.parts["validation"], prep, what="validation images")
    val_x = normalize(val.images, prep)
    p_parent = model.predict(val_x, batch_size=32, verbose=0)[:, positive].astype(np.float64)
    parent_rep = report_at_threshold(val.labels, p_parent, parent_card.threshold, parent_card.labels, positive)
    calib_samples, calib_source = _calibration_samples(opts, ds, split, parent_card)
    calib = decode_samples(calib_samples, prep, what="calibration images")
    calib_x = normalize(calib.images, prep)
    calibration = {"source": calib_source, "images": len(calib.labels),
                   "per_class": {parent_card.labels[k]: int((calib.labels == k).sum()) for k in range(2)},
                   "selection": "stratified by class, seeded", "seed": opts.seed}
    needs_finetune = any(v.startswith(("pruned", "qat")) for v in opts.variants)
    train_ds = None
    if needs_finetune:
        train_arrays = decode_samples(split.parts["train"], prep, what="fine-tune images")
        train_ds = make_dataset(train_arrays, prep, opts.finetune_batch, training=True, seed=opts.seed)

    parent_sha = parent_card.model_sha256
    print(f"leukedge optimize: parent {Path(model_path)} (validation F1({parent_card.positive_label})="
          f"{parent_rep['f1_positive']:.4f}, recall {parent_rep['sensitivity']:.4f}); variants: "
          f"{', '.join(opts.variants)}", file=sys.stderr)

    pruned_model = None
    sparsity_report: dict = {}
    results = []
    with staged_dir(out) as stage:
        for variant in opts.variants:
            tv = time.perf_counter()
            print(f"leukedge optimize: [{variant}] building", file=sys.stderr, flush=True)
            optimization: dict = {}
            rep_gen = representative_from(calib_x)
            if variant in ("float32", "float16", "dynamic"):
                blob = to_tflite(model, variant)
            elif variant == "int8":
                blob = to_tflite(model, "int8", rep_gen, io=opts.io)
            elif variant.startswith("pruned"):
                if pruned_model is None:
                    from .prune import kernel_sparsity, overall_sparsity, prune

                    pruned_model = prune(model, train_ds, opts.sparsity, opts.prune_steps, opts.prune_lr,
                                         progress=sys.stderr.isatty())
                    per_kernel = kernel_sparsity(pruned_model)
                    sparsity_report = {"target": opts.sparsity, "overall": overall_sparsity(pruned_model),
                                       "min_kernel": min(per_kernel.values()), "max_kernel": max(per_kernel.values()),
                                       "kernels": len(per_kernel), "schedule": "polynomial decay 0 -> target over 70% of steps",
                                       "finetune_steps": opts.prune_steps, "finetune_lr": opts.prune_lr}
                optimization["pruning"] = sparsity_report
                if variant == "pruned-int8":
                    blob = to_tflite(pruned_model, "int8", rep_gen, io=opts.io)
                else:
                    from .qat import quantization_aware

                    qat = quantization_aware(pruned_model, train_ds, opts.qat_steps, opts.qat_lr,
                                             preserve_sparsity=True, progress=sys.stderr.isatty(), calibration=calib_x)
                    optimization["qat"] = {"steps": opts.qat_steps, "lr": opts.qat_lr,
                                           "scheme": "Default8BitPrunePreserveQuantizeScheme"}
                    blob = to_tflite(qat, "qat", rep_gen, io=opts.io)
            elif variant == "qat-int8":
                from .qat import quantization_aware

                qat = quantization_aware(model, train_ds, opts.qat_steps, opts.qat_lr,
                                         progress=sys.stderr.isatty(), calibration=calib_x)
                optimization["qat"] = {"steps": opts.qat_steps, "lr": opts.qat_lr, "scheme": "Default8BitQuantizeScheme"}
                blob = to_tflite(qat, "qat", rep_gen, io=opts.io)
            else:  # validated above
                raise OptimizeError(variant)
            build_s = time.perf_counter() - tv
            path = stage / f"{variant}.tflite"
            path.write_bytes(blob)
            res = _measure_variant(variant, path, blob, parent_card, parent_rep, p_parent, val, val_x, opts,
                                   calibration if variant.endswith("int8") else None, optimization, parent_sha,
                                   Path(model_path).name, data_root, split.describe(ds), build_s)
            results.append(res)
            print(f"leukedge optimize: [{variant}] {res['size_bytes'] / 1e6:.2f} MB, F1 {res['f1']:.4f} "
                  f"(drop {res['f1_drop']:+.4f}), recall {res['recall']:.4f}, agreement {res['agreement']:.3f}: "
                  f"{res['verdict']}", file=sys.stderr, flush=True)
        summary = {
            "schema": "leukedge.optimize-summary", "schema_version": 1, "leukedge_version": __version__,
            "parent": {"file": Path(model_path).name, "sha256": parent_sha, "f1": parent_rep["f1_positive"],
                       "recall": parent_rep["sensitivity"], "threshold": parent_card.threshold},
            "budgets": {"max_f1_drop": opts.max_f1_drop, "max_recall_drop": opts.max_recall_drop},
            "validation_images": int(len(val.labels)), "positive_label": parent_card.positive_label,
            "variants": results, "seconds": round(time.perf_counter() - t0, 1),
        }
        write_text_atomic(stage / "summary.json", json.dumps(summary, indent=2) + "\n")
        write_text_atomic(stage / "summary.md", summary_markdown(summary))
    print(summary_markdown(summary))
    failed = [r["variant"] for r in results if r["verdict"] != "pass"]
    summary["failed"] = failed
    return summary


def _measure_variant(variant, path, blob, parent_card: ModelCard, parent_rep, p_parent, val: ImageArrays, val_x,
                     opts: OptimizeOptions, calibration, optimization, parent_sha, parent_file, data_root,
                     split_desc, build_s) -> dict:
    card = ModelCard(labels=parent_card.labels, positive_label=parent_card.positive_label,
                     preprocessing=parent_card.preprocessing, model_file=path.name, model_format="tflite",
                     threshold=parent_card.threshold, name=parent_card.name, variant=variant)
    card.bind(path)
    clf = Classifier(path, card, threads=opts.threads)
    p = clf.probabilities_for_inputs(val_x)[:, card.positive_index].astype(np.float64)
    positive = card.positive_index
    # Re-choose the threshold so the variant keeps the parent's sensitivity on validation.
    thr = choose_threshold(val.labels, p, positive, min_recall=parent_rep["sensitivity"])
    rep = report_at_threshold(val.labels, p, thr, card.labels, positive)
    parent_decisions = p_parent >= parent_card.threshold
    decisions = p >= thr
    agreement = float(np.mean(parent_decisions == decisions))
    f1_drop = parent_rep["f1_positive"] - rep["f1_positive"]
    recall_drop = parent_rep["sensitivity"] - rep["sensitivity"]
    reasons = []
    if f1_drop > opts.max_f1_drop + 1e-9:
        reasons.append(f"F1 drop {f1_drop:.4f} > budget {opts.max_f1_drop}")
    if recall_drop > opts.max_recall_drop + 1e-9:
        reasons.append(f"{card.positive_label} recall drop {recall_drop:.4f} > budget {opts.max_recall_drop}")
    verdict = "fail" if reasons else "pass"
    card.threshold = thr
    card.quantization = {"mode": {"float32": "none", "float16": "float16 weights", "dynamic": "dynamic-range int8 weights"}
                         .get(variant, f"full-integer int8 ({'quantization-aware' if 'qat' in variant else 'post-training'})"),
                         "io": _io_params(clf)}
    if calibration:
        card.quantization["calibration"] = calibration
    card.optimization = optimization
    card.provenance = {"leukedge_version": __version__, "parent": {"file": parent_file, "sha256": parent_sha},
                       "data": {"root": data_root}, "split": split_desc,
                       "threshold_rule": f"best-F1 threshold keeping {card.positive_label} recall >= parent's "
                                         f"({parent_rep['sensitivity']:.4f}) on validation"}
    vs_parent = {"agreement": agreement, "max_abs_delta_p": float(np.max(np.abs(p - p_parent))),
                 "mean_abs_delta_p": float(np.mean(np.abs(p - p_parent))), "f1_drop": f1_drop,
                 "recall_drop": recall_drop}
    card.metrics = {"validation": rep, "vs_parent": vs_parent}
    card.verdict = {"status": verdict, "reasons": reasons,
                    "budgets": {"max_f1_drop": opts.max_f1_drop, "max_recall_drop": opts.max_recall_drop}}
    card.save()
    return {"variant": variant, "file": path.name, "size_bytes": len(blob), "gzip_bytes": _gzip_size(blob),
            "f1": rep["f1_positive"], "recall": rep["sensitivity"], "specificity": rep["specificity"],
            "threshold": thr, "agreement": agreement, "max_abs_delta_p": vs_parent["max_abs_delta_p"],
            "f1_drop": f1_drop, "recall_drop": recall_drop, "verdict": verdict, "reasons": reasons,
            "sparsity": optimization.get("pruning", {}).get("overall"), "build_seconds": round(build_s, 1)}


def summary_markdown(summary: dict) -> str:
    pos = summary["positive_label"]
    par = summary["parent"]
    lines = [
        f"# leukedge optimize: {par['file']}",
        "",
        f"Parent (float Keras): F1({pos}) {par['f1']:.4f}, {pos} recall {par['recall']:.4f} at threshold "
        f"{par['threshold']:.4f}, on {summary['validation_images']} validation images. Budgets: F1 drop <= "
        f"{summary['budgets']['max_f1_drop']}, recall drop <= {summary['budgets']['max_recall_drop']}.",
        "",
        f"| variant | size MB | gzip MB | size vs float32 | F1({pos}) | F1 drop | {pos} recall | agreement | max dP | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    f32 = next((r["size_bytes"] for r in summary["variants"] if r["variant"] == "float32"), None)
    for r in summary["variants"]:
        ratio = f"{r['size_bytes'] / f32:.1%}" if f32 else "-"
        lines.append(f"| {r['variant']} | {r['size_bytes'] / 1e6:.2f} | {r['gzip_bytes'] / 1e6:.2f} | {ratio} | "
                     f"{r['f1']:.4f} | {r['f1_drop']:+.4f} | {r['recall']:.4f} | {r['agreement']:.3f} | "
                     f"{r['max_abs_delta_p']:.3f} | {r['verdict']}{' (' + '; '.join(r['reasons']) + ')' if r['reasons'] else ''} |")
    return "\n".join(lines) + "\n"
