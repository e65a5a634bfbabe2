"""Open a .tflite model with whichever TFLite runtime is installed, and say which one ran."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

from .errors import LeukedgeError


class ModelError(LeukedgeError, RuntimeError):
    """A model file that no runtime can load or run; the message names the file."""


@dataclass(frozen=True)
class Runtime:
    name: str
    version: str
    interpreter_cls: Any


# Order matters: ai-edge-litert is the maintained runtime; tflite-runtime is the
# old fallback (numpy<2, no dynamic-range kernels); TensorFlow only when it is there anyway.
_CANDIDATES = (
    ("ai-edge-litert", "ai_edge_litert.interpreter", "ai_edge_litert"),
    ("tflite-runtime", "tflite_runtime.interpreter", "tflite_runtime"),
    ("tensorflow", "tensorflow.lite", "tensorflow"),
)


def find_runtime(prefer: str | None = None) -> Runtime:
    errors = []
    for name, module, top in _CANDIDATES:
        if prefer and name != prefer:
            continue
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        interp = getattr(mod, "Interpreter")
        version = getattr(importlib.import_module(top), "__version__", "unknown")
        return Runtime(name, str(version), interp)
    raise ModelError(
        "no TFLite runtime found; install one: pip install ai-edge-litert "
        "(or tflite-runtime on older devices). Tried: " + "; ".join(errors)
    )


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def open_interpreter(model_path: str | os.PathLike, threads: int | None = None, runtime: Runtime | None = None):
    """Load and allocate a TFLite interpreter; returns (interpreter, runtime)."""
    rt = runtime or find_runtime()
    threads = threads or default_threads()
    try:
        interp = rt.interpreter_cls(model_path=str(model_path), num_threads=int(threads))
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{model_path}: not a loadable TFLite model ({rt.name}): {msg}") from None
    return interp, rt
