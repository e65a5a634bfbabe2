"""Run an .onnx model with ONNX Runtime on the device: TensorRT, then CUDA, then the CPU.

The device side of the Jetson path. No TensorFlow and no `onnx` package here; onnxruntime is
imported only when a model is opened, so the base install (TFLite only) never needs it.

Execution providers (ONNX Runtime's term for a backend) are tried in the order
TensorRT -> CUDA -> CPU, keeping those the installed onnxruntime build offers
(`onnxruntime` from PyPI has only the CPU one; JetPack's `onnxruntime-gpu` has all three).

TensorRT builds an engine from the model on the first start, which takes minutes for
InceptionV3 on a Jetson. The engine cache (ONNX Runtime's `trt_engine_cache_enable`) keeps it
in a folder beside the model, `<model file name>.trt-cache/`, so later starts load it in
seconds. An engine belongs to one TensorRT version, one GPU, one onnxruntime build and one
model file (ONNX Runtime's TensorRT EP documentation says to delete the cache when any of them
changes); a sidecar JSON in that folder records them, and on any mismatch the folder's files
are deleted so that TensorRT rebuilds instead of failing or running a stale engine.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .runtime import ModelError, default_threads

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# Best first. Providers not listed here (Azure, OpenVINO, ...) are never picked on our behalf.
PROVIDER_ORDER = (TENSORRT, CUDA, CPU)

CACHE_SUFFIX = ".trt-cache"
SIDECAR_NAME = "leukedge-trt-cache.json"
SIDECAR_SCHEMA = 1

INSTALL_HINT = ("install it: pip install 'leukedge[onnx]' (CPU), or on a Jetson JetPack's onnxruntime-gpu "
                "build (README, section 'Jetson')")

# ONNX tensor element types the runner accepts (QDQ models keep float32 input and output). float16
# tensors are fed and read as float32 by the Classifier and cast at the session (OnnxBackend.run).
_ONNX_DTYPES = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float32)}


def import_onnxruntime(model_path: str | os.PathLike | None = None):
    """Import onnxruntime, or raise ModelError with one line naming the fix.

    model_path only names the file in the message. Returns the onnxruntime module.
    """
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as exc:
        where = f"{model_path}: " if model_path is not None else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{where}ONNX Runtime is not installed or does not load ({first}); {INSTALL_HINT}") from None


def choose_providers(available: list[str] | tuple[str, ...], requested: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """The execution providers to register, best first.

    available: what `onnxruntime.get_available_providers()` reports. requested: names to allow
    (short forms "tensorrt", "cuda", "cpu" accepted), None for all of PROVIDER_ORDER.
    Returns the members of PROVIDER_ORDER that are both available and requested, in that order.
    Raises ModelError when none is left (e.g. only "tensorrt" requested on a CPU build).
    """
    short = {"tensorrt": TENSORRT, "trt": TENSORRT, "cuda": CUDA, "cpu": CPU}
    wanted = None if requested is None else {short.get(str(p).lower(), str(p)) for p in requested}
    unknown = sorted(wanted - set(PROVIDER_ORDER)) if wanted else []
    if unknown:
        raise ModelError(f"unknown execution provider(s) {', '.join(unknown)}; leukedge uses {', '.join(PROVIDER_ORDER)}")
    chosen = [p for p in PROVIDER_ORDER if p in available and (wanted is None or p in wanted)]
    if not chosen:
        raise ModelError(f"none of the requested execution providers ({', '.join(sorted(wanted or PROVIDER_ORDER))}) "
                         f"is available in this onnxruntime build (it has {', '.join(available) or 'none'})")
    return chosen


def trt_cache_dir(model_path: str | os.PathLike) -> Path:
    """The TensorRT engine cache folder of a model: `<model file name>.trt-cache` beside it."""
    p = Path(model_path)
    return p.with_name(p.name + CACHE_SUFFIX)


# -- what an engine belongs to -------------------------------------------------


def _tensorrt_version() -> str:
    """TensorRT's version from its Python package, else from libnvinfer itself; "unknown" if neither."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        for dist in ("tensorrt", "tensorrt-cu12", "tensorrt_libs"):
            try:
                return version(dist)
            except PackageNotFoundError:
                continue
    except ImportError:  # pragma: no cover - stdlib since 3.8
        pass
    for lib in ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so"):
        try:
            v = int(ctypes.CDLL(lib).getInferLibVersion())
        except (OSError, AttributeError):
            continue
        # NV_TENSORRT_VERSION: major*10000+minor*100+patch since TensorRT 10, major*1000+minor*100+patch before.
        if v >= 100000:
            return f"{v // 10000}.{v // 100 % 100}.{v % 100}"
        return f"{v // 1000}.{v // 100 % 10}.{v % 100}"
    return "unknown"


def _gpu_name() -> str:
    """The GPU's name: nvidia-smi on a PC, the device-tree model on a Jetson; "unknown" if neither."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        if out.returncode == 0 and names:
            return names[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        model = Path("/proc/device-tree/model").read_bytes().rstrip(b"\0").decode("utf-8", "replace").strip()
        if model:
            return model
    except OSError:
        pass
    return "unknown"


def tensorrt_identity() -> dict[str, str]:
    """{"tensorrt": version, "gpu": name} of this machine, each "unknown" when it cannot be read."""
    return {"tensorrt": _tensorrt_version(), "gpu": _gpu_name()}


def _scan_model(path: Path) -> tuple[str, bool]:
    """(SHA-256 of the file, whether it holds QuantizeLinear/DequantizeLinear nodes, i.e. is a QDQ model).

    Op types are plain strings in the protobuf, so a byte search finds them without the onnx package.
    """
    h = hashlib.sha256()
    qdq = False
    tail = b""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            if not qdq:
                qdq = b"DequantizeLinear" in tail + chunk
                tail = chunk[-32:]
    return h.hexdigest(), qdq


def prepare_trt_cache(cache_dir: str | os.PathLike, identity: dict[str, Any]) -> str:
    """Make `cache_dir` hold only engines that belong to `identity`; returns what was done.

    identity: the facts an engine depends on (TensorRT version, GPU, onnxruntime version, model
    SHA-256, precision flags). The sidecar `leukedge-trt-cache.json` in the folder records them.
    Returns "created" (no folder or empty folder: the first start builds), "kept" (sidecar matches:
    the engines are reused) or "rebuilt" (sidecar missing, unreadable or different: the folder's
    files were deleted, so TensorRT builds anew). Raises OSError when the folder cannot be written.
    """
    d = Path(cache_dir)
    sidecar = d / SIDECAR_NAME
    want = {"schema": SIDECAR_SCHEMA, **identity}
    if d.is_dir():
        try:
            have = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            have = None
        if have == want:
            return "kept"
        files = [p for p in d.iterdir() if p.is_file() or p.is_symlink()]
        for p in files:
            p.unlink()
        state = "rebuilt" if files else "created"
    else:
        d.mkdir(parents=True, exist_ok=True)  # exist_ok: another worker of this process may have just made it
        state = "created"
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".sidecar-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(want, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, sidecar)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return state


def tensorrt_options(cache_dir: str | os.PathLike | None, int8: bool) -> dict[str, str]:
    """TensorRT EP provider options: engine (and timing) cache in cache_dir, int8 for QDQ models.

    int8: set for QDQ models, so TensorRT runs the explicit int8 the Q/DQ nodes describe (TensorRT 8
    needs the INT8 builder flag for that; no calibration table is used). fp16 stays off so a float
    model keeps float32 accuracy, as gated against its parent. cache_dir None: no engine cache.
    """
    opts = {"trt_int8_enable": "True" if int8 else "False", "trt_fp16_enable": "False"}
    if cache_dir is not None:
        opts.update(trt_engine_cache_enable="True", trt_engine_cache_path=str(cache_dir),
                    trt_timing_cache_enable="True")
    return opts


# -- the backend -----------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class OnnxBackend:
    """One ONNX Runtime session behind the interface every runtime offers the Classifier.

    Attributes (shared with edge.runtime.TFLiteBackend): runtime_name ("onnxruntime"),
    runtime_version, detail (the execution provider that runs the model, best registered first,
    e.g. "TensorrtExecutionProvider"), input_shape (1, H, W, 3), input_dtype and output_dtype
    (float32), input_quantization and output_quantization ((0.0, 0): QDQ models keep float I/O),
    output_size, and run(x). Also: providers (all registered, best first), trt_cache (None, or
    {"dir", "state"} with state created/kept/rebuilt/off), notes (one-line remarks for the user).
    """

    runtime_name = "onnxruntime"

    def __init__(self, session, model_path: Path, runtime_version: str, trt_cache: dict | None = None,
                 notes: list[str] | None = None):
        self.model_path = Path(model_path)
        self._session = session
        self.runtime_version = str(runtime_version)
        self.providers = list(session.get_providers())
        self.detail = self.providers[0] if self.providers else ""
        self.trt_cache = trt_cache
        self.notes = list(notes or [])
        inputs, outputs = session.get_inputs(), session.get_outputs()
        where = str(model_path)
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{where}: expected one input and one output, got {len(inputs)} and {len(outputs)}")
        i, o = inputs[0], outputs[0]
        self.input_name, self.output_name = i.name, o.name
        for what, arg in (("input", i), ("output", o)):
            if arg.type not in _ONNX_DTYPES:
                raise ModelError(f"{where}: {what} {arg.name!r} is {arg.type}; leukedge runs ONNX models with "
                                 f"float32 or float16 input and output (QDQ quantization keeps them float)")
        shape = list(i.shape)
        if len(shape) != 4 or not all(isinstance(v, int) for v in shape[1:]):
            raise ModelError(f"{where}: input shape {shape} is not (batch, height, width, 3) with fixed sizes")
        if shape[3] != 3:
            layout = " (looks like NCHW)" if shape[1] == 3 else ""
            raise ModelError(f"{where}: input shape {shape} is not NHWC with 3 channels{layout}; "
                             "export with optimize.onnx_export (NHWC input)")
        if isinstance(shape[0], int) and shape[0] != 1:
            raise ModelError(f"{where}: input batch size is {shape[0]}; the device runs one image at a time (batch 1)")
        out_shape = list(o.shape)
        if not out_shape or not isinstance(out_shape[-1], int):
            raise ModelError(f"{where}: output shape {out_shape} has no fixed class count")
        self.input_shape = (1, shape[1], shape[2], 3)
        self.input_dtype = _ONNX_DTYPES[i.type]
        self.input_quantization = (0.0, 0)
        self.output_size = int(out_shape[-1])
        self.output_dtype = _ONNX_DTYPES[o.type]
        self.output_quantization = (0.0, 0)
        self._feed = np.dtype(np.float16) if i.type == "tensor(float16)" else None

    def run(self, x: np.ndarray) -> np.ndarray:
        """x: (1, H, W, 3) in input_dtype (float32) -> (output_size,) raw float32 output: probabilities,
        or logits when the card's `output` says so (the Classifier applies the card's temperature).

        Raises ModelError (one line naming the model file) when ONNX Runtime refuses the input.
        """
        try:
            y = self._session.run([self.output_name], {self.input_name: x if self._feed is None else x.astype(self._feed)})[0]
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise ModelError(f"{self.model_path}: onnxruntime could not run the model: {_first_line(exc)}") from None
        y = np.asarray(y).reshape(-1)
        return y.astype(np.float32) if y.dtype == np.float16 else y


def open_onnx(model_path: str | os.PathLike, threads: int | None = None,
              providers: list[str] | tuple[str, ...] | None = None) -> OnnxBackend:
    """Open an .onnx model with ONNX Runtime, on the best execution provider present.

    model_path: an NHWC float-input model from optimize.onnx_export (float32 or QDQ int8).
    threads: intra-op threads (None: the cores this process may use). providers: restrict the
    execution providers (see choose_providers), None for TensorRT -> CUDA -> CPU as available.
    With TensorRT, the engine cache lives in `<model>.trt-cache/` (see prepare_trt_cache); when
    that folder cannot be written, TensorRT runs without a cache (note in `.notes`).
    Returns an OnnxBackend. Raises ModelError (one line naming the file) when onnxruntime is
    missing, the file is missing or not a loadable model, or its input/output is not what the
    device feeds (one NHWC float32 image, one class-probability vector).
    """
    path = Path(model_path)
    ort = import_onnxruntime(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        chosen = choose_providers(list(ort.get_available_providers()), providers)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    provider_args: list[Any] = []
    trt_cache = None
    notes: list[str] = []
    for name in chosen:
        if name != TENSORRT:
            provider_args.append(name)
            continue
        sha, int8 = _scan_model(path)
        cache = trt_cache_dir(path)
        identity = {**tensorrt_identity(), "onnxruntime": str(ort.__version__), "model_sha256": sha,
                    "int8": int8, "fp16": False}
        try:
            state = prepare_trt_cache(cache, identity)
            trt_cache = {"dir": str(cache), "state": state}
        except OSError as exc:
            trt_cache = {"dir": str(cache), "state": "off"}
            notes.append(f"{cache}: TensorRT engine cache off ({_first_line(exc)}); every start rebuilds the engine")
            cache = None
        if trt_cache["state"] in ("created", "rebuilt"):
            notes.append(f"{trt_cache['dir']}: building the TensorRT engine (first start on this device; minutes)")
        provider_args.append((TENSORRT, tensorrt_options(cache, int8)))

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or default_threads())
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only: the first stderr line stays leukedge's own runtime line
    try:
        session = ort.InferenceSession(str(path), sess_options=so, providers=provider_args)
    except MemoryError:
        raise ModelError(f"{path}: not enough memory to load the model (onnxruntime); the README names the "
                         "memory each model needs") from None
    except Exception as exc:  # onnxruntime's pybind exceptions (InvalidProtobuf, Fail, ...) share no public base
        raise ModelError(f"{path}: not a loadable ONNX model (onnxruntime {ort.__version__}): {_first_line(exc)}") from None
    if trt_cache is not None and TENSORRT not in session.get_providers():
        # onnxruntime dropped TensorRT (e.g. libnvinfer missing) and fell back to CUDA or the CPU.
        trt_cache["state"] = "unused"
        notes = [n for n in notes if "building the TensorRT engine" not in n]
    return OnnxBackend(session, path, ort.__version__, trt_cache, notes)
