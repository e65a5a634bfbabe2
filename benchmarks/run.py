"""`leukedge benchmark`: score and time every variant on the same images.

A runner (this module: plan -> measure each variant -> compare -> write) is kept apart from
what it measures (`measure_*`, in leukedge.benchmarks.measure), and each measurement returns a
plain dict, so results.json is just those dicts plus the machine. Latency: warm-up invokes, then
`repeats` timed invokes over real preprocessed images, reported as p50/p90/p99 at 1 thread and at
all cores. Cold start: a fresh `edge-classify` process, spawn to exit. Peak memory: that process's
max RSS. The people-facing report (report.md, f1_vs_latency.png) is drawn by leukedge.reports.benchmark.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from leukedge import __version__
from leukedge.options import option
from leukedge.edge.card import CardError, ModelCard, load_card_for_model
from leukedge.train.splits import SPLIT_FILE
from leukedge.edge.errors import LeukedgeError
from leukedge.edge.files import staged_dir, write_text_atomic
from leukedge.edge.preprocess import normalize
from leukedge.edge.runtime import default_threads
from leukedge.evaluation import Evaluation, evaluate, gzip_bytes, load_part, scorer_for

from .machine import machine_info
from .measure import (BenchmarkError, measure_cold_start, measure_device_latency, measure_keras_latency,
                      measure_keras_memory)

SCHEMA = "leukedge.benchmark"
SCHEMA_VERSION = 2  # 2: schema of issue-8 round (input_size, runtime, reference, threshold_chosen_on)


@dataclass
class BenchmarkOptions:
    """Options of `leukedge benchmark` (also --set keys)."""

    part: str = option("auto", "Split part to evaluate: auto = test if present, else validation (the report says which).")
    repeats: int = option(30, "Timed invokes per variant and thread count.")
    warmup: int = option(3, "Untimed invokes before the timed ones.")
    max_images: int = option(0, "Evaluate at most N images (0 = all).")
    cold_start: bool = option(True, "Measure each model's cold start as fresh processes.")
    cold_start_runs: int = option(3, "Fresh processes per cold-start measurement.")
    max_f1_regression: float = option(0.01, "Allowed F1 drop vs the baseline.")
    max_recall_regression: float = option(0.01, "Allowed sensitivity drop vs the baseline.")
    max_latency_ratio: float = option(1.25, "Allowed slowdown vs the baseline (ratio of each variant to its float32 sibling).")
    split_file: str = option("", "The split.json to measure on (none: the one beside the first model that has one).")
    allow_data_drift: bool = option(False, "Measure on the recorded files still present when the data changed.")

    RANGES = {"repeats": (3, 100000), "warmup": (0, 1000), "max_images": (0, 10**8), "cold_start_runs": (1, 100),
              "max_f1_regression": (0.0, 1.0), "max_recall_regression": (0.0, 1.0), "max_latency_ratio": (1.0, 100.0)}
    CHOICES = {"part": ("auto", "test", "validation", "train")}


def collect_models(paths) -> list[tuple[Path, ModelCard]]:
    """Model files with their cards; folders contribute their *.keras, *.tflite and *.onnx models.

    Models of one family share labels (by name); they may differ in input size (int8@160 beside int8).
    Raises BenchmarkError naming the file for a missing model or card."""
    if not paths:
        raise BenchmarkError("no models given: pass model files (.keras/.tflite with cards) or an optimize folder")
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(p.glob("*.keras")) + sorted(p.glob("*.tflite")) + sorted(p.glob("*.onnx"))
            if not found:
                raise BenchmarkError(f"{p}: folder holds no .keras, .tflite or .onnx models")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise BenchmarkError(f"{p}: no such model file or folder")
    models = []
    for f in files:
        try:
            card = load_card_for_model(f)
        except CardError as exc:
            raise BenchmarkError(str(exc)) from None
        if card.model_format == "keras":  # an import whose preprocessing was never checked is refused
            from leukedge.train.importer import require_verified

            try:
                require_verified(card, f)
            except LeukedgeError as exc:
                raise BenchmarkError(str(exc)) from None
        models.append((f, card))
    labels = {tuple(sorted(c.labels)) for _, c in models}
    if len(labels) > 1:
        raise BenchmarkError(f"models were trained with different labels: {sorted(labels)}; benchmark one family at a time")
    positives = {c.positive_label for _, c in models}
    if len(positives) > 1:
        raise BenchmarkError(f"models disagree on the positive class: {sorted(positives)}")
    return models


def _file_sizes(path: Path) -> dict:
    return {"size_bytes": path.stat().st_size, "gzip_bytes": gzip_bytes(path)}


def _screening_figures(ev: Evaluation, arrays, card) -> dict:
    """95 % intervals (Wilson for sensitivity/specificity/precision, seeded bootstrap for F1, weighted F1,
    AUROC; subjects resampled when the part has them), calibration (ECE 15 bins equal-width and
    equal-mass, Brier; before = T 1, after = the card's temperature) and, with subjects, subject-level
    figures (per-subject flagged fraction, AUROC across subjects)."""
    from leukedge.edge import bootstrap, stats

    pos = card.positive_index
    groups = arrays.subjects if arrays.subjects and all(arrays.subjects) else None
    is_pos = arrays.labels == pos
    before = ev.p if ev.p_uncalibrated is None else ev.p_uncalibrated
    out = {"intervals": bootstrap.screening_intervals(arrays.labels, ev.p, ev.threshold, groups=groups, positive=pos),
           "calibration": {"temperature": float((card.calibration or {}).get("temperature", 1.0)),
                           **{f"{name}_{tag}": fn(is_pos, p) for tag, p in (("before", before), ("after", ev.p))
                              for name, fn in (("ece", stats.expected_calibration_error),
                                               ("ece_quantile", lambda y, q: stats.expected_calibration_error(
                                                   y, q, strategy="quantile")),
                                               ("brier", stats.brier_score))}}}
    if groups is not None:
        out["subject_level"] = bootstrap.subject_level(arrays.labels, ev.p, ev.threshold, groups, positive=pos)
    out["_reliability"] = (is_pos, before, ev.p)
    return out


def _find_split_file(found, opts: BenchmarkOptions) -> Path:
    if opts.split_file:
        return Path(opts.split_file)
    for path, _ in found:
        if (path.parent / SPLIT_FILE).exists():
            return path.parent / SPLIT_FILE
    raise BenchmarkError(f"no {SPLIT_FILE} beside the models given (train and optimize write it); pass --split-file")


METRIC_KEYS = ("f1_positive", "f1_negative", "macro_f1", "weighted_f1", "sensitivity", "specificity", "accuracy",
               "auroc", "false_negatives", "false_positives")


@dataclass
class _Plan:
    """What one benchmark measures: the models with their cards, the card whose labels and preprocessing lead
    (the Keras parent's, else the first), the split part's samples (decoded once per input size), the thread
    count of "all cores" and the baseline results to compare with (None: no comparison)."""

    found: list[tuple[Path, ModelCard]]
    ref_card: ModelCard
    ds: object
    split: object
    data_root: str
    part: str
    samples: list
    base: dict | None
    all_threads: int
    decoded: dict = field(default_factory=dict)

    def part_at(self, prep):
        """The part's images decoded at `prep`'s input size (decoded once per size)."""
        if prep.size not in self.decoded:
            self.decoded[prep.size] = load_part(self.samples, prep, self.part)
        return self.decoded[prep.size]


def _plan(models, opts: BenchmarkOptions, data: str | None, baseline: str | None) -> _Plan:
    """The models and their cards, the baseline, and the split part to measure on (opts.part; auto: test when
    the split has one, else validation; at most opts.max_images of it, seeded). Raises BenchmarkError."""
    from leukedge.train.datasets import DatasetError
    from leukedge.train.splits import read_split, subsample

    found = collect_models(models)
    base = _load_baseline(baseline) if baseline else None
    ref_card = next((c for _, c in found if c.model_format == "keras"), found[0][1])
    try:
        ds, split, data_root = read_split(_find_split_file(found, opts), data, opts.allow_data_drift,
                                          labels=ref_card.labels)
    except DatasetError as exc:
        raise BenchmarkError(str(exc)) from None
    part = opts.part if opts.part != "auto" else ("test" if split.parts.get("test") else "validation")
    if part not in split.parts:
        raise BenchmarkError(f"split has no part {part!r} (parts: {', '.join(split.parts)})")
    samples = split.parts[part]
    if opts.max_images and len(samples) > opts.max_images:
        samples = subsample(samples, opts.max_images, 0)
    return _Plan(found, ref_card, ds, split, data_root, part, samples, base, default_threads())


@dataclass
class _Speed:
    """One model's speed: its scorer (for evaluate), the device runtime that ran it (None for Keras), the
    runtime's name and version, its latency figures ({"1_thread"?, "all_cores"}: measure_*_latency's dicts)
    and its memory and cold-start fields (peak_rss_mib in MiB, cold_start_s in s, cold_start_runs)."""

    scorer: object
    runtime: object
    runtime_name: str
    latency: dict
    memory: dict


def _measure_speed(path: Path, card: ModelCard, arrays, opts: BenchmarkOptions, threads: int) -> _Speed:
    """Time one model on the first opts.repeats images of `arrays` (the part at its input size): a Keras model
    in TensorFlow (its default threads; peak memory of a fresh TensorFlow process, no cold start), a device
    model through its runtime at 1 thread and at `threads`, and its cold start unless opts.cold_start is off.
    Raises BenchmarkError when edge-classify fails."""
    x = normalize(arrays.images[: max(1, min(len(arrays.images), opts.repeats))], card.preprocessing)
    if card.model_format == "keras":
        scorer = scorer_for(path, card)
        latency = {"all_cores": measure_keras_latency(scorer.model, x, opts.repeats, opts.warmup)}
        memory = {"peak_rss_mib": measure_keras_memory(path, arrays.paths[0]), "cold_start_s": None}
        return _Speed(scorer, None, "tensorflow", latency, memory)
    scorer = scorer_for(path, card, threads=threads)
    runtime = scorer.classifier.runtime
    latency = {"1_thread": measure_device_latency(path, x, 1, opts.repeats, opts.warmup),
               "all_cores": measure_device_latency(path, x, threads, opts.repeats, opts.warmup)}
    memory = measure_cold_start(path, arrays.paths[0], opts.cold_start_runs) if opts.cold_start else {}
    return _Speed(scorer, runtime, " ".join(filter(None, (runtime.name, runtime.version, runtime.detail))),
                  latency, memory)


def benchmark(models, out, opts: BenchmarkOptions, data: str | None = None, baseline: str | None = None) -> dict:
    """Score and time every model on the same split part: the `leukedge benchmark` step.

    models: model files and/or folders (their .keras, .tflite, .onnx). out: folder for results.json,
    report.md, f1_vs_latency.png (all or nothing). data: the dataset folder if it moved. baseline: an
    earlier results.json to compare with (same schema version, else refused).
    Each model is scored on the part decoded at its own input size; agreement and |ΔP| are against the
    Keras parent when given, else float32. Returns the results dict (see README for the schema).
    Raises BenchmarkError, DatasetError/DataDriftError.
    """
    t0 = time.perf_counter()
    plan = _plan(models, opts, data, baseline)
    y = plan.part_at(plan.ref_card.preprocessing).labels
    print(f"leukedge benchmark: {len(plan.found)} model(s) on {len(y)} {plan.part} images of {plan.data_root}",
          file=sys.stderr)
    rows, evals, runtime = [], [], None
    for path, card in plan.found:
        print(f"leukedge benchmark: [{card.variant}] {path.name}", file=sys.stderr, flush=True)
        arrays = plan.part_at(card.preprocessing).in_label_order(plan.ds.labels, card.labels)
        name = f"keras-{card.variant}" if card.model_format == "keras" else card.variant
        row = {"variant": name, "file": path.name, "format": card.model_format, "input_size": card.preprocessing.size,
               "quantization": (card.quantization or {}).get("mode", "none"), **_file_sizes(path)}
        speed = _measure_speed(path, card, arrays, opts, plan.all_threads)
        runtime = speed.runtime if speed.runtime is not None else runtime
        row["runtime"] = speed.runtime_name
        row["latency"] = speed.latency
        row.update(speed.memory)
        ev = evaluate(speed.scorer, arrays, card.threshold, card.labels, card.positive_index, name=name)
        row["metrics"] = {k: ev.report[k] for k in METRIC_KEYS}
        row["threshold"] = card.threshold
        row["verdict"] = (card.verdict or {}).get("status", "-")
        row.update(_screening_figures(ev, arrays, card))
        rows.append(row)
        evals.append(ev)
    ref_i = _reference_index(rows)
    f32_ms = next((r["latency"]["all_cores"]["p50"] for r in rows if r["variant"] == "float32"), None)
    for row, ev in zip(rows, evals):
        if len(ev.p) == len(evals[ref_i].p):  # the same cells: compare with the reference
            ev.against(evals[ref_i])
        row["agreement_with_float"] = ev.agreement
        row["max_abs_delta_p_vs_float"] = ev.max_abs_delta_p
        row["latency_ratio_to_float32"] = (row["latency"]["all_cores"]["p50"] / f32_ms) if f32_ms else None
    ds, split = plan.ds, plan.split
    results = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "leukedge_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(runtime),
        "data": {"root": plan.data_root, "part": plan.part, "images": int(len(y)), "split": split.rule,
                 "file_list_sha256": split.file_list_sha256(ds),
                 "threshold_chosen_on": "validation",
                 "per_class": {ds.labels[k]: int((y == k).sum()) for k in range(2)}},
        "positive_label": plan.ref_card.positive_label,
        "reference": rows[ref_i]["variant"],
        "settings": {"repeats": opts.repeats, "warmup": opts.warmup, "all_cores_threads": plan.all_threads},
        "variants": rows,
        "seconds": None,
    }
    if plan.base is not None:
        results["baseline"] = {"created": plan.base.get("created"), "machine": plan.base.get("machine", {}).get("cpu")}
    results["regressions"] = compare(results, plan.base, opts) if plan.base is not None else []
    results["seconds"] = round(time.perf_counter() - t0, 1)
    print(_write_outputs(out, results))
    return results


def _reference_index(rows: list[dict]) -> int:
    """The row agreement and |ΔP| are measured against: the Keras parent; without one, float32; else the first."""
    ref_i = next((i for i, r in enumerate(rows) if r["format"] == "keras"), None)
    if ref_i is None:  # no Keras parent given: compare with the float32 model instead
        ref_i = next((i for i, r in enumerate(rows) if r["variant"] == "float32"), 0)
    return ref_i


def _reliability_curves(rows: list[dict]) -> dict:
    """reliability.png's curves, taking each row's "_reliability" (is_pos, P at T=1, P at the card's T) out of
    it: "<variant> T=1" and "<variant> T=<t>" where the card has a temperature, else "<variant>"."""
    curves = {}
    for row in rows:
        is_pos, before, after = row.pop("_reliability")
        if row["calibration"]["temperature"] != 1.0:
            curves[f"{row['variant']} T=1"] = (is_pos, before)
        curves[f"{row['variant']}" + (f" T={row['calibration']['temperature']:.2f}"
                                      if row["calibration"]["temperature"] != 1.0 else "")] = (is_pos, after)
    return curves


def _write_outputs(out, results: dict) -> str:
    """results.json, report.md, f1_vs_latency.png and reliability.png into `out`, all or nothing (the reports
    from leukedge.reports). Returns report.md's text."""
    from leukedge.reports import benchmark_markdown, f1_vs_latency, plot_reliability

    curves = _reliability_curves(results["variants"])
    md = benchmark_markdown(results)
    with staged_dir(out) as stage:
        write_text_atomic(stage / "results.json", json.dumps(results, indent=2) + "\n")
        write_text_atomic(stage / "report.md", md)
        f1_vs_latency(results, stage / "f1_vs_latency.png")
        plot_reliability(stage / "reliability.png", curves)
    return md


def _load_baseline(path: str) -> dict:
    p = Path(path)
    try:
        base = json.loads(p.read_text())
    except FileNotFoundError:
        raise BenchmarkError(f"{p}: baseline results not found") from None
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{p}: baseline is not valid JSON: {exc}") from None
    if base.get("schema") != SCHEMA:
        raise BenchmarkError(f"{p}: not a leukedge benchmark results file")
    if base.get("schema_version") != SCHEMA_VERSION:
        raise BenchmarkError(f"{p}: baseline schema version {base.get('schema_version')} differs from this "
                             f"leukedge's {SCHEMA_VERSION}; re-run the baseline with this version")
    return base


def compare(results: dict, base: dict, opts: BenchmarkOptions) -> list[dict]:
    """Regressions against a baseline: F1 and sensitivity drops (each with its own budget), and slowdowns
    as ratios to float32.

    Latency is compared as each variant's ratio to its float32 sibling, not in milliseconds,
    so a baseline from another machine still means something.
    """
    out = []
    old = {r["variant"]: r for r in base.get("variants", [])}
    for r in results["variants"]:
        b = old.get(r["variant"])
        if not b:
            continue
        for key, name, budget in (("f1_positive", "F1", opts.max_f1_regression),
                                  ("sensitivity", "sensitivity", opts.max_recall_regression)):
            drop = b["metrics"][key] - r["metrics"][key]
            if drop > budget + 1e-12:
                out.append({"variant": r["variant"], "what": name, "baseline": b["metrics"][key],
                            "now": r["metrics"][key], "change": -drop})
        new_ratio, old_ratio = r.get("latency_ratio_to_float32"), b.get("latency_ratio_to_float32")
        if new_ratio and old_ratio and r["variant"] != "float32":
            if new_ratio / old_ratio > opts.max_latency_ratio:
                out.append({"variant": r["variant"], "what": "latency ratio to float32", "baseline": old_ratio,
                            "now": new_ratio, "change": new_ratio / old_ratio})
    return out
