"""One evaluation: decode a split part once, score it with any model kind, decide, report, compare.

Every step that measures a model — train (validation/test after fitting), optimize (each variant
against its float parent), benchmark (every variant on the same images) — goes through here:

    data = load_part(samples, prep, "validation")          # decode once, uint8 at the card's size
    scorer = scorer_for(model_path, card)                  # Keras, or the device's own Classifier (TFLite, ONNX)
    ev = evaluate(scorer, data, card.threshold, card.labels, card.positive_index, reference=parent_ev)

A scorer is anything with `name`, `format` and `p_positive(images) -> (N,) P(positive)`; a new
model format plugs in by giving the device Classifier a backend (edge.runtime.open_backend), or
by a scorer class of its own. Decisions are `edge.decision.decide`, nowhere else.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from leukedge.edge.decision import decide
from leukedge.edge.errors import LeukedgeError
from leukedge.edge.preprocess import ImageError, Preprocessing, load_rgb, normalize

from leukedge.edge.metrics import report_at_threshold


class EvaluationError(LeukedgeError, ValueError):
    """Data that cannot be evaluated as asked (no readable images, one class only, unknown part)."""


@dataclass
class ImageArrays:
    """Decoded images of one split part, at the model's input size.

    images: uint8 (N, S, S, 3); labels: int (N,) class indices; paths and subjects: N entries;
    skipped: (path, problem) for every unreadable file left out.
    """

    images: np.ndarray
    labels: np.ndarray
    paths: list[str]
    skipped: list[tuple[str, str]]
    subjects: list[str | None] = field(default_factory=list)
    part: str = ""

    def in_label_order(self, data_labels: Sequence[str], model_labels: Sequence[str]) -> "ImageArrays":
        """The same images with labels re-indexed from the dataset's label order to a model's (matched by
        name, so a model whose outputs are [all, hem] is scored correctly). Raises EvaluationError when
        the names differ."""
        if sorted(data_labels) != sorted(model_labels):
            raise EvaluationError(f"dataset labels {list(data_labels)} and model labels {list(model_labels)} differ")
        if list(data_labels) == list(model_labels):
            return self
        remap = np.array([list(model_labels).index(name) for name in data_labels])
        return dataclasses.replace(self, labels=remap[self.labels])


def decode_samples(samples: Sequence, prep: Preprocessing, strict: bool = False, workers: int = 4,
                   progress: bool = True, what: str = "images", decode=None) -> ImageArrays:
    """Decode and resize every sample once with the device's decoder (edge.preprocess.load_rgb).

    samples: objects with .path, .label (and optionally .subject). Unreadable files are skipped and
    listed (and reported on stderr), or raise EvaluationError on the first one when `strict`.
    Returns ImageArrays with uint8 images (N, prep.size, prep.size, 3).
    """
    n = len(samples)
    if decode is None:
        decode = prep.decode_options()  # the declared bit depth, if any, as on the device
    out = np.empty((n, prep.size, prep.size, 3), np.uint8)
    ok = np.zeros(n, bool)
    skipped: list[tuple[str, str]] = []
    args = (prep.size, prep.resize, decode)

    def one(i: int):
        try:
            out[i] = load_rgb(samples[i].path, *args)
            ok[i] = True
        except ImageError as exc:
            return (samples[i].path, exc.problem)
        return None

    show = progress and sys.stderr.isatty()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for k, res in enumerate(pool.map(one, range(n))):
            if res:
                if strict:
                    raise EvaluationError(f"{res[0]}: {res[1]} (--strict)")
                skipped.append(res)
            if show and (k % 50 == 0 or k == n - 1):
                print(f"\rdecoding {what}: {k + 1}/{n}", end="", file=sys.stderr, flush=True)
    if show:
        print(file=sys.stderr)
    for path, problem in skipped:
        print(f"leukedge: skipped {path}: {problem}", file=sys.stderr)
    keep = np.flatnonzero(ok)
    return ImageArrays(out[keep], np.array([samples[i].label for i in keep], np.int64),
                       [samples[i].path for i in keep], skipped,
                       [getattr(samples[i], "subject", None) for i in keep])


def load_part(samples: Sequence, prep: Preprocessing, part: str, strict: bool = False) -> ImageArrays:
    """A split part's images, decoded once; raises EvaluationError when none is readable or a class is missing."""
    if not samples:
        raise EvaluationError(f"the {part} part of the split is empty")
    arrays = decode_samples(samples, prep, strict=strict, what=f"{part} images")
    arrays.part = part
    if len(arrays.labels) == 0:
        raise EvaluationError(f"no readable images in the {part} part")
    return arrays


# -- scorers ---------------------------------------------------------------------------------------------


class Scorer(Protocol):
    name: str
    format: str

    def p_positive(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (N, S, S, 3) at the model's size -> (N,) float64 P(positive)."""


class DeviceScorer:
    """The device's own classifier (TFLite, ONNX): lookup-table input path, its runtime, its softmax."""

    def __init__(self, classifier, name: str | None = None):
        self.classifier = classifier
        self.name = name or classifier.card.variant
        self.format = classifier.card.model_format

    def p_positive(self, images: np.ndarray) -> np.ndarray:
        return self.classifier.p_positive_for_images(images)

    def p_positive_both(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(calibrated, uncalibrated) P(positive), (N,) each, from one inference pass.

        For a logit model both come from the same logits through the device's softmax (T and 1);
        for a softmax model they are the same array."""
        clf = self.classifier
        if not clf._logits:
            p = self.p_positive(images)
            return p, p
        from leukedge.edge.calibration import p_positive_from_logits

        z = clf.logits_for_images(images)
        pos = clf.card.positive_index
        return p_positive_from_logits(z, pos, clf.temperature), p_positive_from_logits(z, pos, 1.0)


class KerasScorer:
    """A tf-keras model on float inputs normalized by edge.preprocess.normalize (the training arithmetic).

    output: 'probabilities' (softmax head) or 'logits' (softmax with `temperature` applied here).
    """

    def __init__(self, model, prep: Preprocessing, positive_index: int, name: str = "keras",
                 output: str = "probabilities", temperature: float = 1.0, batch_size: int = 32):
        self.model, self.prep, self.positive = model, prep, positive_index
        self.name, self.format = name, "keras"
        self.output, self.temperature, self.batch_size = output, float(temperature), batch_size

    def outputs(self, images: np.ndarray) -> np.ndarray:
        """Raw model outputs (N, classes) for uint8 images, in batches (bounded memory)."""
        chunks = [self.model.predict(normalize(images[i:i + 256], self.prep), batch_size=self.batch_size, verbose=0)
                  for i in range(0, len(images), 256)]
        return np.concatenate(chunks).astype(np.float64) if chunks else np.zeros((0, 2))

    def p_positive_both(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(calibrated, uncalibrated) P(positive); the same array for a softmax head."""
        if self.output != "logits":
            p = self.p_positive(images)
            return p, p
        from leukedge.edge.calibration import p_positive_from_logits

        z = self.outputs(images)
        return p_positive_from_logits(z, self.positive, self.temperature), p_positive_from_logits(z, self.positive, 1.0)

    def p_positive(self, images: np.ndarray) -> np.ndarray:
        y = self.outputs(images)
        if self.output == "logits":
            z = y / self.temperature
            z = np.exp(z - z.max(axis=1, keepdims=True))
            y = z / z.sum(axis=1, keepdims=True)
        return y[:, self.positive]


def scorer_for(model_path: str | os.PathLike, card, threads: int | None = None, keras_model=None) -> Scorer:
    """The scorer for a model file and its card: Keras files through tf-keras, everything the device
    runs through the device's Classifier (so measured figures are the device's figures)."""
    if card.model_format == "keras":
        if keras_model is None:
            from leukedge.tfcompat import load_keras_model

            keras_model = load_keras_model(model_path)
        return KerasScorer(keras_model, card.preprocessing, card.positive_index, name=f"keras-{card.variant}",
                           output=card.output, temperature=float((card.calibration or {}).get("temperature", 1.0)))
    from leukedge.edge.classifier import Classifier

    return DeviceScorer(Classifier(model_path, card, threads=threads))


# -- results ---------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """One model on one split part at one threshold.

    p: (N,) P(positive); decisions: (N,) bool; report: leukedge.edge.metrics.binary_report + threshold;
    against a reference (the float parent): agreement of decisions, max and mean |ΔP(positive)|.
    """

    name: str
    part: str
    p: np.ndarray
    threshold: float
    decisions: np.ndarray
    report: dict
    agreement: float | None = None
    max_abs_delta_p: float | None = None
    mean_abs_delta_p: float | None = None
    p_uncalibrated: np.ndarray | None = None  # P(positive) at T = 1 when p is temperature-calibrated

    def against(self, reference: "Evaluation") -> "Evaluation":
        """Fill agreement of decisions and |ΔP| against a reference evaluated on the same images; returns self.

        |ΔP| compares uncalibrated probabilities (T = 1) on both sides, so it measures what conversion
        and quantization changed, not the deliberate temperature."""
        if len(reference.p) != len(self.p):
            raise EvaluationError(f"{self.name} and {reference.name} were scored on different images")
        self.agreement = float(np.mean(self.decisions == reference.decisions))
        mine = self.p if self.p_uncalibrated is None else self.p_uncalibrated
        theirs = reference.p if reference.p_uncalibrated is None else reference.p_uncalibrated
        d = np.abs(mine - theirs)
        self.max_abs_delta_p = float(d.max()) if len(d) else 0.0
        self.mean_abs_delta_p = float(d.mean()) if len(d) else 0.0
        return self

    def vs_reference(self) -> dict:
        return {"agreement": self.agreement, "max_abs_delta_p": self.max_abs_delta_p,
                "mean_abs_delta_p": self.mean_abs_delta_p}


def evaluate(scorer_or_p, data: ImageArrays, threshold: float, labels: Sequence[str], positive: int,
             reference: Evaluation | None = None, name: str | None = None) -> Evaluation:
    """Score `data` (or take precomputed P(positive) (N,)), decide at `threshold`, report, compare.

    labels: the model's labels in output order; positive: index of the positive label.
    Returns an Evaluation; agreement/|ΔP| are filled when `reference` is given.
    """
    p_uncal = None
    if isinstance(scorer_or_p, np.ndarray):
        p, nm = scorer_or_p.astype(np.float64), name or "scores"
    elif hasattr(scorer_or_p, "p_positive_both"):
        p, p_uncal = scorer_or_p.p_positive_both(data.images)
        nm = name or scorer_or_p.name
    else:
        p, nm = np.asarray(scorer_or_p.p_positive(data.images), np.float64), name or scorer_or_p.name
    if len(p) != len(data.labels):
        raise EvaluationError(f"{nm}: {len(p)} scores for {len(data.labels)} images")
    ev = Evaluation(nm, data.part, p, float(threshold), decide(p, threshold),
                    report_at_threshold(data.labels, p, threshold, list(labels), positive),
                    p_uncalibrated=None if p_uncal is None or p_uncal is p else np.asarray(p_uncal, np.float64))
    return ev.against(reference) if reference is not None else ev


def gzip_bytes(path_or_bytes) -> int:
    """Size after gzip level 9 (what a model costs to ship compressed); one measure for every step."""
    import gzip

    data = Path(path_or_bytes).read_bytes() if isinstance(path_or_bytes, (str, os.PathLike)) else path_or_bytes
    return len(gzip.compress(data, compresslevel=9))
