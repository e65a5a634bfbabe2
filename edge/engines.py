"""The inference engines the device can use, which model formats each runs, and opening a model with one.

The card's format says what a model file is; the engine is what runs it. A .tflite runs on LiteRT;
a .onnx (float32 or QDQ int8) runs on ONNX Runtime or OpenVINO, whichever is faster on the processor
at hand (edge.choose measures it). With no engine named, each format has its default (the engine
leukedge always used for it), so `edge-classify -m MODEL` without an engine option behaves as before.

Which engines are installed is found without importing them (importlib.util.find_spec), so asking
costs nothing and a LiteRT run never imports OpenVINO or ONNX Runtime.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

from .runtime import ModelError


@dataclass(frozen=True)
class Engine:
    """name: what the user types and reports show; formats: the card formats it runs; module: its top-level
    Python module (for the installed check); extra: the pip extra that installs it."""

    name: str
    formats: tuple[str, ...]
    module: str
    extra: str


ENGINES: dict[str, Engine] = {e.name: e for e in (
    Engine("litert", ("tflite",), "ai_edge_litert", "leukedge (base install)"),
    Engine("onnxruntime", ("onnx",), "onnxruntime", "leukedge[onnx]"),
    Engine("openvino", ("onnx",), "openvino", "leukedge[openvino]"),
)}
# What runs a format when no engine is named: the engine leukedge has always used for it.
DEFAULT_ENGINE = {"tflite": "litert", "onnx": "onnxruntime"}
ENGINE_NAMES = tuple(ENGINES)


def engines_for(model_format: str) -> tuple[str, ...]:
    """Names of the engines that run `model_format` ("tflite", "onnx"), default first; () for none."""
    names = [n for n, e in ENGINES.items() if model_format in e.formats]
    default = DEFAULT_ENGINE.get(model_format)
    return tuple(sorted(names, key=lambda n: n != default))


def installed(name: str) -> bool:
    """Whether engine `name` is importable here, found without importing it (LiteRT also as tflite-runtime)."""
    if name == "litert":
        return any(importlib.util.find_spec(m) is not None for m in ("ai_edge_litert", "tflite_runtime"))
    e = ENGINES.get(name)
    return e is not None and importlib.util.find_spec(e.module) is not None


def installed_engines_for(model_format: str) -> tuple[str, ...]:
    """engines_for(model_format) that are installed here, default first."""
    return tuple(n for n in engines_for(model_format) if installed(n))


def check_engine(name: str, model_format: str, model_path: str | os.PathLike = "") -> str:
    """The engine name, lower-cased, when it exists and runs `model_format`; raises ModelError (one line) otherwise."""
    n = str(name).strip().lower()
    where = f"{model_path}: " if str(model_path) else ""
    if n not in ENGINES:
        raise ModelError(f"{where}unknown engine {name!r}; leukedge runs {', '.join(ENGINE_NAMES)}")
    if model_format not in ENGINES[n].formats:
        runs = ", ".join(engines_for(model_format)) or "none"
        raise ModelError(f"{where}engine {n} does not run {model_format} models (engines for {model_format}: {runs})")
    return n


def open_with_engine(model_path: str | os.PathLike, model_format: str, engine: str | None, threads: int | None = None):
    """Open a model with a named engine (None: the format's default engine).

    model_format: the card's format. threads: engine threads (None: the usable cores).
    Returns a backend with the interface of edge.runtime_tflite.TFLiteBackend. Raises ModelError (one line
    naming the file) for an unknown engine, an engine that does not run this format, an engine that
    is not installed, or a file the engine cannot load.
    """
    if engine is None and model_format not in DEFAULT_ENGINE:
        raise ModelError(f"{model_path}: the device runs TFLite and ONNX models, not {model_format!r}")
    name = check_engine(engine or DEFAULT_ENGINE[model_format], model_format, model_path)
    if name == "litert":
        from .runtime_tflite import TFLiteBackend

        return TFLiteBackend(model_path, threads)
    if name == "onnxruntime":
        from .runtime_onnx import open_onnx

        return open_onnx(model_path, threads)
    from .runtime_openvino import open_openvino

    return open_openvino(model_path, threads)


def engine_of(backend) -> str:
    """The engine name ("litert", "onnxruntime", "openvino") of an opened backend, from its runtime_name.

    LiteRT's backend reports the TFLite package that ran it (ai-edge-litert, tflite-runtime, tensorflow).
    """
    name = str(getattr(backend, "runtime_name", ""))
    return name if name in ("onnxruntime", "openvino") else "litert"


def open_backend(model_path: str | os.PathLike, model_format: str, threads: int | None = None,
                 engine: str | None = None):
    """The runtime for a model, chosen by its card's format: tflite -> LiteRT, onnx -> ONNX Runtime.

    engine: None for that default, or an engine that runs the format (edge.engines: "litert",
    "onnxruntime", "openvino"; e.g. OpenVINO for a QDQ .onnx). Raises ModelError (one line, naming
    the file) when no runtime for that format can load it, or the engine is unknown, not installed
    or does not run the format.
    """
    if engine is not None:
        return open_with_engine(model_path, model_format, engine, threads)
    if model_format == "tflite":
        from .runtime_tflite import TFLiteBackend

        return TFLiteBackend(model_path, threads)
    if model_format == "onnx":
        from .runtime_onnx import open_onnx

        return open_onnx(model_path, threads)
    raise ModelError(f"{model_path}: the device runs TFLite and ONNX models, not {model_format!r}")
