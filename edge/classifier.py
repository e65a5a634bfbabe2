"""Classify cell images with a TFLite model and its card."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .card import ModelCard, load_card_for_model
from .preprocess import ImageError, load_rgb, normalize, quantize
from .runtime import ModelError, Runtime, open_interpreter


@dataclass
class Prediction:
    path: str | None
    label: str | None = None
    p_all: float | None = None  # probability of the card's positive label
    preprocess_ms: float = 0.0
    invoke_ms: float = 0.0
    total_ms: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        d = {"path": self.path}
        if self.ok:
            d.update(label=self.label, p_all=round(float(self.p_all), 6),
                     preprocess_ms=round(self.preprocess_ms, 3), invoke_ms=round(self.invoke_ms, 3),
                     total_ms=round(self.total_ms, 3))
        else:
            d["error"] = self.error
        return d


class Classifier:
    """A TFLite model plus its card: `Classifier.load(path).predict(paths_or_arrays)`."""

    def __init__(self, model_path: str | os.PathLike, card: ModelCard, threads: int | None = None,
                 runtime: Runtime | None = None):
        self.model_path = Path(model_path)
        self.card = card
        if card.model_format != "tflite":
            raise ModelError(f"{model_path}: card says format {card.model_format!r}; edge runs TFLite models")
        self.interpreter, self.runtime = open_interpreter(self.model_path, threads, runtime)
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{model_path}: expected one input and one output, got {len(inputs)} and {len(outputs)}")
        self._in, self._out = inputs[0], outputs[0]
        size = card.preprocessing.size
        shape = tuple(int(v) for v in self._in["shape"])
        if shape[1:] != (size, size, 3):
            raise ModelError(f"{model_path}: input shape {shape} does not match the card's {size}x{size}x3")
        if int(self._out["shape"][-1]) != len(card.labels):
            raise ModelError(f"{model_path}: {int(self._out['shape'][-1])} outputs but the card lists {len(card.labels)} labels")
        self._in_dtype = np.dtype(self._in["dtype"])
        self._in_q = self._in.get("quantization", (0.0, 0))
        self._out_q = self._out.get("quantization", (0.0, 0))
        self._pos = card.positive_index
        self.threshold = float(card.threshold)
        self._lut = self._pixel_table()
        # same scaling on every channel (the usual case): one flat lookup is cheaper
        self._flat_lut = self._lut[:, 0].copy() if (self._lut == self._lut[:, :1]).all() else None

    def _pixel_table(self) -> np.ndarray:
        """Model-input value of every uint8 pixel value, per channel: (256, 3) in the input dtype.

        Built with the very functions used elsewhere (normalize, then quantize), so a table
        lookup gives bit-identical tensors at a fraction of the per-image cost.
        """
        levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
        return self.input_tensor_from_float(normalize(levels, self.card.preprocessing))[0]

    @classmethod
    def load(cls, model_path: str | os.PathLike, threads: int | None = None, verify: bool = True,
             runtime: Runtime | None = None) -> "Classifier":
        card = load_card_for_model(model_path, verify=verify)
        return cls(model_path, card, threads=threads, runtime=runtime)

    # -- tensors ---------------------------------------------------------------

    def input_tensor(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 RGB HxWx3 (already at the card's size) -> the exact tensor the model takes."""
        if self._flat_lut is not None:
            return np.take(self._flat_lut, rgb)[None]
        return self._lut[rgb, np.arange(3)][None]

    def input_tensor_from_float(self, x: np.ndarray) -> np.ndarray:
        """One normalized float32 HxWx3 input -> the model's input tensor (quantized if it is integer)."""
        x = x[None]
        if self._in_dtype != np.float32:
            return quantize(x, self._in_q[0], self._in_q[1], self._in_dtype)
        return x.astype(np.float32, copy=False)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Run one prepared input tensor; returns float class probabilities (len(labels),)."""
        self.interpreter.set_tensor(self._in["index"], x)
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self._out["index"])[0]
        if y.dtype != np.float32:
            scale, zero = self._out_q
            y = (y.astype(np.float32) - zero) * np.float32(scale)
        return y

    def probabilities_for_inputs(self, xs: np.ndarray) -> np.ndarray:
        """float32 model inputs (N, H, W, 3), already normalized -> (N, labels) probabilities."""
        out = np.empty((len(xs), len(self.card.labels)), dtype=np.float32)
        for i, x in enumerate(xs):
            out[i] = self.probabilities(self.input_tensor_from_float(x))
        return out

    # -- images ----------------------------------------------------------------

    def _decide(self, p_pos: float) -> str:
        if p_pos >= self.threshold:
            return self.card.positive_label
        return self.card.labels[1 - self._pos]

    def predict_one(self, item: str | os.PathLike | np.ndarray) -> Prediction:
        t0 = time.perf_counter()
        prep = self.card.preprocessing
        path = None if isinstance(item, np.ndarray) else str(item)
        try:
            if isinstance(item, np.ndarray):
                rgb = item
                if rgb.shape != (prep.size, prep.size, 3) or rgb.dtype != np.uint8:
                    raise ValueError(f"array input must be uint8 {prep.size}x{prep.size}x3, got {rgb.dtype} {rgb.shape}")
            else:
                rgb = load_rgb(item, prep.size, prep.resize)
            x = self.input_tensor(rgb)
        except ImageError as exc:
            return Prediction(path, error=exc.problem, total_ms=(time.perf_counter() - t0) * 1e3)
        except ValueError as exc:
            return Prediction(path, error=str(exc), total_ms=(time.perf_counter() - t0) * 1e3)
        t1 = time.perf_counter()
        probs = self.probabilities(x)
        t2 = time.perf_counter()
        p_pos = float(probs[self._pos])
        return Prediction(path, label=self._decide(p_pos), p_all=p_pos,
                          preprocess_ms=(t1 - t0) * 1e3, invoke_ms=(t2 - t1) * 1e3, total_ms=(t2 - t0) * 1e3)

    def predict(self, items: Iterable[str | os.PathLike | np.ndarray] | str | os.PathLike | np.ndarray) -> list[Prediction]:
        if isinstance(items, (str, os.PathLike)) or (isinstance(items, np.ndarray) and items.ndim == 3):
            items = [items]
        return [self.predict_one(item) for item in items]


def positive_probabilities(clf: Classifier, paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """P(positive) for each path; raises on the first unreadable image (for evaluation sets)."""
    out = np.empty(len(paths), dtype=np.float64)
    for i, p in enumerate(paths):
        pred = clf.predict_one(p)
        if not pred.ok:
            raise ImageError(p, pred.error or "failed")
        out[i] = pred.p_all
    return out
