"""Opening the model `leukedge import` brings in: a tf-keras 2 `.keras`, an HDF5 `.h5`, or a Keras 3 `.keras`
rebuilt layer by layer in tf-keras (outputs checked equal), then conformed to one flat graph with a fixed input.
Everything it refuses is a ModelImportError in one line naming the cause and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from leukedge.edge.errors import LeukedgeError

from .import_check import ModelImportError

# -- opening the source ------------------------------------------------------------------------------------


def source_flavour(path: Path) -> tuple[str, str]:
    """('tf-keras' | 'keras3' | 'h5' | 'savedmodel' | 'tflite' | 'unknown', version) of a model file."""
    from leukedge.tfcompat import keras_file_flavour

    if path.suffix == ".tflite":
        return "tflite", ""
    return keras_file_flavour(path)


# -- Keras 3 files, rebuilt in tf-keras --------------------------------------------------------------------

def _plain(obj):
    """Keras 3 serialized objects -> the plain {class_name, config} form tf-keras reads; dtype policies -> names."""
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if obj.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and isinstance(obj.get("config"), dict):
        return obj["config"].get("name", "float32")
    if "class_name" in obj and "config" in obj and ("module" in obj or "registered_name" in obj):
        return {"class_name": obj["class_name"], "config": _plain(obj["config"])}
    return {k: _plain(v) for k, v in obj.items()}

_DROP_IF_DEFAULT = {"optional": False, "lora_rank": None, "lora_alpha": None, "quantization_config": None,
                    "gradient_clip": None}

def _layer_config(tfk, cls, cfg, name):
    cfg = dict(cfg)
    if cls == "InputLayer":
        if "batch_shape" in cfg:
            cfg["batch_input_shape"] = cfg.pop("batch_shape")
        cfg.pop("optional", None)
    for k, v in list(cfg.items()):  # weights are copied afterwards: initial values do not matter
        if k.endswith("_initializer") and isinstance(v, dict):
            cfg[k] = {"class_name": v.get("class_name", "Zeros"), "config": {}}
    for k, default in _DROP_IF_DEFAULT.items():
        if k in cfg:
            if cfg[k] not in (default, None, False):
                raise ModelImportError(f"layer {name!r} uses the Keras 3 feature {k}={cfg[k]!r}, which tf-keras has not")
            cfg.pop(k)
    return cfg

def _tensor_refs(args):
    out = []
    def walk(a):
        if isinstance(a, dict) and a.get("class_name") == "__keras_tensor__":
            h = a["config"]["keras_history"]
            out.append([h[0], h[1], h[2], {}])
        elif isinstance(a, (list, tuple)):
            for x in a:
                walk(x)
        elif isinstance(a, dict):
            for x in a.values():
                walk(x)
    walk(args)
    return out

def keras3_config_to_tf_keras(tfk, entry: dict) -> dict:
    """One Keras 3 layer/model config entry -> the tf-keras entry (recursing into nested models).

    Keras 3 writes serialized objects with module/registered_name, DTypePolicy objects, InputLayer
    batch_shape and inbound nodes as {"args": [keras tensors], "kwargs"}; tf-keras reads plain
    {class_name, config}, dtype names, batch_input_shape and [[name, node, tensor, kwargs], ...].
    Raises ModelImportError naming a layer tf-keras has not (or a Keras-3-only setting in use)."""
    cls, cfg = entry["class_name"], entry["config"]
    name = cfg.get("name", entry.get("name"))
    if cls in ("Functional", "Model"):
        new_cfg = {"name": cfg["name"], "trainable": cfg.get("trainable", True),
                   "layers": [keras3_config_to_tf_keras(tfk, x) for x in cfg["layers"]],
                   "input_layers": _refs3(cfg["input_layers"]), "output_layers": _refs3(cfg["output_layers"])}
        cls = "Functional"
    elif cls == "Sequential":
        new_cfg = {"name": cfg["name"], "layers": [keras3_config_to_tf_keras(tfk, x) for x in cfg["layers"]]}
    else:
        if not hasattr(tfk.layers, cls):
            raise ModelImportError(f"layer {name!r} is a {cls}, which tf-keras has not")
        new_cfg = _layer_config(tfk, cls, _plain(cfg), name)
    out = {"class_name": cls, "config": new_cfg}
    if "inbound_nodes" in entry:
        out["name"] = entry.get("name", name)
        out["inbound_nodes"] = [_tensor_refs(n.get("args", [])) + _tensor_refs(n.get("kwargs", {}).get("inputs", []))
                                if isinstance(n, dict) else n for n in entry["inbound_nodes"]]
    return out

def _refs3(v):
    if v and isinstance(v[0], str):
        return [list(v)]
    return [list(x) for x in v]


def rebuild_keras3(path: Path, version: str):
    """A Keras 3 `.keras` file rebuilt as a tf-keras model: its config converted layer by layer, its weights
    (read with Keras 3) copied in order, and its outputs checked equal to Keras 3's on probe inputs
    (seeded uniform 0..255 and -1..1 pixels, |diff| <= 1e-5). Raises ModelImportError (cause and fix)."""
    import zipfile

    from leukedge.tfcompat import tensorflow

    tf = tensorflow()
    fix = "in Keras 3 save it as HDF5 (model.save('model.h5')) and import that"
    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelImportError(f"{path}: unreadable Keras 3 file ({exc})") from None
    try:
        model = tf.keras.layers.deserialize(keras3_config_to_tf_keras(tf.keras, config))
    except ModelImportError as exc:
        raise ModelImportError(f"{path}: a Keras 3 file (keras {version}) that tf-keras cannot rebuild: {exc}; {fix}") from None
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a config it cannot read
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
        raise ModelImportError(f"{path}: a Keras 3 file (keras {version}) that tf-keras cannot rebuild "
                               f"({type(exc).__name__}: {first}); {fix}") from None
    try:
        import keras as keras3
    except ImportError:
        raise ModelImportError(f"{path}: a Keras 3 file; reading its weights needs Keras 3 (pip install 'keras>=3'), "
                               f"or {fix}") from None
    if not str(getattr(keras3, "__version__", "")).startswith("3"):
        raise ModelImportError(f"{path}: a Keras 3 file; reading its weights needs Keras 3 (found keras "
                               f"{getattr(keras3, '__version__', '?')}), or {fix}")
    try:
        source = keras3.saving.load_model(str(path), compile=False)
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelImportError(f"{path}: Keras 3 cannot load it ({type(exc).__name__}: {first})") from None
    weights = source.get_weights()
    if [w.shape for w in weights] != [tuple(w.shape) for w in model.weights]:
        raise ModelImportError(f"{path}: the rebuilt tf-keras graph holds other weights than the Keras 3 model; {fix}")
    model.set_weights(weights)
    shape = tuple(d or 64 for d in model.input_shape[1:])
    rng = np.random.default_rng(0)
    for lo, hi in ((0.0, 255.0), (-1.0, 1.0)):
        x = rng.uniform(lo, hi, (4, *shape)).astype(np.float32)
        diff = float(np.max(np.abs(np.asarray(source(x, training=False)) - model(x, training=False).numpy())))
        if not diff <= 1e-5:
            raise ModelImportError(f"{path}: the tf-keras rebuild's outputs differ from Keras 3's by {diff:.2e} on "
                                   f"probe inputs; {fix}")
    return model


def open_source(path: str | Path):
    """Load the model to import as a tf-keras model. Returns (model, {"flavour", "version", "opens_with"}).

    Supported: a tf-keras 2 `.keras` file, an HDF5 `.h5`, and a Keras 3 `.keras` made of layers tf-keras
    also has (rebuilt: rebuild_keras3). A SavedModel or a `.tflite` is refused in one line naming the
    cause and the fix (ModelImportError)."""
    from leukedge.tfcompat import load_keras_model, tensorflow

    p = Path(path)
    if not p.exists():
        raise ModelImportError(f"{p}: no such model file")
    flavour, version = source_flavour(p)
    if flavour == "savedmodel":
        raise ModelImportError(f"{p}: a SavedModel folder; import is implemented for .keras (tf-keras 2) and .h5 — "
                               "load it in tf-keras and save it as model.keras, or convert it to .tflite and "
                               "use it with a card (no pruning either way: tfmot needs a Keras graph)")
    if flavour == "tflite":
        raise ModelImportError(f"{p}: a .tflite model cannot be imported yet (it could be converted and benchmarked "
                               "but never pruned); import the Keras model it was converted from")
    if flavour == "unknown" and p.suffix not in (".keras", ".h5", ".hdf5"):
        raise ModelImportError(f"{p}: not a Keras model file (.keras or .h5)")
    tf = tensorflow()
    import tf_keras

    tk = getattr(tf_keras, "__version__", "")
    if flavour == "keras3":
        return rebuild_keras3(p, version), {
            "flavour": "keras3", "version": version, "tensorflow_version": tf.__version__,
            "opens_with": f"Keras {version} (Keras 3); rebuilt in tf-keras {tk} by leukedge import, outputs checked equal"}
    try:
        model = load_keras_model(p)
    except LeukedgeError as exc:
        raise ModelImportError(str(exc)) from None
    if flavour == "h5":
        opens_with = f"tf-keras 2 (HDF5; opened with tf-keras {tk})"
    else:
        opens_with = f"tf-keras {version or '2'} (TF_USE_LEGACY_KERAS=1); Keras 3 cannot open it"
    return model, {"flavour": flavour, "version": version or tk, "opens_with": opens_with,
                   "tensorflow_version": tf.__version__}


def output_kind(model) -> str:
    """'probabilities' for a softmax head, 'logits' for a linear last Dense; ModelImportError otherwise."""
    last = model.layers[-1]
    act = (last.get_config() or {}).get("activation")
    if act == "softmax":
        return "probabilities"
    if type(last).__name__ == "Dense" and act == "linear":
        return "logits"
    if type(last).__name__ == "Softmax" or (type(last).__name__ == "Activation" and act == "softmax"):
        return "probabilities"
    raise ModelImportError(f"last layer {last.name!r} ({type(last).__name__}, activation {act!r}) is neither a softmax "
                           "over the classes nor logits; leukedge needs one output per label (a sigmoid single "
                           "output is not supported)")


def conform(model, size: int):
    """The model with a fixed (size, size, 3) input, flattened into one graph; refuses mismatches.

    Returns (model, steps: list[str]). Raises ModelImportError when the model has several inputs or
    outputs, a fixed input size other than `size`, or not 3 channels."""
    from leukedge.graph import SurgeryError, flatten

    from leukedge.tfcompat import tensorflow

    tf = tensorflow()
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelImportError(f"model {model.name!r} has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                               "leukedge needs one image input and one class-probability output")
    shape = tuple(model.input_shape[1:])
    if len(shape) != 3 or shape[-1] != 3:
        raise ModelImportError(f"model input shape {model.input_shape} is not (batch, height, width, 3)")
    steps = []
    if shape[:2] != (size, size):
        if None not in shape[:2]:
            raise ModelImportError(f"model input is {shape[0]}x{shape[1]} px but --size is {size}")
        model_fixed = tf.keras.models.clone_model(model, input_tensors=tf.keras.layers.Input((size, size, 3)))
        model_fixed.set_weights(model.get_weights())
        model = model_fixed
        steps.append(f"fixed the input size to {size}x{size}")
    try:
        flat, more = flatten(model)
    except SurgeryError as exc:
        raise ModelImportError(str(exc)) from None
    return flat, steps + more
