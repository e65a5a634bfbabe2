"""Run an .onnx model with OpenVINO on the device's CPU: the engine that runs a QDQ model as int8 on x86 and ARM.

OpenVINO reads a QDQ ONNX model (QuantizeLinear/DequantizeLinear pairs, `optimize.onnx_export`)
directly and turns each pair into its low-precision transformations, so the same file that ONNX
Runtime runs is compiled to int8 kernels (oneDNN on x86, ACL/KleidiAI on ARM). There is no second
model format: the card's format stays `onnx` and the device chooses the engine.

Imported only when a model is opened with this engine: `import openvino` plus compiling
InceptionV3 costs about 1.4 s on a 2-core x86 box, against 0.26 s for a whole LiteRT cold start
(issue 22), so a LiteRT run never pays it. OpenVINO's model cache (`CACHE_DIR`) keeps the compiled
model; a later start imports it instead of compiling. The cache folder is, in this order,
$LEUKEDGE_OPENVINO_CACHE ("off" disables it), else `$XDG_CACHE_HOME/leukedge/openvino` (default
`~/.cache/leukedge/openvino`). A cache blob is keyed by OpenVINO on the model, the compile options,
the device and OpenVINO's own version, so one folder serves every model and a stale blob is never
used (OpenVINO documentation, "Model Caching Overview").

Precision: `INFERENCE_PRECISION_HINT` is f32. On processors with AVX512_BF16 or AMX (Sapphire Rapids)
OpenVINO's default would run the ops the model leaves in float (softmax, pooling, the layers between
Q/DQ pairs) in bfloat16, which is not what the optimize gate measured; the int8 convolutions are
int8 either way.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np

from .runtime import HeldStderr, ModelError, default_threads

INSTALL_HINT = "install it: pip install 'leukedge[openvino]'"
CACHE_ENV = "LEUKEDGE_OPENVINO_CACHE"
DEVICE = "CPU"


def import_openvino(model_path: str | os.PathLike | None = None):
    """Import openvino, or raise ModelError with one line naming the fix. Returns the module.

    model_path only names the file in the message. Any failure while importing (missing, wrong
    glibc or CPU for the wheel) is caught: binary wheels fail with other exception types than ImportError.
    """
    try:
        return importlib.import_module("openvino")
    except Exception as exc:  # noqa: BLE001 - a wheel built for another glibc/CPU fails with OSError, RuntimeError...
        where = f"{model_path}: " if model_path is not None else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{where}OpenVINO is not installed or does not load ({first}); {INSTALL_HINT}") from None


def cache_dir() -> Path | None:
    """The folder for OpenVINO's compiled-model cache (see the module docstring); None when it is off."""
    chosen = os.environ.get(CACHE_ENV, "").strip()
    if chosen.lower() in ("off", "0", "none", "false"):
        return None
    if chosen:
        return Path(chosen).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "leukedge" / "openvino"


def _ready_cache(notes: list[str]) -> Path | None:
    """cache_dir(), created; None (with a note) when it is off or cannot be made."""
    d = cache_dir()
    if d is None:
        return None
    try:
        d.mkdir(parents=True, exist_ok=True)
        if not os.access(d, os.W_OK):
            raise PermissionError(f"{d} is not writable")
    except OSError as exc:
        notes.append(f"{d}: OpenVINO model cache off ({exc.strerror or exc}); every start compiles the model")
        return None
    return d


def _meaningful_line(exc: BaseException) -> str:
    """OpenVINO's exception text is a stack of "Exception from src/...:" lines; the reason is the first other line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if not ln.startswith(("Exception from ", "Check '")) and not ln.endswith(".cpp:"):
            return ln[:300]
    return (lines[-1] if lines else type(exc).__name__)[:300]


class _QuietNative(HeldStderr):
    """Hold what native code writes to file descriptor 2 while OpenVINO reads and compiles a model.

    On failure OpenVINO tries every frontend it has (TensorFlow's prints parse errors), which is noise
    next to leukedge's one-line message: `replay()` writes the held text back only on success (it may
    hold OpenVINO's own warnings).
    """

    def __init__(self):
        super().__init__("leukedge-openvino-stderr")

    def replay(self):
        if self.text.strip():
            os.write(2, self.text.encode("utf-8", "replace"))


class OpenVinoBackend:
    """One compiled OpenVINO model behind the interface every runtime offers the Classifier.

    Attributes (shared with edge.runtime.TFLiteBackend and edge.runtime_onnx.OnnxBackend):
    runtime_name ("openvino"), runtime_version (e.g. "2026.4.1-22982-..."), detail (the device and its
    name, e.g. "CPU: Intel(R) Xeon(R) Processor"), input_shape (1, H, W, 3), input_dtype and output_dtype
    (float32: a QDQ model keeps float I/O), input_quantization and output_quantization ((0.0, 0)),
    output_size, and run(x). Also: threads, cache (the cache folder or None), notes (one-line remarks).
    """

    runtime_name = "openvino"

    def __init__(self, compiled, model_path: Path, version: str, device_name: str, threads: int,
                 cache: Path | None, notes: list[str]):
        self.model_path = Path(model_path)
        self._compiled = compiled
        self.runtime_version = str(version)
        self.detail = f"{DEVICE}: {device_name}" if device_name else DEVICE
        self.threads = int(threads)
        self.cache = cache
        self.notes = list(notes)
        where = str(model_path)
        inputs, outputs = list(compiled.inputs), list(compiled.outputs)
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{where}: expected one input and one output, got {len(inputs)} and {len(outputs)}")
        i, o = inputs[0], outputs[0]
        for what, port in (("input", i), ("output", o)):
            if port.get_element_type().get_type_name() != "f32":
                raise ModelError(f"{where}: {what} is {port.get_element_type().get_type_name()}; leukedge runs ONNX "
                                 "models with float32 input and output (QDQ quantization keeps them float)")
        shape = i.get_partial_shape()
        if shape.is_dynamic or len(shape) != 4:
            raise ModelError(f"{where}: input shape {shape} is not (1, height, width, 3) with fixed sizes")
        dims = [int(d.get_length()) for d in shape]
        if dims[3] != 3:
            layout = " (looks like NCHW)" if dims[1] == 3 else ""
            raise ModelError(f"{where}: input shape {dims} is not NHWC with 3 channels{layout}; "
                             "export with optimize.onnx_export (NHWC input)")
        if dims[0] != 1:
            raise ModelError(f"{where}: input batch size is {dims[0]}; the device runs one image at a time (batch 1)")
        out_shape = o.get_partial_shape()
        if out_shape.is_dynamic or len(out_shape) < 1:
            raise ModelError(f"{where}: output shape {out_shape} has no fixed class count")
        self.input_shape = (1, dims[1], dims[2], 3)
        self.input_dtype = np.dtype(np.float32)
        self.input_quantization = (0.0, 0)
        self.output_size = int(out_shape[len(out_shape) - 1].get_length())
        self.output_dtype = np.dtype(np.float32)
        self.output_quantization = (0.0, 0)
        self._request = compiled.create_infer_request()

    def run(self, x: np.ndarray) -> np.ndarray:
        """x: (1, H, W, 3) float32 -> (output_size,) raw float32 output (logits or probabilities, as the card says).

        One synchronous inference on the one request (OpenVINO's latency path). The input is shared, not
        copied, when it is C-contiguous float32. Raises ModelError (one line naming the model) when
        OpenVINO refuses the input.
        """
        try:
            self._request.infer({0: x}, share_inputs=True)
            y = self._request.get_output_tensor(0).data
        except Exception as exc:  # openvino raises RuntimeError/TypeError from its bindings
            raise ModelError(f"{self.model_path}: openvino could not run the model: {_meaningful_line(exc)}") from None
        return np.array(y, dtype=np.float32, copy=True).reshape(-1)


def compile_options(threads: int, cache: Path | None) -> dict[str, str]:
    """The CPU plugin's options: latency hint (one stream), `threads` inference threads, f32 precision, cache.

    Returns OpenVINO property names and string values, as `Core.compile_model(config=...)` takes them.
    """
    opts = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(int(threads)),
            "INFERENCE_PRECISION_HINT": "f32"}
    if cache is not None:
        opts["CACHE_DIR"] = str(cache)
    return opts


def open_openvino(model_path: str | os.PathLike, threads: int | None = None) -> OpenVinoBackend:
    """Open an .onnx model with OpenVINO on the CPU.

    model_path: an NHWC float-input model from optimize.onnx_export (float32 or QDQ int8).
    threads: inference threads (None: the cores this process may use).
    Returns an OpenVinoBackend. Raises ModelError (one line naming the file) when openvino is missing,
    the file is missing or not a loadable model, or its input/output is not what the device feeds.
    """
    path = Path(model_path)
    ov = import_openvino(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    threads = int(threads or default_threads())
    notes: list[str] = []
    cache = _ready_cache(notes)
    quiet = _QuietNative()
    try:
        with quiet:
            core = ov.Core()
            compiled = core.compile_model(str(path), DEVICE, compile_options(threads, cache))
    except Exception as exc:  # noqa: BLE001 - openvino's bindings raise RuntimeError and others
        raise ModelError(f"{path}: not a loadable ONNX model (openvino {ov.get_version().split('-')[0]}): "
                         f"{_meaningful_line(exc)}") from None
    quiet.replay()
    try:
        device_name = str(core.get_property(DEVICE, "FULL_DEVICE_NAME"))
    except Exception:  # noqa: BLE001 - only for the header line
        device_name = ""
    return OpenVinoBackend(compiled, path, ov.get_version().split("-")[0], device_name, threads, cache, notes)
