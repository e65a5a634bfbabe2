"""The golden set: a few input tensors and the outputs the workstation measured, shipped beside a model.

`make_golden` writes `<model file>.golden.npz` and returns the dict a card keeps under
`golden`; on the device `leukedge.edge.selftest.self_test` runs the same tensors and
compares (same decisions; |dP| within 2 output quantization steps, or 1e-4 for float
outputs). The inputs are never patient images: drawn synthetic cells
(`leukedge.train.synth`), blends of two of them, and smooth noise pushed towards a class by
a gradient-free search, chosen so both classes appear with a margin from the threshold.

Needs only the device runtime (the `Classifier`), not TensorFlow, so it works for every
model format the classifier can run.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from leukedge.edge.errors import LeukedgeError
from leukedge.edge.decision import decide
from leukedge.edge.files import write_bytes_atomic
from leukedge.edge.selftest import (GOLDEN_SCHEMA, GOLDEN_SCHEMA_VERSION, golden_path_for, output_quantization,
                                    raw_outputs, tolerance_for)
from leukedge.train.synth import _cell

DEFAULT_MARGIN = 0.05


class GoldenError(LeukedgeError, ValueError):
    """A golden set that cannot be made (e.g. a model input the classifier cannot prepare)."""


def _smooth_noise(rng: np.random.Generator, size: int, grid: int = 8) -> np.ndarray:
    """Low-frequency RGB noise, uint8 size x size x 3: bilinear upsampling of a grid x grid field."""
    from PIL import Image

    field = rng.uniform(0, 255, (grid, grid, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(field, "RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)


def _jitter(rng: np.random.Generator, img: np.ndarray, amount: float = 24.0) -> np.ndarray:
    """img plus a little smooth noise (uint8)."""
    delta = _smooth_noise(rng, img.shape[0], grid=16).astype(np.float32) - 127.5
    return np.clip(img.astype(np.float32) + delta * (amount / 127.5), 0, 255).astype(np.uint8)


def _spread(items: list, k: int) -> list:
    """k of `items` (sorted by P) whose P values are spread evenly from the lowest to the highest."""
    if k >= len(items):
        return list(items)
    ps = np.array([c[2] for c in items])
    chosen: list[int] = []
    for target in np.linspace(ps[0], ps[-1], k):
        free = [i for i in range(len(items)) if i not in chosen]
        chosen.append(min(free, key=lambda i: abs(ps[i] - target)))
    return [items[i] for i in sorted(chosen)]


def _candidates(rng: np.random.Generator, size: int, n: int) -> list[tuple[str, np.ndarray]]:
    """About 5n uint8 images: synthetic blast-like and normal-like cells, blends of the two, smooth noise."""
    out: list[tuple[str, np.ndarray]] = []
    cells = [(_cell(rng, size, blast=bool(i % 2)), bool(i % 2)) for i in range(3 * n)]
    out += [("synthetic-cell-" + ("blast" if b else "normal"), c) for c, b in cells]
    blasts = [c for c, b in cells if b]
    normals = [c for c, b in cells if not b]
    for _ in range(n):
        a = rng.uniform(0.25, 0.75)
        mix = a * blasts[int(rng.integers(len(blasts)))] + (1 - a) * normals[int(rng.integers(len(normals)))]
        out.append(("synthetic-cell-blend", np.clip(np.rint(mix), 0, 255).astype(np.uint8)))
    out += [("smooth-noise", _smooth_noise(rng, size, grid=int(rng.choice([1, 2, 4, 8, 16, 32])))) for _ in range(n)]
    return out


def _search(clf, p_of, rng: np.random.Generator, start: np.ndarray, target_positive: bool, threshold: float,
            margin: float, budget: int) -> tuple[np.ndarray, float, int]:
    """Gradient-free (1+1) evolution strategy towards one class: add smooth noise to `start`,
    keep the trial if it moves P(positive) the wanted way; the step grows on success and
    shrinks on failure (the 1/5th rule, Rechenberg 1973).

    Returns (uint8 image, its P(positive), invokes used); stops once P is past threshold +- margin.
    """
    size = start.shape[0]
    best = start
    p_best = p_of(clf.input_tensor(best))
    sign = 1.0 if target_positive else -1.0
    used = 1
    step = 64.0
    while used < budget:
        if (p_best >= threshold + margin) if target_positive else (p_best < threshold - margin):
            break
        delta = _smooth_noise(rng, size, grid=int(rng.choice([2, 4, 8, 16, 32]))).astype(np.float32) - 127.5
        trial = np.clip(best.astype(np.float32) + delta * (step / 127.5), 0, 255).astype(np.uint8)
        p = p_of(clf.input_tensor(trial))
        used += 1
        if sign * (p - p_best) > 0:
            best, p_best = trial, p
            step = min(255.0, step * 1.5)
        else:
            step = max(4.0, step * 0.9)
    return best, p_best, used


def make_golden(clf, out_path: str | os.PathLike | None = None, n: int = 16, seed: int = 0,
                threshold: float | None = None, margin: float | None = None, search_budget: int = 400) -> dict[str, Any]:
    """Write a golden set for `clf`'s model and return the dict its card stores under `golden`.

    clf: a `leukedge.edge.classifier.Classifier` (or anything with `card`, `input_tensor(rgb uint8
      HxWx3) -> model input tensor (1,H,W,3)` and `probabilities(tensor) -> (labels,) float32`).
    out_path: the .npz to write; default `<model file>.golden.npz` beside `clf.model_path`.
    n: number of inputs (>= 2; half each side of the threshold when the model allows it).
    threshold: the decision threshold the golden decisions are taken at; default the card's
      (pass it when the card's threshold was changed after `clf` was built, as optimize does).
    margin: least |P - threshold| of a chosen input; default min(0.05, thr/2, (1-thr)/2), and at
      least 3x the largest |dP| the self-test tolerance allows, so that outputs within tolerance
      keep their decisions.
    search_budget: most model invocations spent pushing noise towards a class that the drawn
      candidates do not reach.

    Inputs: synthetic cells drawn at the card's size, blends of two of them, smooth noise, all
    seeded by `seed` (reproducible); never images from a dataset. Within each class the chosen
    inputs are spread evenly over the P range seen. If the model cannot be brought to one side,
    the set is filled from the other and the returned counts say so.

    The file (numpy .npz, compressed, no pickles) holds `inputs` (n,H,W,3) in the model's input
    dtype; `outputs` (n,labels) float32, the model's own output dequantized (logits for a logit
    model), `probabilities` (n,labels) and `p_positive` (n,) float32, exactly as the workstation's
    runtime returned them; and `meta` (JSON: schema, model SHA-256, threshold, positive index,
    output kind/scale, output activation and temperature, tolerance, sources).
    Make it after the card's threshold and temperature are final: both are recorded.

    Returns {"file": name relative to the model's folder, "sha256", "n", "output_kind":
    "integer"|"float", "output_scale", "tolerance": {"max_abs_delta", "output_steps"},
    "threshold", "margin", "positives", "negatives", "inputs": description}.
    Raises GoldenError if n < 2 or the classifier cannot prepare inputs.
    """
    if n < 2:
        raise GoldenError(f"golden set needs n >= 2 inputs, got {n}")
    card = clf.card
    model_path = Path(getattr(clf, "model_path", card.model_file))
    out = Path(out_path) if out_path is not None else golden_path_for(model_path)
    thr = float(card.threshold if threshold is None else threshold)
    pos = card.positive_index
    kind, scale = output_quantization(clf)
    tol = tolerance_for(kind, scale)
    if margin is None:
        margin = min(DEFAULT_MARGIN, thr / 2, (1 - thr) / 2)
    temperature = float(getattr(clf, "temperature", 1.0))
    # |dP| an output difference within tolerance can cause: the same for probability outputs;
    # for logits softmax's slope is at most 1/4 per unit of (z_pos - z_neg)/T, so <= tol/(2T) (bounded by tol/T)
    tol_p = tol["max_abs_delta"] / (temperature if card.output == "logits" else 1.0)
    margin = max(float(margin), 3 * tol_p)
    size = int(card.preprocessing.size)
    rng = np.random.default_rng(seed)

    def p_of(x: np.ndarray) -> float:
        return float(clf.probabilities(x)[pos])

    pool = _candidates(rng, size, n)
    try:
        scored = [(src, img, p_of(clf.input_tensor(img))) for src, img in pool]
    except (ValueError, IndexError) as exc:
        raise GoldenError(f"{model_path}: cannot run golden candidates through the model: {exc}") from None
    want_pos = n // 2
    want = {True: want_pos, False: n - want_pos}

    def eligible(side: bool) -> list[tuple[str, np.ndarray, float]]:
        ok = [c for c in scored if (c[2] >= thr + margin if side else c[2] < thr - margin)]
        return sorted(ok, key=lambda c: c[2])

    budget = search_budget
    for side in (True, False):
        past = (lambda p: p >= thr + margin) if side else (lambda p: p < thr - margin)
        while len(eligible(side)) < want[side] and budget > 1:
            ok = eligible(side)
            if ok:  # a small variation of an input already there is most likely there too
                base = ok[int(rng.integers(len(ok)))][1]
                img, p, used = _search(clf, p_of, rng, _jitter(rng, base), side, thr, margin, budget)
            else:  # start from the candidate closest to the wanted side, then push it across
                start = max(scored, key=lambda c: c[2] if side else -c[2])[1]
                img, p, used = _search(clf, p_of, rng, start, side, thr, margin, budget)
            budget -= used
            scored.append(("optimised-noise", img, p))
            if not past(p):
                break  # this model does not go there within the budget; fill from the other side

    chosen: list[tuple[str, np.ndarray, float]] = []
    for side in (True, False):
        chosen += _spread(eligible(side), want[side])
    if len(chosen) < n:  # one side short: top up with the widest-margin leftovers of any side
        taken = {id(c[1]) for c in chosen}
        rest = sorted((c for c in scored if id(c[1]) not in taken), key=lambda c: -abs(c[2] - thr))
        chosen += rest[: n - len(chosen)]

    inputs = np.concatenate([clf.input_tensor(img) for _, img, _ in chosen])
    outputs = np.stack([raw_outputs(clf, x[None]) for x in inputs])
    probs = np.stack([np.asarray(clf.probabilities(x[None]), dtype=np.float32) for x in inputs])
    p_pos = probs[:, pos].astype(np.float32)
    decisions = np.asarray(decide(p_pos, thr), dtype=bool)
    positives = int(decisions.sum())
    meta = {
        "schema": GOLDEN_SCHEMA, "schema_version": GOLDEN_SCHEMA_VERSION,
        "model_file": card.model_file, "model_sha256": card.model_sha256,
        "threshold": thr, "positive_index": pos, "labels": list(card.labels),
        "output_kind": kind, "output_scale": scale, "tolerance": tol, "margin": margin, "seed": seed,
        "output": card.output, "temperature": temperature,
        "sources": [src for src, _, _ in chosen],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "note": "synthetic cells, blends and optimised noise; no patient images",
    }
    buf = io.BytesIO()
    np.savez_compressed(buf, inputs=inputs, outputs=outputs, probabilities=probs, p_positive=p_pos,
                        meta=np.array(json.dumps(meta)))
    data = buf.getvalue()
    write_bytes_atomic(out, data)
    try:
        rel = out.resolve().relative_to(model_path.resolve().parent).as_posix()
    except ValueError:
        rel = out.name
    return {
        "file": rel, "sha256": hashlib.sha256(data).hexdigest(), "n": int(len(inputs)),
        "output_kind": kind, "output_scale": scale, "tolerance": tol, "threshold": thr, "margin": round(margin, 6),
        "positives": positives, "negatives": int(len(inputs) - positives),
        "inputs": "synthetic cells, blends and optimised noise (no patient images)",
    }
