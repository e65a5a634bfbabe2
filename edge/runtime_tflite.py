"""The TFLite backend (edge.runtime's interface): open a .tflite model with whichever TFLite runtime is installed,
and say which one ran."""

from __future__ import annotations

import importlib
import os

import numpy as np

from .runtime import HeldStderr, ModelError, Runtime, default_threads


# Order matters: ai-edge-litert is the maintained runtime; tflite-runtime is the
# old fallback (numpy<2, no dynamic-range kernels); TensorFlow only when it is there anyway.
_CANDIDATES = (
    ("ai-edge-litert", "ai_edge_litert.interpreter", "ai_edge_litert"),
    ("tflite-runtime", "tflite_runtime.interpreter", "tflite_runtime"),
    ("tensorflow", "tensorflow.lite", "tensorflow"),
)


def _import_failure(name: str, exc: BaseException, printed: str) -> str:
    """One line for a runtime that failed to import, naming the fix where one is known."""
    text = f"{type(exc).__name__}: {exc}".strip()
    both = f"{text} {printed}"
    if "failed to map segment" in both or "Cannot allocate memory" in both or isinstance(exc, MemoryError):
        return f"{name}: not enough memory to load it; fix: more memory (the README names the memory each model needs)"
    if "_ARRAY_API" in both or "numpy.core.multiarray" in both or "compiled using NumPy 1" in both:
        return f"{name}: built for NumPy 1.x but NumPy {_numpy_version()} is installed; fix: pip install 'numpy<2'"
    if any(k in both for k in ("GLIBC", "undefined symbol", "wrong ELF class", "cannot open shared object",
                               "invalid ELF header", "Exec format error", "illegal instruction")):
        first = " ".join(text.split())[:200]
        return (f"{name}: binary not compatible with this system ({first}); fix: pip install --force-reinstall "
                f"the wheel built for this CPU and Python")
    if isinstance(exc, ModuleNotFoundError):
        return f"{name}: not installed"
    return f"{name}: " + " ".join(text.split())[:200]


def _numpy_version() -> str:
    try:
        import numpy

        return numpy.__version__
    except Exception:  # noqa: BLE001 - only for the message
        return "2.x"


def find_runtime(prefer: str | None = None) -> Runtime:
    """The first TFLite runtime that imports: ai-edge-litert, then tflite-runtime, then TensorFlow.

    prefer: only try this one (a name from `_CANDIDATES`). Any failure while importing one
    (missing, NumPy 1/2 ABI mismatch, wrong CPU or glibc, a crash in its init) is caught, and
    what the module printed while failing is swallowed, so the user sees one line.
    Raises ModelError naming each runtime tried and the fix (e.g. pip install 'numpy<2'
    for tflite-runtime under NumPy 2); the CLI turns it into exit 2.
    """
    import contextlib
    import io

    errors = []
    for name, module, top in _CANDIDATES:
        if prefer and name != prefer:
            continue
        printed = io.StringIO()
        try:
            # what a failing import prints goes into the one line, never onto stdout (the rows):
            # TensorFlow prints its ssl traceback there when a library cannot be mapped
            with contextlib.redirect_stderr(printed), contextlib.redirect_stdout(printed):
                mod = importlib.import_module(module)
                interp = getattr(mod, "Interpreter")
                version = getattr(importlib.import_module(top), "__version__", "unknown")
        except Exception as exc:  # noqa: BLE001 - binary incompatibility shows up as any exception type
            errors.append(_import_failure(name, exc, printed.getvalue()))
            continue
        return Runtime(name, str(version), interp)
    fixes = [e for e in errors if "fix:" in e]
    raise ModelError(
        "no usable TFLite runtime: " + "; ".join(fixes or errors)
        + ("" if fixes else "; install one: pip install ai-edge-litert (or tflite-runtime on older devices)"))


# What the runtime's C++ side prints on every load, which is not news: "INFO: Created TensorFlow Lite
# XNNPACK delegate for CPU." and "INFO: Initialized TensorFlow Lite runtime." (LiteRT/TFLite).
_ROUTINE_NATIVE_LINES = ("INFO: Created TensorFlow Lite XNNPACK delegate", "INFO: Initialized TensorFlow Lite runtime")


class _NativeStderr(HeldStderr):
    """Capture what native code writes to file descriptor 2 while loading a model (edge.runtime.HeldStderr).

    The runtime's routine INFO lines are dropped, so leukedge's own line is the first on stderr;
    anything else (warnings, errors) is written back to stderr unchanged when the block ends, and
    `lines` keeps it for error messages.
    """

    def __init__(self):
        super().__init__("leukedge-native-stderr")
        self.lines: list[str] = []

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self.lines = [ln for ln in self.text.splitlines() if ln.strip() and not ln.startswith(_ROUTINE_NATIVE_LINES)]
        if self.lines:
            os.write(2, ("\n".join(self.lines) + "\n").encode("utf-8", "replace"))


def open_interpreter(model_path: str | os.PathLike, threads: int | None = None, runtime: Runtime | None = None):
    """Load and allocate a TFLite interpreter; returns (interpreter, runtime).

    Raises ModelError (one line naming the file, the runtime and its reason; the runtime's own
    ERROR line when it printed one) for a file the runtime cannot load, and for any failure of the
    runtime itself while loading: the SystemError tflite-runtime 2.14 raises at Interpreter(...)
    under NumPy 2 (with what NumPy printed about it swallowed: the fix is named instead), a
    MemoryError, a thread that cannot start. An abort inside native code cannot be caught.
    """
    import contextlib
    import io

    rt = runtime or find_runtime()
    threads = threads or default_threads()
    native = _NativeStderr()
    printed = io.StringIO()  # what Python-level code (NumPy's ABI warning) prints while it fails
    try:
        with native, contextlib.redirect_stderr(printed):
            interp = rt.interpreter_cls(model_path=str(model_path), num_threads=int(threads))
            interp.allocate_tensors()
    except MemoryError:
        raise ModelError(f"{model_path}: not enough memory to load the model ({rt.name}); the README names "
                         "the memory each model needs") from None
    except (ValueError, RuntimeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "start new thread" in msg:
            raise ModelError(f"{model_path}: {rt.name} could not start its threads ({msg}): too little memory "
                             "or a thread limit (ulimit -u); try --threads 1 --workers 1") from None
        said = next((ln.strip() for ln in native.lines if ln.startswith("ERROR:")), "")
        if said and said[len("ERROR:"):].strip() not in msg:
            msg = f"{msg} ({said})"
        raise ModelError(f"{model_path}: not a loadable TFLite model ({rt.name}): {msg}") from None
    except Exception as exc:  # noqa: BLE001 - a runtime failing in its own code (SystemError, TypeError, ...)
        cause = exc.__cause__ or exc.__context__
        said = printed.getvalue() + (f" {type(cause).__name__}: {cause}" if cause is not None else "")
        raise ModelError(f"{model_path}: {_import_failure(rt.name, exc, said)}") from None
    return interp, rt


class TFLiteBackend:
    """A LiteRT / TFLite interpreter behind the small interface every runtime offers the Classifier.

    The interface (shared with `edge.runtime_onnx.OnnxBackend`): runtime_name, runtime_version,
    detail, input_shape (1, H, W, 3), input_dtype, input_quantization (scale, zero_point; (0.0, 0)
    for float), output_size, output_dtype, output_quantization, and run(x) -> raw output (output_size,).
    """

    def __init__(self, model_path: str | os.PathLike, threads: int | None = None, runtime: Runtime | None = None):
        self.interpreter, rt = open_interpreter(model_path, threads, runtime)
        self.runtime_name, self.runtime_version, self.detail = rt.name, rt.version, ""
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{model_path}: expected one input and one output, got {len(inputs)} and {len(outputs)}")
        self._in, self._out = inputs[0], outputs[0]
        self.input_shape = tuple(int(v) for v in self._in["shape"])
        self.input_dtype = _tensor_dtype(model_path, "input", self._in["dtype"])
        self.input_quantization = tuple(self._in.get("quantization", (0.0, 0)))
        self.output_size = int(self._out["shape"][-1])
        self.output_dtype = _tensor_dtype(model_path, "output", self._out["dtype"])
        self.output_quantization = tuple(self._out.get("quantization", (0.0, 0)))
        # float16 tensors: the Classifier feeds and reads float32; the cast happens here, at the edge
        self._feed = np.dtype(self._in["dtype"]) if np.dtype(self._in["dtype"]) == np.float16 else None
        if np.dtype(self._in["dtype"]) == np.float16:
            self.input_quantization = (0.0, 0)
        if np.dtype(self._out["dtype"]) == np.float16:
            self.output_quantization = (0.0, 0)

    def run(self, x: np.ndarray) -> np.ndarray:
        """x: (1, H, W, 3) in input_dtype -> (output_size,) raw output in output_dtype (float16 tensors
        are fed and read as float32)."""
        self.interpreter.set_tensor(self._in["index"], x if self._feed is None else x.astype(self._feed))
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self._out["index"])[0]
        return y.astype(np.float32) if y.dtype == np.float16 else y


# Tensor types the Classifier can feed and read: float32, integer-quantized int8/uint8, and float16
# (carried as float32, cast at the interpreter: a float16 model needs no quantization parameters).
_TENSOR_DTYPES = (np.dtype(np.float32), np.dtype(np.int8), np.dtype(np.uint8))


def _tensor_dtype(model_path, what: str, dtype) -> np.dtype:
    """The dtype the Classifier sees for a model tensor; ModelError (one line) for one it cannot use."""
    dt = np.dtype(dtype)
    if dt == np.float16:
        return np.dtype(np.float32)
    if dt not in _TENSOR_DTYPES:
        raise ModelError(f"{model_path}: {what} tensor is {dt.name}; leukedge runs models whose input and output "
                         "are float32, float16, int8 or uint8")
    return dt
