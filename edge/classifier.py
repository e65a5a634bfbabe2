"""Classify cell images with a model (TFLite or ONNX) and its card.

The classifier owns the device's whole path for one image: decode (edge.preprocess), the
quality and out-of-distribution checks against the card's training statistics, the input
tensor (a lookup table built from normalize+quantize, so bit-identical to them), the runtime
(picked by the card's format), the output activation (softmax with the card's temperature for
logit models) and the decision (`edge.decision.decide`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from .calibration import check_probabilities, probability_tolerance, softmax
from .card import ModelCard, load_card_for_model
from .decision import label_for
from .preprocess import DecodeOptions, ImageError, load_rgb, normalize, quantize
from .engines import open_backend
from .runtime import ModelError


@dataclass
class Prediction:
    """One image's result. p_all is P(card's positive label), calibrated when the card has a temperature."""

    path: str | None
    label: str | None = None
    p_all: float | None = None
    preprocess_ms: float = 0.0
    invoke_ms: float = 0.0
    total_ms: float = 0.0
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        d = {"path": self.path}
        if self.ok:
            d.update(label=self.label, p_all=round(float(self.p_all), 6),
                     preprocess_ms=round(self.preprocess_ms, 3), invoke_ms=round(self.invoke_ms, 3),
                     total_ms=round(self.total_ms, 3))
            if self.warnings:
                d["warning"] = "; ".join(self.warnings)
        else:
            d["error"] = self.error
        return d


@dataclass(frozen=True)
class RuntimeInfo:
    name: str
    version: str
    detail: str = ""


class Classifier:
    """A model plus its card: `Classifier.load(path).predict_one(path_or_rgb)`.

    model_path: a .tflite or .onnx file whose card (edge.card) describes it.
    threads: interpreter threads (None: all usable cores).
    threshold: decision threshold on the card's (calibrated) P(positive) scale; None = the card's.
    decode: how files are decoded (bit depth, page, pixel cap); None = the card's bit depth, defaults otherwise.
    Raises ModelError (one line) when the model cannot be loaded or disagrees with its card.
    """

    def __init__(self, model_path: str | os.PathLike, card: ModelCard, threads: int | None = None,
                 threshold: float | None = None, decode: DecodeOptions | None = None, backend=None):
        self.model_path = Path(model_path)
        self.card = card
        self.backend = backend or open_backend(self.model_path, card.model_format, threads)
        b = self.backend
        self.runtime = RuntimeInfo(b.runtime_name, b.runtime_version, getattr(b, "detail", ""))
        size = card.preprocessing.size
        if tuple(b.input_shape[1:]) != (size, size, 3):
            raise ModelError(f"{model_path}: input shape {tuple(b.input_shape)} does not match the card's {size}x{size}x3")
        if b.output_size != len(card.labels):
            raise ModelError(f"{model_path}: {b.output_size} outputs but the card lists {len(card.labels)} labels")
        self._in_dtype = np.dtype(b.input_dtype)
        self._in_q = b.input_quantization
        self._out_q = b.output_quantization
        self._pos = card.positive_index
        self._logits = card.output == "logits"
        self.temperature = float((card.calibration or {}).get("temperature", 1.0))
        self.threshold = float(card.threshold if threshold is None else threshold)
        if decode is None:
            decode = DecodeOptions(bit_depth=card.preprocessing.bit_depth)
        elif decode.bit_depth is None and card.preprocessing.bit_depth:
            decode = dataclasses.replace(decode, bit_depth=card.preprocessing.bit_depth)
        self.decode = decode
        self._lut = self._pixel_table()
        # same scaling on every channel (the usual case): one flat lookup is cheaper; for one-byte
        # (int8/uint8) inputs it is a 256-byte translation table (bytes.translate: ~2x np.take)
        self._flat_lut = self._lut[:, 0].copy() if (self._lut == self._lut[:, :1]).all() else None
        self._byte_table = (self._flat_lut.view(np.uint8).tobytes()
                            if self._flat_lut is not None and self._flat_lut.dtype.itemsize == 1 else None)
        from .quality import assess  # without the card's statistics, only the absolute checks (a blank image)

        self._assess = assess
        self._prob_tolerance = probability_tolerance(self._out_q[0] if np.dtype(b.output_dtype) != np.float32 else 0.0,
                                                     len(card.labels))
        if not self._logits:
            self._check_probability_head()

    def _check_probability_head(self) -> None:
        """A card that says `probabilities` is believed only after the model shows it: two probe images
        (flat mid-grey and seeded noise, never patient data) must give rows in [0, 1] summing to 1.
        Costs two invokes at load, only for softmax-head models (optimize's variants output logits).
        Raises NotProbabilitiesError (one line naming the model file) otherwise."""
        size = self.card.preprocessing.size
        # a fixed pseudo-random pattern (Knuth's multiplicative hash of the pixel index), not numpy.random,
        # whose import costs a device start ~5 ms and pulls in hashlib
        noise = ((np.arange(size * size * 3, dtype=np.uint32) * np.uint32(2654435761)) >> np.uint32(24))
        probes = (np.full((size, size, 3), 128, np.uint8), noise.astype(np.uint8).reshape(size, size, 3))
        for rgb in probes:
            self.probabilities(self.input_tensor(rgb))

    @classmethod
    def load(cls, model_path: str | os.PathLike, threads: int | None = None, verify: bool = True,
             threshold: float | None = None, decode: DecodeOptions | None = None) -> "Classifier":
        """Read the card beside `model_path` (verifying the model's SHA-256 unless verify=False) and load the model.

        Raises CardError for a missing/invalid card or hash mismatch, ModelError for an unloadable model.
        """
        card = load_card_for_model(model_path, verify=verify)
        return cls(model_path, card, threads=threads, threshold=threshold, decode=decode)

    # -- tensors ---------------------------------------------------------------

    def _pixel_table(self) -> np.ndarray:
        """Model-input value of every uint8 pixel value, per channel: (256, 3) in the input dtype.

        Built with the very functions used elsewhere (normalize, then quantize), so a table
        lookup gives bit-identical tensors at a fraction of the per-image cost.
        """
        levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
        return self.input_tensor_from_float(normalize(levels, self.card.preprocessing))[0]

    def input_tensor(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 RGB HxWx3 (already at the card's size) -> the exact tensor the model takes, (1, H, W, 3).

        The tensor may be read-only (integer models: a view of translated bytes); copy it to modify it.
        """
        if self._byte_table is not None and rgb.dtype == np.uint8:
            out = np.ascontiguousarray(rgb).tobytes().translate(self._byte_table)
            return np.frombuffer(out, dtype=self._flat_lut.dtype).reshape((1,) + rgb.shape)
        if self._flat_lut is not None:
            return np.take(self._flat_lut, rgb)[None]
        return self._lut[rgb, np.arange(3)][None]

    def input_tensor_from_float(self, x: np.ndarray) -> np.ndarray:
        """One normalized float32 HxWx3 input -> the model's input tensor (quantized if it is integer)."""
        x = x[None]
        if self._in_dtype != np.float32:
            return quantize(x, self._in_q[0], self._in_q[1], self._in_dtype)
        return x.astype(np.float32, copy=False)

    def raw_output(self, x: np.ndarray) -> np.ndarray:
        """Run one prepared input tensor; returns the model's output dequantized to float32, (n_labels,)."""
        y = self.backend.run(x)
        if y.dtype != np.float32:
            scale, zero = self._out_q
            y = (y.astype(np.float32) - zero) * np.float32(scale)
        return y

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Run one prepared input tensor; returns class probabilities (n_labels,).

        A logit model's output goes through softmax with the card's temperature (calibrated P,
        float64: edge.calibration.softmax); a softmax model's output is checked to be a probability
        distribution (edge.calibration.check_probabilities: raises NotProbabilitiesError, so a logit
        head mislabelled `probabilities` can never put its logits into a row) and clipped to [0, 1].
        """
        y = self.raw_output(x)
        if self._logits:
            return softmax(y, self.temperature)
        return check_probabilities(y, str(self.model_path), self._prob_tolerance)

    def logits_for_images(self, images: np.ndarray) -> np.ndarray:
        """uint8 RGB images (N, S, S, 3) -> (N, n_labels) raw (dequantized) outputs: logits for a logit model."""
        return np.stack([self.raw_output(self.input_tensor(rgb)) for rgb in images]).astype(np.float64)

    def probabilities_for_inputs(self, xs: np.ndarray) -> np.ndarray:
        """float32 model inputs (N, H, W, 3), already normalized -> (N, labels) probabilities."""
        out = np.empty((len(xs), len(self.card.labels)), dtype=np.float32)
        for i, x in enumerate(xs):
            out[i] = self.probabilities(self.input_tensor_from_float(x))
        return out

    def p_positive_for_images(self, images: np.ndarray) -> np.ndarray:
        """uint8 RGB images (N, S, S, 3) at the card's size -> (N,) P(positive), through the device's own path."""
        out = np.empty(len(images), dtype=np.float64)
        for i, rgb in enumerate(images):
            out[i] = self.probabilities(self.input_tensor(rgb))[self._pos]
        return out

    # -- images ----------------------------------------------------------------

    def predict_one(self, item: str | os.PathLike | np.ndarray) -> Prediction:
        """Classify one image file (any supported format) or one uint8 RGB array at the card's size.

        Never raises for a bad image: the Prediction carries `error` (one line) instead.
        Quality/out-of-distribution findings go into `warnings`.
        """
        t0 = time.perf_counter()
        prep = self.card.preprocessing
        path = None if isinstance(item, np.ndarray) else str(item)
        try:
            if isinstance(item, np.ndarray):
                rgb = item
                if rgb.shape != (prep.size, prep.size, 3) or rgb.dtype != np.uint8:
                    raise ValueError(f"array input must be uint8 {prep.size}x{prep.size}x3, got {rgb.dtype} {rgb.shape}")
            else:
                rgb = load_rgb(item, prep.size, prep.resize, self.decode)
            x = self.input_tensor(rgb)
            warnings = [f"{f.kind}: {f.message}" for f in self._assess(rgb, self.card.input_statistics)]
        except ImageError as exc:
            return Prediction(path, error=exc.problem, total_ms=(time.perf_counter() - t0) * 1e3)
        except ValueError as exc:
            return Prediction(path, error=str(exc), total_ms=(time.perf_counter() - t0) * 1e3)
        t1 = time.perf_counter()
        probs = self.probabilities(x)
        t2 = time.perf_counter()
        p_pos = float(probs[self._pos])
        return Prediction(path, label=label_for(p_pos, self.threshold, self.card.labels, self._pos), p_all=p_pos,
                          preprocess_ms=(t1 - t0) * 1e3, invoke_ms=(t2 - t1) * 1e3, total_ms=(t2 - t0) * 1e3,
                          warnings=warnings)

    def predict(self, items: Iterable[str | os.PathLike | np.ndarray] | str | os.PathLike | np.ndarray) -> list[Prediction]:
        """predict_one over several items (a single path or HxWx3 array is taken as one item)."""
        if isinstance(items, (str, os.PathLike)) or (isinstance(items, np.ndarray) and items.ndim == 3):
            items = [items]
        return [self.predict_one(item) for item in items]

    # back-compat for callers that reach the interpreter (benchmarks of TFLite models)
    @property
    def interpreter(self):
        return getattr(self.backend, "interpreter", None)
