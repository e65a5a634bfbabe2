"""The runtime interface every backend shares: ModelError, the Runtime record and the thread default.

Backends: edge.runtime_tflite (LiteRT / tflite-runtime / TensorFlow Lite), edge.runtime_onnx (ONNX Runtime),
edge.runtime_openvino (OpenVINO); edge.engines picks one (`open_backend`, by the card's format or a named
engine). Each backend imports this module; this module imports none of them, so no two import each other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .errors import LeukedgeError


class ModelError(LeukedgeError, RuntimeError):
    """A model file that no runtime can load or run; the message names the file."""


@dataclass(frozen=True)
class Runtime:
    """A TFLite runtime that imported: its package name, version and Interpreter class."""

    name: str
    version: str
    interpreter_cls: Any


def default_threads() -> int:
    """Usable cores (sched_getaffinity, so a container's CPU set counts; cpu_count elsewhere), >= 1."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
