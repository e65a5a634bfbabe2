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
from dataclasses import dataclass, field
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
    g = _plan(clf, out_path, n, seed, threshold, margin)
    _score_candidates(g)
    _push_towards_each_side(g, search_budget)
    return _write(g, _choose(g))


@dataclass
class _Golden:
    """One golden set in the making (make_golden's state): what it is measured against, and the inputs scored.

    thr: decision threshold; pos: positive output index; kind, scale, tol: the output quantization
    and the self-test tolerance (edge.selftest); margin: least |P - thr| of a chosen input;
    want: inputs wanted per side (True: positive); scored: (source, uint8 image, P(positive)).
    """

    clf: Any
    model_path: Path
    out: Path
    n: int
    seed: int
    thr: float
    pos: int
    kind: str
    scale: Any
    tol: dict
    margin: float
    temperature: float
    size: int
    rng: np.random.Generator
    want: dict[bool, int]
    scored: list[tuple[str, np.ndarray, float]] = field(default_factory=list)

    def p_of(self, x: np.ndarray) -> float:
        """P(positive) of one model input tensor."""
        return float(self.clf.probabilities(x)[self.pos])

    def past(self, p: float, side: bool) -> bool:
        """Whether P lies on `side` of the threshold by at least the margin."""
        return p >= self.thr + self.margin if side else p < self.thr - self.margin

    def eligible(self, side: bool) -> list[tuple[str, np.ndarray, float]]:
        """The scored inputs past the margin on `side`, sorted by P."""
        return sorted((c for c in self.scored if self.past(c[2], side)), key=lambda c: c[2])


def _plan(clf, out_path, n: int, seed: int, threshold: float | None, margin: float | None) -> _Golden:
    """make_golden's arguments resolved against the card and the output quantization (its docstring)."""
    card = clf.card
    model_path = Path(getattr(clf, "model_path", card.model_file))
    out = Path(out_path) if out_path is not None else golden_path_for(model_path)
    thr = float(card.threshold if threshold is None else threshold)
    kind, scale = output_quantization(clf)
    tol = tolerance_for(kind, scale)
    if margin is None:
        margin = min(DEFAULT_MARGIN, thr / 2, (1 - thr) / 2)
    temperature = float(getattr(clf, "temperature", 1.0))
    # |dP| an output difference within tolerance can cause: the same for probability outputs;
    # for logits softmax's slope is at most 1/4 per unit of (z_pos - z_neg)/T, so <= tol/(2T) (bounded by tol/T)
    tol_p = tol["max_abs_delta"] / (temperature if card.output == "logits" else 1.0)
    want_pos = n // 2
    return _Golden(clf, model_path, out, n, seed, thr, card.positive_index, kind, scale, tol,
                   max(float(margin), 3 * tol_p), temperature, int(card.preprocessing.size),
                   np.random.default_rng(seed), {True: want_pos, False: n - want_pos})


def _score_candidates(g: _Golden) -> None:
    """Draw the candidate pool (_candidates) and score each through the model into g.scored."""
    pool = _candidates(g.rng, g.size, g.n)
    try:
        g.scored = [(src, img, g.p_of(g.clf.input_tensor(img))) for src, img in pool]
    except (ValueError, IndexError) as exc:
        raise GoldenError(f"{g.model_path}: cannot run golden candidates through the model: {exc}") from None


def _push_towards_each_side(g: _Golden, budget: int) -> None:
    """Where a side has too few inputs past the margin, search (_search) for more, within `budget` invocations."""
    for side in (True, False):
        while len(g.eligible(side)) < g.want[side] and budget > 1:
            ok = g.eligible(side)
            if ok:  # a small variation of an input already there is most likely there too
                base = ok[int(g.rng.integers(len(ok)))][1]
                start = _jitter(g.rng, base)
            else:  # start from the candidate closest to the wanted side, then push it across
                start = max(g.scored, key=lambda c: c[2] if side else -c[2])[1]
            img, p, used = _search(g.clf, g.p_of, g.rng, start, side, g.thr, g.margin, budget)
            budget -= used
            g.scored.append(("optimised-noise", img, p))
            if not g.past(p, side):
                break  # this model does not go there within the budget; fill from the other side


def _choose(g: _Golden) -> list[tuple[str, np.ndarray, float]]:
    """n inputs: each side's wanted count spread over its P range, topped up with the widest-margin leftovers."""
    chosen: list[tuple[str, np.ndarray, float]] = []
    for side in (True, False):
        chosen += _spread(g.eligible(side), g.want[side])
    if len(chosen) < g.n:  # one side short: top up with the widest-margin leftovers of any side
        taken = {id(c[1]) for c in chosen}
        rest = sorted((c for c in g.scored if id(c[1]) not in taken), key=lambda c: -abs(c[2] - g.thr))
        chosen += rest[: g.n - len(chosen)]
    return chosen


def _write(g: _Golden, chosen: list[tuple[str, np.ndarray, float]]) -> dict[str, Any]:
    """Run the chosen inputs, write the .npz (make_golden's docstring) and return the card's `golden` dict."""
    clf, card = g.clf, g.clf.card
    inputs = np.concatenate([clf.input_tensor(img) for _, img, _ in chosen])
    outputs = np.stack([raw_outputs(clf, x[None]) for x in inputs])
    probs = np.stack([np.asarray(clf.probabilities(x[None]), dtype=np.float32) for x in inputs])
    p_pos = probs[:, g.pos].astype(np.float32)
    decisions = np.asarray(decide(p_pos, g.thr), dtype=bool)
    positives = int(decisions.sum())
    meta = {
        "schema": GOLDEN_SCHEMA, "schema_version": GOLDEN_SCHEMA_VERSION,
        "model_file": card.model_file, "model_sha256": card.model_sha256,
        "threshold": g.thr, "positive_index": g.pos, "labels": list(card.labels),
        "output_kind": g.kind, "output_scale": g.scale, "tolerance": g.tol, "margin": g.margin, "seed": g.seed,
        "output": card.output, "temperature": g.temperature,
        "sources": [src for src, _, _ in chosen],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "note": "synthetic cells, blends and optimised noise; no patient images",
    }
    buf = io.BytesIO()
    np.savez_compressed(buf, inputs=inputs, outputs=outputs, probabilities=probs, p_positive=p_pos,
                        meta=np.array(json.dumps(meta)))
    data = buf.getvalue()
    write_bytes_atomic(g.out, data)
    try:
        rel = g.out.resolve().relative_to(g.model_path.resolve().parent).as_posix()
    except ValueError:
        rel = g.out.name
    return {
        "file": rel, "sha256": hashlib.sha256(data).hexdigest(), "n": int(len(inputs)),
        "output_kind": g.kind, "output_scale": g.scale, "tolerance": g.tol, "threshold": g.thr,
        "margin": round(g.margin, 6), "positives": positives, "negatives": int(len(inputs) - positives),
        "inputs": "synthetic cells, blends and optimised noise (no patient images)",
    }
