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


class HeldStderr:
    """Hold what native code writes to file descriptor 2 during a `with` block (a Linux memfd), so a backend
    decides afterwards what of it the user sees; `text` holds it once the block ends. Where memfd is
    unavailable nothing is held (the text goes to stderr as it is written and `text` stays empty).
    The one mechanism of the backends: LiteRT drops its routine INFO lines and writes the rest back,
    OpenVINO writes it back only when the model compiled (its frontends' parse errors are noise otherwise)."""

    def __init__(self, name: str = "leukedge-native-stderr"):
        self.text = ""
        self._name = name
        self._fd = self._saved = None

    def __enter__(self):
        if not hasattr(os, "memfd_create"):
            return self
        try:
            import sys

            sys.stderr.flush()
            self._fd = os.memfd_create(self._name)
            self._saved = os.dup(2)
            os.dup2(self._fd, 2)
        except OSError:
            self._close()
        return self

    def _close(self) -> None:
        for fd in (self._fd, self._saved):
            if fd is not None:
                os.close(fd)
        self._fd = self._saved = None

    def __exit__(self, *exc) -> None:
        if self._saved is None:
            return
        os.dup2(self._saved, 2)
        os.lseek(self._fd, 0, os.SEEK_SET)
        data = b""
        while chunk := os.read(self._fd, 1 << 16):
            data += chunk
        self._close()
        self.text = data.decode("utf-8", "replace")
