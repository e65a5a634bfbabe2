"""`leukedge benchmark`: score and time every variant on the same images.

A runner (this module) is kept apart from what it measures (`measure_*`), and each
measurement returns a plain dict, so results.json is just those dicts plus the machine.
Latency: warm-up invokes, then `repeats` timed invokes over real preprocessed images,
reported as p50/p90/p99 at 1 thread and at all cores. Cold start: a fresh
`edge-classify` process, spawn to exit. Peak memory: that process's max RSS.
"""

from __future__ import annotations

import datetime as _dt
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leukedge import __version__
from leukedge.options import option
from leukedge.edge.card import CardError, ModelCard, load_card_for_model
from leukedge.train.splits import SPLIT_FILE
from leukedge.edge.classifier import Classifier
from leukedge.edge.errors import LeukedgeError
from leukedge.edge.files import staged_dir, write_text_atomic
from leukedge.edge.preprocess import normalize
from leukedge.edge.runtime import default_threads
from leukedge.evaluation import Evaluation, KerasScorer, evaluate, gzip_bytes, load_part, scorer_for

from .machine import machine_info

SCHEMA = "leukedge.benchmark"
SCHEMA_VERSION = 2  # 2: schema of issue-8 round (input_size, runtime, reference, threshold_chosen_on)


class BenchmarkError(LeukedgeError, ValueError):
    pass


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


def _percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()),
            "images_per_second": float(1000.0 / a.mean())}


def measure_device_latency(model: Path, inputs: np.ndarray, threads: int, repeats: int, warmup: int) -> dict:
    """Single-image inference latency through the device's runtime (LiteRT or ONNX Runtime) at `threads`.

    inputs: float32 model inputs (N, S, S, 3). Returns {"threads", "p50", "p90", "p99", "mean" (ms),
    "images_per_second"} after `warmup` untimed runs."""
    clf = Classifier.load(model, threads=threads, verify=False)
    tensors = [clf.input_tensor_from_float(x) for x in inputs[: max(1, min(len(inputs), repeats))]]
    for i in range(warmup):
        clf.probabilities(tensors[i % len(tensors)])
    ms = []
    for i in range(repeats):
        t = time.perf_counter()
        clf.probabilities(tensors[i % len(tensors)])
        ms.append((time.perf_counter() - t) * 1e3)
    return {"threads": threads, **_percentiles(ms)}


def measure_keras_latency(model, inputs: np.ndarray, repeats: int, warmup: int) -> dict:
    from leukedge.tfcompat import tensorflow

    tf = tensorflow()
    call = tf.function(lambda x: model(x, training=False))  # graph mode: what a Keras deployment would run
    for i in range(max(1, warmup)):
        call(inputs[i % len(inputs)][None])
    ms = []
    for i in range(repeats):
        t = time.perf_counter()
        call(inputs[i % len(inputs)][None]).numpy()
        ms.append((time.perf_counter() - t) * 1e3)
    return {"threads": "tensorflow default", **_percentiles(ms)}


# Peak RSS is read from the child's own /proc/self/status (VmHWM) just before it exits.
# ru_maxrss is no use here: on Linux it keeps the high-water mark of the forked parent,
# which in a benchmark process holding TensorFlow is gigabytes.
_HWM_PROBE = (
    "import atexit, runpy, sys\n"
    "def _hwm():\n"
    "    try:\n"
    "        for line in open('/proc/self/status'):\n"
    "            if line.startswith('VmHWM'):\n"
    "                sys.stderr.write('LEUKEDGE_VMHWM_KB=' + line.split()[1] + '\\n')\n"
    "    except OSError:\n"
    "        pass\n"
    "atexit.register(_hwm)\n"
)


def _peak_rss_mib(stderr: str) -> float | None:
    for line in stderr.splitlines():
        if line.startswith("LEUKEDGE_VMHWM_KB="):
            return int(line.split("=", 1)[1]) / 1024.0
    return None


def measure_cold_start(model: Path, image: str, runs: int) -> dict:
    """A fresh `edge-classify` process on one image: wall time spawn->exit (median), and its peak RSS."""
    args = ["--model", str(model), "--quiet", "--format", "json", image]
    walls = []
    for _ in range(runs):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "leukedge.edge.cli", *args], capture_output=True, text=True)
        walls.append(time.perf_counter() - t)
        if r.returncode != 0:
            raise BenchmarkError(f"edge-classify failed on {model}: {r.stderr.strip()[-300:]}")
        json.loads(r.stdout.splitlines()[0])
    probe = _HWM_PROBE + f"sys.argv = ['edge-classify', *{args!r}]\nrunpy.run_module('leukedge.edge.cli', run_name='__main__')\n"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    return {"cold_start_s": float(np.median(walls)), "cold_start_runs": runs, "peak_rss_mib": _peak_rss_mib(r.stderr)}


def measure_keras_memory(model: Path, image: str) -> float | None:
    """Peak RSS of a fresh process that loads the Keras model and classifies one image."""
    code = _HWM_PROBE + (
        "import os; os.environ.setdefault('TF_USE_LEGACY_KERAS','1'); os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL','3')\n"
        "from leukedge.tfcompat import tensorflow; tf = tensorflow()\n"
        "from leukedge.edge.card import load_card_for_model; from leukedge.edge.preprocess import preprocess_file\n"
        f"card = load_card_for_model({str(model)!r}); m = tf.keras.models.load_model({str(model)!r}, compile=False)\n"
        f"print(float(m.predict(preprocess_file({image!r}, card.preprocessing)[None], verbose=0)[0, 1]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return _peak_rss_mib(r.stderr) if r.returncode == 0 else None


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


def benchmark(models, out, opts: BenchmarkOptions, data: str | None = None, baseline: str | None = None) -> dict:
    """Score and time every model on the same split part: the `leukedge benchmark` step.

    models: model files and/or folders (their .keras, .tflite, .onnx). out: folder for results.json,
    report.md, f1_vs_latency.png (all or nothing). data: the dataset folder if it moved. baseline: an
    earlier results.json to compare with (same schema version, else refused).
    Each model is scored on the part decoded at its own input size; agreement and |ΔP| are against the
    Keras parent when given, else float32. Returns the results dict (see README for the schema).
    Raises BenchmarkError, DatasetError/DataDriftError.
    """
    from leukedge.train.datasets import DatasetError
    from leukedge.train.splits import read_split, subsample

    t0 = time.perf_counter()
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
    decoded: dict[int, object] = {}

    def part_at(prep):
        if prep.size not in decoded:
            decoded[prep.size] = load_part(samples, prep, part)
        return decoded[prep.size]

    first = part_at(ref_card.preprocessing)
    all_threads = default_threads()
    print(f"leukedge benchmark: {len(found)} model(s) on {len(first.labels)} {part} images of {data_root}",
          file=sys.stderr)

    rows, evals = [], []
    runtime = None
    for path, card in found:
        print(f"leukedge benchmark: [{card.variant}] {path.name}", file=sys.stderr, flush=True)
        arrays = part_at(card.preprocessing).in_label_order(ds.labels, card.labels)
        x = normalize(arrays.images[: max(1, min(len(arrays.images), opts.repeats))], card.preprocessing)
        name = f"keras-{card.variant}" if card.model_format == "keras" else card.variant
        row = {"variant": name, "file": path.name, "format": card.model_format, "input_size": card.preprocessing.size,
               "quantization": (card.quantization or {}).get("mode", "none"), **_file_sizes(path)}
        if card.model_format == "keras":
            scorer = scorer_for(path, card)
            row["latency"] = {"all_cores": measure_keras_latency(scorer.model, x, opts.repeats, opts.warmup)}
            row["peak_rss_mib"] = measure_keras_memory(path, arrays.paths[0])
            row["cold_start_s"] = None
            row["runtime"] = "tensorflow"
        else:
            scorer = scorer_for(path, card, threads=all_threads)
            runtime = scorer.classifier.runtime
            row["runtime"] = " ".join(filter(None, (runtime.name, runtime.version, runtime.detail)))
            row["latency"] = {
                "1_thread": measure_device_latency(path, x, 1, opts.repeats, opts.warmup),
                "all_cores": measure_device_latency(path, x, all_threads, opts.repeats, opts.warmup),
            }
            if opts.cold_start:
                row.update(measure_cold_start(path, arrays.paths[0], opts.cold_start_runs))
        ev = evaluate(scorer, arrays, card.threshold, card.labels, card.positive_index, name=name)
        row["metrics"] = {k: ev.report[k] for k in ("f1_positive", "f1_negative", "macro_f1", "weighted_f1", "sensitivity",
                                                  "specificity", "accuracy", "auroc", "false_negatives", "false_positives")}
        row["threshold"] = card.threshold
        row["verdict"] = (card.verdict or {}).get("status", "-")
        row.update(_screening_figures(ev, arrays, card))
        rows.append(row)
        evals.append(ev)
    ref_i = next((i for i, r in enumerate(rows) if r["format"] == "keras"), None)
    if ref_i is None:  # no Keras parent given: compare with the float32 model instead
        ref_i = next((i for i, r in enumerate(rows) if r["variant"] == "float32"), 0)
    reference: Evaluation = evals[ref_i]
    for row, ev in zip(rows, evals):
        same_cells = len(ev.p) == len(reference.p)
        ev.against(reference) if same_cells else None
        row["agreement_with_float"] = ev.agreement
        row["max_abs_delta_p_vs_float"] = ev.max_abs_delta_p
    f32_ms = next((r["latency"]["all_cores"]["p50"] for r in rows if r["variant"] == "float32"), None)
    for row in rows:
        row["latency_ratio_to_float32"] = (row["latency"]["all_cores"]["p50"] / f32_ms) if f32_ms else None

    y = first.labels
    results = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "leukedge_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(runtime),
        "data": {"root": data_root, "part": part, "images": int(len(y)), "split": split.rule,
                 "file_list_sha256": split.file_list_sha256(ds),
                 "threshold_chosen_on": "validation",
                 "per_class": {ds.labels[k]: int((y == k).sum()) for k in range(2)}},
        "positive_label": ref_card.positive_label,
        "reference": rows[ref_i]["variant"],
        "settings": {"repeats": opts.repeats, "warmup": opts.warmup, "all_cores_threads": all_threads},
        "variants": rows,
        "seconds": None,
    }
    if base is not None:
        results["baseline"] = {"created": base.get("created"), "machine": base.get("machine", {}).get("cpu")}
        results["regressions"] = compare(results, base, opts)
    else:
        results["regressions"] = []
    results["seconds"] = round(time.perf_counter() - t0, 1)
    curves = {}
    for row in rows:
        is_pos, before, after = row.pop("_reliability")
        if row["calibration"]["temperature"] != 1.0:
            curves[f"{row['variant']} T=1"] = (is_pos, before)
        curves[f"{row['variant']}" + (f" T={row['calibration']['temperature']:.2f}"
                                      if row["calibration"]["temperature"] != 1.0 else "")] = (is_pos, after)
    md = report_markdown(results)
    with staged_dir(out) as stage:
        write_text_atomic(stage / "results.json", json.dumps(results, indent=2) + "\n")
        write_text_atomic(stage / "report.md", md)
        plot(results, stage / "f1_vs_latency.png")
        from leukedge.reports import plot_reliability

        plot_reliability(stage / "reliability.png", curves)
    print(md)
    return results


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


def report_markdown(results: dict) -> str:
    pos = results["positive_label"]
    m = results["machine"]
    d = results["data"]
    lines = [
        "# leukedge benchmark",
        "",
        f"{d['images']} **{d['part']}** images ({', '.join(f'{k} {v}' for k, v in d['per_class'].items())}) of "
        f"`{Path(d['root']).name}`, split '{d['split']}'; thresholds were chosen on {d.get('threshold_chosen_on', 'validation')}"
        + (" (the same images: optimistic)" if d["part"] == d.get("threshold_chosen_on", "validation") else "")
        + f". Machine: {m['cpu']}, {m['usable_cores']} cores, {m.get('tflite_runtime', '-')}, Python {m['python']}.",
        "",
        f"| variant | F1({pos}) [95 % CI] | {pos} sensitivity [95 % CI] | specificity | weighted F1 | AUROC | ECE (T=1 -> T) | agree | ms p50 (1 thr) | "
        f"ms p50 (all) | ms p99 (all) | img/s | x float32 | cold start s | peak MiB | MB | gzip MB | verdict |",
        "|---|" + "---:|" * 16 + "---|",
    ]
    for r in results["variants"]:
        mt, lat = r["metrics"], r["latency"]
        one = lat.get("1_thread", {}).get("p50")
        allc = lat["all_cores"]
        f = lambda v, fmt: "-" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)  # noqa: E731
        iv, cal = r.get("intervals", {}), r.get("calibration", {})
        band = lambda k: "" if not iv.get(k) or iv[k]["low"] is None else f" [{iv[k]['low']:.3f}, {iv[k]['high']:.3f}]"  # noqa: E731
        ece = "-" if "ece_after" not in cal else (f"{cal['ece_before']:.3f} -> {cal['ece_after']:.3f}"
                                                   if cal.get("temperature", 1.0) != 1.0 else f"{cal['ece_after']:.3f}")
        lines.append(
            f"| {r['variant']} | {mt['f1_positive']:.4f}{band('f1_positive')} | {mt['sensitivity']:.4f}{band('sensitivity')} | "
            f"{mt['specificity']:.4f} | "
            f"{mt['weighted_f1']:.4f} | {f(mt['auroc'], '.4f')} | {ece} | {f(r['agreement_with_float'], '.3f')} | {f(one, '.2f')} | "
            f"{allc['p50']:.2f} | {allc['p99']:.2f} | {allc['images_per_second']:.1f} | "
            f"{f(r['latency_ratio_to_float32'], '.2f')} | {f(r.get('cold_start_s'), '.2f')} | "
            f"{f(r.get('peak_rss_mib'), '.0f')} | {r['size_bytes'] / 1e6:.2f} | {r['gzip_bytes'] / 1e6:.2f} | {r['verdict']} |")
    if "baseline" in results:
        lines += ["", f"Compared with baseline of {results['baseline']['created']} ({results['baseline']['machine']}):"]
        if results["regressions"]:
            for g in results["regressions"]:
                lines.append(f"- REGRESSION {g['variant']}: {g['what']} {g['baseline']:.4f} -> {g['now']:.4f}")
        else:
            lines.append("- no regressions")
    subj = [r for r in results["variants"] if r.get("subject_level")]
    if subj:
        lines += ["", "Subject level (per-subject flagged fraction; AUROC across subjects):", ""]
        for r in subj:
            sl = r["subject_level"]
            lines.append(f"- {r['variant']}: {sl.get('n_subjects', '-')} subjects, AUROC of the flagged fraction "
                         f"{f(sl.get('auroc_flagged_fraction'), '.3f')}, of mean P {f(sl.get('auroc_mean_p'), '.3f')}")
    lines += ["", "95 % CI: Wilson for sensitivity; seeded percentile bootstrap (1,000 resamples, subjects when the "
              "split has them) for F1. ECE: 15 equal-width bins on P(positive), uncalibrated (T=1) and with the card's "
              "temperature (reliability.png).",
              "Latency: single-image `invoke()` after warm-up; cold start: fresh `edge-classify` process on one "
              "image, spawn to exit (median); peak MiB: that process's max RSS (Keras: a fresh TensorFlow process).",
              "Verdict: the optimize step's budget gate against the float parent."]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """f1_vs_latency.png (see leukedge.benchmarks.plots)."""
    from leukedge.benchmarks.plots import f1_vs_latency

    f1_vs_latency(results, path)
