"""Measuring one built variant against its float parent: score it through the device's own path, choose its
threshold, gate it, fit its temperature where the split can judge one, write its card and golden set.

`measure_variant(plan)` runs those stages in order on a `VariantPlan` (what optimize's loop knows about the
variant) and returns the variant's summary row.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from leukedge import __version__
from leukedge.edge.card import ModelCard, card_path_for, inherit_card
from leukedge.edge.errors import LeukedgeError
from leukedge.evaluation import Evaluation, ImageArrays, KerasScorer, evaluate, gzip_bytes, scorer_for
from leukedge.edge.metrics import choose_threshold

from .convert import INT8_REWRITES
from .variants import Variant

MIN_VALIDATION = 50  # below this a gate verdict is noise; warned about, not refused


class OptimizeError(LeukedgeError, ValueError):
    pass


def uncalibrated_threshold(card: ModelCard) -> float:
    """The card's decision threshold on the uncalibrated (T = 1) P scale, same decisions.

    A card without a temperature (or T = 1) returns its threshold. A temperature-scaled card returns the
    recorded `calibration.threshold_uncalibrated`, else the closed form for two classes:
    P_T = sigmoid(d / T) >= t  <=>  sigmoid(d) >= sigmoid(T * logit(t))  (d = the logit difference;
    see leukedge.edge.stats.threshold_on_calibrated_scale, which goes the other way).
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


def _io_params(backend) -> dict:
    q = lambda dt, qp: {"dtype": np.dtype(dt).name, "scale": float(qp[0]), "zero_point": int(qp[1])}  # noqa: E731
    return {"input": q(backend.input_dtype, backend.input_quantization),
            "output": q(backend.output_dtype, backend.output_quantization)}


def _gate(parent: Evaluation, ev: Evaluation, opts, positive_label: str) -> tuple[str, list[str], dict]:
    """pass/fail against the parent: F1 drop and sensitivity drop, each with its own budget."""
    f1_drop = parent.report["f1_positive"] - ev.report["f1_positive"]
    recall_drop = parent.report["sensitivity"] - ev.report["sensitivity"]
    reasons = []
    if f1_drop > opts.max_f1_drop + 1e-9:
        reasons.append(f"F1 drop {f1_drop:.4f} > budget {opts.max_f1_drop}")
    if recall_drop > opts.max_recall_drop + 1e-9:
        reasons.append(f"{positive_label} sensitivity drop {recall_drop:.4f} > budget {opts.max_recall_drop}")
    return ("fail" if reasons else "pass"), reasons, {"f1_drop": f1_drop, "recall_drop": recall_drop}




@dataclass
class VariantPlan:
    """What optimize's loop knows about one built variant: the row, its file, the parent (card and its
    evaluation at T = 1), the validation images at the variant's size and input preprocessing, the options,
    the builder's `optimization` entry, the calibration set's description (int8 rows) and where it came from."""

    variant: Variant
    path: Path
    parent_card: ModelCard
    parent_ev: Evaluation
    val: ImageArrays
    prep: object  # leukedge.edge.preprocess.Preprocessing at the variant's input size
    opts: object  # optimize.run.OptimizeOptions
    optimization: dict
    calibration: dict | None
    provenance: dict  # {"data": {"root"}, "split": ..., "parent_file": ...}
    build_seconds: float = 0.0


@dataclass
class Measured:
    """The stages' results: the card being written, P at T = 1 (and the logits), the threshold and its rule,
    the evaluation, the gate (verdict, reasons, drops, paired bootstrap) and the calibrated P."""

    card: ModelCard
    scorer: object
    p: np.ndarray
    z: np.ndarray | None
    threshold: float = 0.5
    rule: str = ""
    ev: Evaluation | None = None
    verdict: str = "pass"
    reasons: list = field(default_factory=list)
    drops: dict = field(default_factory=dict)
    paired: dict | None = None
    groups: list | None = None
    p_cal: np.ndarray | None = None


def _score(plan: VariantPlan) -> Measured:
    """Stage 1: the variant's card (inherited from the parent's: edge.card.inherit_card) and P(positive) at
    T = 1 on validation through the device's own classifier (logits kept for the temperature fit)."""
    v, opts = plan.variant, plan.opts
    card = inherit_card(plan.parent_card, model_file=plan.path.name, model_format=v.format, variant=v.name,
                        size=plan.prep.size, output=plan.optimization.pop("output", None),
                        onnx=plan.optimization.pop("onnx", None))
    card.bind(plan.path)
    from leukedge.edge.calibration import NotProbabilitiesError, p_positive_from_logits

    try:  # a card that says probabilities is checked on probe inputs at load and on every validation row
        scorer = scorer_for(plan.path, card, threads=opts.threads or None)
        z = None
        if card.output == "logits":  # one inference pass: P at T = 1 now, the temperature fit later
            z = scorer.classifier.logits_for_images(plan.val.images)
            p = p_positive_from_logits(z, card.positive_index, 1.0)
        else:
            p = scorer.p_positive(plan.val.images)
    except NotProbabilitiesError as exc:
        raise OptimizeError(f"[{v.name}] build failed: {exc}") from None
    return Measured(card, scorer, p, z)


def _choose(plan: VariantPlan, m: Measured) -> None:
    """Stage 2: the threshold on the T = 1 scale: the parent's (--keep-threshold), else the best-F1 one that
    keeps the parent's sensitivity on validation."""
    parent_ev, card = plan.parent_ev, m.card
    if plan.opts.keep_threshold:
        m.threshold, m.rule = parent_ev.threshold, "the parent's threshold, kept (--keep-threshold)"
        return
    m.threshold = choose_threshold(plan.val.labels, m.p, card.positive_index,
                                   min_recall=parent_ev.report["sensitivity"])
    m.rule = (f"best-F1 threshold keeping {card.positive_label} sensitivity >= the parent's "
              f"({parent_ev.report['sensitivity']:.4f}) on validation")


def _gate_stage(plan: VariantPlan, m: Measured) -> None:
    """Stage 3: evaluate at the threshold, compare with the parent on the same cells, gate on the budgets
    (point estimates, or with --gate ci the worst end of the paired 95 % bootstrap interval)."""
    from leukedge.edge import bootstrap

    opts, val, parent_ev, positive = plan.opts, plan.val, plan.parent_ev, m.card.positive_index
    m.ev = evaluate(m.p, val, m.threshold, m.card.labels, positive, name=plan.variant.name)
    same_cells = len(parent_ev.p) == len(m.ev.p)
    if same_cells:
        m.ev.against(parent_ev)
    m.verdict, m.reasons, m.drops = _gate(parent_ev, m.ev, opts, m.card.positive_label)
    m.groups = val.subjects if val.subjects and all(val.subjects) else None
    m.paired = bootstrap.paired_differences(val.labels, m.p, m.threshold, parent_ev.p, parent_ev.threshold,
                                        groups=m.groups, positive=positive, seed=opts.seed) if same_cells else None
    if opts.gate == "ci" and m.paired:
        for metric, budget, what in (("f1_positive", opts.max_f1_drop, "F1"),
                                     ("sensitivity", opts.max_recall_drop, "sensitivity")):
            low = m.paired[metric]["low"]
            if low is not None and low < -budget - 1e-9 and not any(what in r for r in m.reasons):
                m.reasons.append(f"{what} drop up to {-low:.4f} at the 95 % interval's worst end > budget {budget}")
        m.verdict = "fail" if m.reasons else "pass"


def _calibrate(plan: VariantPlan, m: Measured) -> None:
    """Stage 4: temperature scaling of a logit variant where the split can judge one (else T = 1, with the
    reason); the threshold re-expressed on the calibrated scale with the same decisions."""
    from leukedge.edge import stats

    m.p_cal = m.p
    if m.card.output != "logits" or not plan.opts.calibrate:
        return
    positive, labels = m.card.positive_index, plan.val.labels
    temperature, status, why = stats.fit_temperature_if_judgeable(m.z, labels, positive, MIN_VALIDATION)
    m.p_cal = stats.p_positive_from_logits(m.z, positive, temperature)
    thr_cal = stats.threshold_on_calibrated_scale(m.threshold, temperature, logits=m.z, positive_index=positive,
                                                  p_before=m.p, p_after=m.p_cal)
    m.card.calibration = {**stats.calibration_report(m.z, labels, temperature, positive),
                          "method": "temperature scaling, NLL on validation", "split": "validation",
                          "status": status, "reason": why, "threshold_uncalibrated": m.threshold}
    if status == stats.FITTED:
        m.rule += f"; re-expressed on the calibrated scale (T = {temperature:.3f}, same decisions)"
    else:
        print(f"leukedge optimize: [{plan.variant.name}] temperature not fitted (T = 1): {why}", file=sys.stderr)
    m.threshold = thr_cal


def _write_card(plan: VariantPlan, m: Measured) -> None:
    """Stage 5: the card's own fields (threshold, quantization, provenance, metrics, verdict), the golden set
    measured with the final card by a fresh classifier (so the device's self-test compares like with like),
    then the card itself."""
    from leukedge.edge import bootstrap

    v, opts, card, parent_card = plan.variant, plan.opts, m.card, plan.parent_card
    card.threshold = m.threshold
    backend = getattr(getattr(m.scorer, "classifier", None), "backend", None)
    card.quantization = {"mode": v.quantization, "io": _io_params(backend) if backend is not None else None}
    if plan.calibration:
        card.quantization["calibration"] = plan.calibration
    card.optimization = plan.optimization
    card.provenance = {"leukedge_version": __version__,
                       "parent": {"file": plan.provenance["parent_file"], "sha256": parent_card.model_sha256},
                       "data": plan.provenance["data"], "split": plan.provenance["split"], "threshold_rule": m.rule,
                       "variant": {"prunes": v.prunes, "quantization_aware": v.quantization_aware,
                                   "conversion": v.conversion, "runtime": v.runtime,
                                   "graph_rewrites": list(INT8_REWRITES) if v.conversion == "int8"
                                   and opts.int8_pools == "depthwise" else []},
                       **({"imported": parent_card.provenance["imported"]} if "imported" in parent_card.provenance else {})}
    card.metrics = {"validation": {**m.ev.report, "threshold": m.threshold},
                    "validation_intervals": bootstrap.screening_intervals(plan.val.labels, m.p_cal, m.threshold,
                                                                      groups=m.groups, positive=card.positive_index,
                                                                      seed=opts.seed),
                    "vs_parent": {**m.ev.vs_reference(), **m.drops, "paired_bootstrap": m.paired}}
    card.verdict = {"status": m.verdict, "reasons": m.reasons, "gate": opts.gate,
                    "budgets": {"max_f1_drop": opts.max_f1_drop, "max_recall_drop": opts.max_recall_drop}}
    if card.model_format in ("tflite", "onnx"):
        from leukedge.edge.classifier import Classifier

        from .golden import make_golden

        card.golden = make_golden(Classifier(plan.path, card, threads=opts.threads or None), seed=opts.seed)
    card.save(card_path_for(plan.path))


def _summary_row(plan: VariantPlan, m: Measured) -> dict:
    """The variant's row of summary.json (keys starting with '_' are the arrays the reliability plot needs)."""
    cal = m.card.calibration or {}
    path, ev = plan.path, m.ev
    return {"variant": plan.variant.name, "file": path.name, "format": plan.variant.format,
            "size_bytes": path.stat().st_size, "gzip_bytes": gzip_bytes(path), "input_size": plan.prep.size,
            "output": m.card.output, "temperature": cal.get("temperature"), "calibration_status": cal.get("status"),
            "calibration_reason": cal.get("reason"), "ece_before": cal.get("ece_before"),
            "ece_after": cal.get("ece_after"), "f1": ev.report["f1_positive"], "recall": ev.report["sensitivity"],
            "specificity": ev.report["specificity"], "threshold": m.threshold, "agreement": ev.agreement,
            "max_abs_delta_p": ev.max_abs_delta_p, "f1_drop": m.drops["f1_drop"], "recall_drop": m.drops["recall_drop"],
            "f1_drop_ci": None if not m.paired else [-m.paired["f1_positive"]["high"], -m.paired["f1_positive"]["low"]],
            "verdict": m.verdict, "reasons": m.reasons,
            "sparsity": plan.optimization.get("pruning", {}).get("overall"),
            "build_seconds": round(plan.build_seconds, 1), "_p_uncal": m.p, "_p_cal": m.p_cal, "_y": plan.val.labels}


def measure_variant(plan: VariantPlan) -> dict:
    """Score one built variant on validation through the device's own path, choose its threshold, gate it
    against the parent, fit its temperature (logit variants, where the split can judge one), write its card
    and golden set. Returns the summary row. Raises OptimizeError when a `probabilities` card's model does
    not output probabilities."""
    m = _score(plan)
    _choose(plan, m)
    _gate_stage(plan, m)
    _calibrate(plan, m)
    _write_card(plan, m)
    return _summary_row(plan, m)
