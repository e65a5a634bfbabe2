"""`edge-choose`: on the device itself, time each installed engine on each model and write the choice.

    edge-choose MODELS IMAGES [--engines litert,onnxruntime,openvino] [--rounds 30] [--threads N]
                [--require-signature PUBKEY] [--out FILE] [--no-self-test]

MODELS: an optimize folder (every .tflite/.onnx in it with its card) or one model file. IMAGES: a
folder of cell images like the ones the device will classify (decode cost is part of the whole path).

For every model and every installed engine that runs its format (edge.engines), it measures, in
alternating rounds (each round runs every configuration once, in a new order, so a passing load spike
hits all alike; medians over --rounds rounds):
  bare_ms    one inference on a prepared tensor (Classifier.probabilities), latency layout (one
             engine instance on all usable cores)
  single_ms  the whole path for one image file (Classifier.predict_one: decode, checks, tensor,
             inference, decision), latency layout: what `edge-classify -m MODEL one.jpg` costs
  folder_ms  per image over the IMAGES folder in the throughput layout (one single-threaded engine
             instance per core, edge.throughput.ClassifierPool, the rows edge-classify writes):
             what `edge-classify -m MODEL FOLDER` costs per image (median of 3 passes)
and runs the golden-set self-test with that engine (an engine whose decisions differ from the
workstation's on the golden set is never chosen; its max |dP| is recorded).

The choice file (default `<folder>/choice.json`) records the machine (edge.machine), every
measurement and two kinds of choice:
  engines[model file] = {"single": engine, "folder": engine}: the fastest engine for that model,
      for `edge-classify -m MODEL` (which keeps meaning that model and picks only the engine);
  pick = {"single": {...}, "folder": {...}}: the fastest (model, engine) among the models whose card
      verdict is "pass" (the optimize gate) and, under --require-signature, whose signature verifies
      with that key. Used only when asked explicitly (edge-classify's folder/choice option).
A choice belongs to one machine and to the exact model files (SHA-256): `engine_for` and `pick_from`
ignore or refuse a choice whose machine or model changed (both in edge.choice, which
edge-classify reads; re-exported here).

Exit codes: 0 a choice was written; 2 usage, no usable model (each refusal is one line), or output error.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .choice import (  # noqa: F401 - re-exported: edge.choose is where callers have always found them
    CHOICE_FILE, CHOICE_SCHEMA, CHOICE_VERSION, LAYOUTS, ChoiceError, Pick, engine_for, pick_from, read_choice,
    signature_ok,
)
from .errors import LeukedgeError

MODEL_SUFFIXES = (".tflite", ".onnx")
DEFAULT_ROUNDS = 30  # issue 22: medians of at least 30 alternating runs
FOLDER_PASSES = 3
_PROG = "edge-choose"


@dataclass
class Candidate:
    """One (model, engine) configuration being measured."""

    model: Path
    engine: str
    clf: object
    load_s: float
    verdict: str | None
    signed: bool | None
    pool: object | None = None  # the throughput layout's ClassifierPool, opened on first use


# -- which models -------------------------------------------------------------------------------------


def find_models(target: str | os.PathLike) -> list[Path]:
    """Model files to consider: `target` itself when it is a file, else the folder's *.tflite and *.onnx that
    have a card beside them, sorted by name (temporary files of optimize, `*.float-tmp.onnx`, are skipped).

    Raises ChoiceError when target does not exist or the folder holds no model.
    """
    p = Path(target)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise ChoiceError(f"{p}: no such model file or folder")
    from .card import find_card_for

    found = []
    for m in sorted(p.iterdir()):
        if m.suffix not in MODEL_SUFFIXES or not m.is_file() or m.name.endswith(".float-tmp.onnx"):
            continue
        try:
            find_card_for(m)
        except LeukedgeError:
            continue
        found.append(m)
    if not found:
        raise ChoiceError(f"{p}: no .tflite or .onnx model with its card in this folder")
    return found


def _images(folder: str | os.PathLike, limit: int = 64) -> list[str]:
    from .files import is_ignored_name
    from .preprocess import is_image_name

    d = Path(folder)
    if not d.is_dir():
        raise ChoiceError(f"{d}: images folder does not exist")
    files = sorted(str(f) for f in d.rglob("*") if f.is_file() and is_image_name(f) and not is_ignored_name(f.name))
    if not files:
        raise ChoiceError(f"{d}: no images in this folder")
    return files[:limit]


# -- measuring ----------------------------------------------------------------------------------------


def open_candidates(models: list[Path], engines: list[str] | None, threads: int,
                    require_signature: str | None = None, log=None) -> tuple[list[Candidate], list[dict]]:
    """Open every (model, installed engine for its format) pair in the latency layout (`threads` threads).

    engines: restrict to these names (None: every installed engine). require_signature: a public key;
    models whose signature does not verify are left out (neither timed nor chosen).
    Returns (candidates, excluded), excluded = [{"model", "engine", "reason"}] for every pair that could
    not be used (card, signature, engine load failure), each reason one line.
    """
    from .card import load_card_for_model
    from .classifier import Classifier
    from .engines import installed_engines_for, open_with_engine

    log = log or (lambda _m: None)
    cands, excluded = [], []
    for m in models:
        try:
            card = load_card_for_model(m)
        except LeukedgeError as exc:
            excluded.append({"model": m.name, "engine": None, "reason": str(exc)})
            continue
        signed, why = signature_ok(m, require_signature)
        if signed is False:
            excluded.append({"model": m.name, "engine": None, "reason": why})
            continue
        verdict = (card.verdict or {}).get("status")
        for e in installed_engines_for(card.model_format):
            if engines and e not in engines:
                continue
            t = time.perf_counter()
            try:
                backend = open_with_engine(m, card.model_format, e, threads)
                clf = Classifier(m, card, threads=threads, backend=backend)
            except LeukedgeError as exc:
                excluded.append({"model": m.name, "engine": e, "reason": str(exc)})
                continue
            cands.append(Candidate(m, e, clf, time.perf_counter() - t, verdict, signed))
            log(f"{m.name} on {e}: opened in {cands[-1].load_s:.2f} s")
    return cands, excluded


def _rounds(cands: list[Candidate], rounds: int, fn, seed: int = 0) -> list[list[float]]:
    """Milliseconds of fn(candidate, round) for every candidate, `rounds` alternating rounds (new order each)."""
    rng = random.Random(seed)
    samples: list[list[float]] = [[] for _ in cands]
    order = list(range(len(cands)))
    for r in range(rounds):
        rng.shuffle(order)
        for i in order:
            t = time.perf_counter()
            fn(cands[i], r)
            samples[i].append((time.perf_counter() - t) * 1e3)
    return samples


def _folder_ms(c: Candidate, files: list[str], workers: int) -> float:
    """Milliseconds per image for `files` through edge-classify's throughput layout and row writer."""
    import tempfile

    from .app.handling import Counts, Emitter, classify_file
    from .app.rows import ModelInfo, RowWriter
    from .app.sinks import AppendFileSink
    from .throughput import ClassifierPool

    if c.pool is None:
        c.pool = ClassifierPool(_single_thread(c), workers, threads=1)
    pool = c.pool
    model = ModelInfo.from_classifier(c.clf)
    with tempfile.TemporaryDirectory(prefix="leukedge-choose-") as tmp:
        sink = AppendFileSink(Path(tmp) / "rows.jsonl")
        emitter = Emitter(RowWriter("json", sink, model), None, Counts())
        t = time.perf_counter()
        for row in pool.map(lambda clf, f: classify_file(clf, f, model), files):
            emitter.emit(row)
        dt = time.perf_counter() - t
        sink.close()
    return dt * 1e3 / len(files)


def _single_thread(c: Candidate):
    """The candidate's model and engine opened again with one thread (worker 0 of the throughput layout)."""
    from .classifier import Classifier
    from .engines import open_with_engine

    backend = open_with_engine(c.model, c.clf.card.model_format, c.engine, 1)
    return Classifier(c.model, c.clf.card, threads=1, backend=backend)


def measure(cands: list[Candidate], files: list[str], rounds: int, workers: int, self_test: bool = True) -> list[dict]:
    """Time every candidate (bare, single, folder; see the module docstring) and self-test it.

    Returns one dict per candidate: {"model", "engine", "engine_version", "detail", "verdict", "signed",
    "load_s", "bare_ms", "single_ms", "folder_ms", each with "_q1"/"_q3" quartiles where several rounds,
    "self_test": {"ok", "agreement", "max_abs_delta_p", "message"} or None}.
    """
    import numpy as np

    tensors = []
    for c in cands:
        size = c.clf.card.preprocessing.size
        tensors.append(c.clf.input_tensor(np.full((size, size, 3), 128, np.uint8)))
        for _ in range(3):  # warm-up
            c.clf.probabilities(tensors[-1])
        c.clf.predict_one(files[0])
    index = {id(c): i for i, c in enumerate(cands)}
    bare = _rounds(cands, rounds, lambda c, r: c.clf.probabilities(tensors[index[id(c)]]))
    single = _rounds(cands, rounds, lambda c, r: c.clf.predict_one(files[r % len(files)]), seed=1)
    for c in cands:  # warm-up of the throughput layout (opens the workers' engines)
        _folder_ms(c, files[:workers * 2], workers)
    folder = [[] for _ in cands]
    order = list(range(len(cands)))
    rng = random.Random(2)
    for _ in range(FOLDER_PASSES):
        rng.shuffle(order)
        for i in order:
            folder[i].append(_folder_ms(cands[i], files, workers))
    out = []
    for i, c in enumerate(cands):
        if c.pool is not None:
            c.pool.close()
            c.pool = None
        row = {"model": c.model.name, "engine": c.engine, "engine_version": c.clf.runtime.version,
               "detail": c.clf.runtime.detail, "verdict": c.verdict, "signed": c.signed, "load_s": round(c.load_s, 3)}
        for key, s in (("bare_ms", bare[i]), ("single_ms", single[i]), ("folder_ms", folder[i])):
            row[key] = round(statistics.median(s), 3)
            if len(s) >= 4:
                q = statistics.quantiles(s, n=4)
                row[key[:-3] + "_q1_ms"], row[key[:-3] + "_q3_ms"] = round(q[0], 3), round(q[2], 3)
        row["self_test"] = None
        if self_test:
            from .selftest import self_test as run_self_test

            rep = run_self_test(c.clf)
            row["self_test"] = {"ok": rep.ok, "agreement": rep.agreement, "max_abs_delta_p": rep.max_abs_delta_p,
                                "message": rep.message, "golden_set": bool(c.clf.card.golden)}
        out.append(row)
    return out


# -- choosing -----------------------------------------------------------------------------------------


def _usable(row: dict) -> bool:
    """An engine may be chosen for a model when the golden set's decisions all agree, or when no self-test ran
    or the card has no golden set (nothing to check against: the row says so). A golden set that is present
    but unreadable or altered makes the model unusable.

    Not `ok`: the golden set's output tolerance (1e-4 for float outputs) is met by the engine the set was
    measured with; another engine running the same QDQ int8 file rounds differently inside the network
    while deciding the same way. The decisions are what the gate measured.
    """
    st = row.get("self_test")
    return st is None or not st.get("golden_set") or st.get("agreement") == 1.0


def decide(rows: list[dict]) -> tuple[dict, dict]:
    """(engines, pick) from measure()'s rows; see the module docstring. Ties go to the format's default engine.

    engines = {model file: {"single": engine, "folder": engine}} over usable rows; pick = {layout: {"model",
    "engine", "ms"} or None} over usable rows whose verdict is "pass" (and signed, when a key was given: unsigned
    ones were never measured).
    """
    from .engines import ENGINE_NAMES

    rank = {e: i for i, e in enumerate(ENGINE_NAMES)}
    usable = [r for r in rows if _usable(r)]
    engines: dict = {}
    for layout in LAYOUTS:
        key = f"{layout}_ms"
        for r in sorted(usable, key=lambda r: (r[key], rank.get(r["engine"], 99))):
            engines.setdefault(r["model"], {}).setdefault(layout, r["engine"])
    pick = {}
    for layout in LAYOUTS:
        key = f"{layout}_ms"
        gated = sorted((r for r in usable if r.get("verdict") == "pass"), key=lambda r: (r[key], rank.get(r["engine"], 99)))
        pick[layout] = {"model": gated[0]["model"], "engine": gated[0]["engine"], "ms": gated[0][key]} if gated else None
    return engines, pick


def choose(target: str | os.PathLike, images: str | os.PathLike, engines: list[str] | None = None,
           rounds: int = DEFAULT_ROUNDS, threads: int | None = None, require_signature: str | None = None,
           out: str | os.PathLike | None = None, self_test: bool = True, log=None) -> dict:
    """Measure and write the choice file; returns its content.

    target: an optimize folder or one model file. images: a folder of cell images (first 64 used).
    engines: restrict to these (None: every installed one). rounds: alternating rounds for bare and single
    (>= 1; issue 22's figures use >= 30). threads: the latency layout's threads (None: usable cores); the
    folder layout uses one single-threaded instance per usable core. require_signature: a public key file.
    out: the choice file (default: choice.json in the folder, or beside the model file).
    Raises ChoiceError (one line) when nothing could be measured; OSError when the file cannot be written.
    """
    from .files import write_text_atomic
    from .machine import machine_record
    from .runtime import default_threads

    log = log or (lambda _m: None)
    if rounds < 1:
        raise ChoiceError(f"--rounds must be at least 1, got {rounds}")
    models = find_models(target)
    files = _images(images)
    threads = int(threads or default_threads())
    workers = default_threads()
    cands, excluded = open_candidates(models, engines, threads, require_signature, log)
    if not cands:
        reasons = "; ".join(f"{e['model']}{' on ' + e['engine'] if e['engine'] else ''}: {e['reason']}" for e in excluded)
        raise ChoiceError(f"{target}: no model could be opened with any engine ({reasons or 'no engine installed'})")
    rows = measure(cands, files, rounds, workers, self_test)
    for r in rows:
        if not _usable(r):
            excluded.append({"model": r["model"], "engine": r["engine"],
                             "reason": f"golden-set decisions differ on this engine: {r['self_test']['message']}"})
    eng, pick = decide(rows)
    shas = {c.model.name: c.clf.card.model_sha256 for c in cands}
    folder = Path(target) if Path(target).is_dir() else Path(target).parent
    doc = {"schema": CHOICE_SCHEMA, "schema_version": CHOICE_VERSION,
           "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine_record(threads=threads), "layouts": {"single": {"workers": 1, "threads": threads},
                                                                  "folder": {"workers": workers, "threads": 1}},
           "rounds": rounds, "folder_passes": FOLDER_PASSES, "images": {"folder": str(images), "count": len(files)},
           "require_signature": bool(require_signature), "model_sha256": shas,
           "measurements": rows, "excluded": excluded, "engines": eng, "pick": pick,
           "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None}
    path = Path(out) if out else folder / CHOICE_FILE
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n")
    doc["_path"] = str(path)
    return doc

# -- command line -------------------------------------------------------------------------------------


def _table(doc: dict) -> str:
    lines = [f"{'model':28s} {'engine':12s} {'load s':>7s} {'bare ms':>8s} {'single ms':>9s} {'folder ms':>9s}  "
             "verdict  self-test"]
    for r in sorted(doc["measurements"], key=lambda r: (r["model"], r["single_ms"])):
        st = r.get("self_test")
        if st is None:
            stx = "-"
        elif not st.get("golden_set"):
            stx = "no golden set in the card"
        else:
            stx = "ok" if st["ok"] else "decisions " + ("agree" if st["agreement"] == 1.0 else "DIFFER")
        if st is not None and st.get("max_abs_delta_p") is not None:
            stx += f" (max |dP| {st['max_abs_delta_p']:.2g})"
        lines.append(f"{r['model'][:28]:28s} {r['engine']:12s} {r['load_s']:7.2f} {r['bare_ms']:8.2f} "
                     f"{r['single_ms']:9.2f} {r['folder_ms']:9.2f}  {str(r['verdict']):7s}  {stx}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """The `edge-choose` console script (see the module docstring); ends with sys.exit(code)."""
    from .engines import ENGINE_NAMES
    from .machine import machine_line

    ap = argparse.ArgumentParser(prog=_PROG, description=__doc__.split("\n\n")[0].split(": ", 1)[-1])
    ap.add_argument("models", help="an optimize folder, or one model file")
    ap.add_argument("images", help="a folder of cell images like those the device will classify")
    ap.add_argument("--engines", help=f"comma-separated subset of {','.join(ENGINE_NAMES)} [default: all installed]")
    ap.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="alternating rounds per figure [30]")
    ap.add_argument("--threads", type=int, help="threads of the latency layout [usable cores]")
    ap.add_argument("--require-signature", metavar="PUBKEY", help="pick only models whose signature verifies")
    ap.add_argument("--out", help="the choice file [MODELS/choice.json]")
    ap.add_argument("--no-self-test", action="store_true", help="skip the golden-set check of each engine")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)

    def say(msg: str) -> None:
        if not args.quiet:
            print(f"{_PROG}: {msg}", file=sys.stderr, flush=True)

    def fail(msg: str) -> None:
        print(f"{_PROG}: error: {' '.join(str(msg).split())}", file=sys.stderr)
        sys.exit(2)

    engines = None
    if args.engines:
        engines = [e.strip().lower() for e in args.engines.split(",") if e.strip()]
        unknown = [e for e in engines if e not in ENGINE_NAMES]
        if unknown:
            fail(f"--engines: unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ENGINE_NAMES)}")
    if args.threads is not None and args.threads < 1:
        fail(f"--threads must be at least 1, got {args.threads}")
    if args.require_signature and not Path(args.require_signature).is_file():
        fail(f"--require-signature: {args.require_signature}: no such key file")
    say(machine_line())
    try:
        doc = choose(args.models, args.images, engines, args.rounds, args.threads, args.require_signature,
                     args.out, not args.no_self_test, say)
    except LeukedgeError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write the choice file: {exc}")
    for e in doc["excluded"]:
        say(f"left out: {e['model']}{' on ' + e['engine'] if e['engine'] else ''}: {e['reason']}")
    print(_table(doc))
    for layout in LAYOUTS:
        p = doc["pick"][layout]
        print(f"{layout:6s}: " + (f"{p['model']} on {p['engine']} ({p['ms']:.2f} ms/image)" if p else
                                   "no model passed its gate" + (" and signature check" if args.require_signature else "")))
    say(f"wrote {doc['_path']}")
    sys.exit(0)


if __name__ == "__main__":
    main()
