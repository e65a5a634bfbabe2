"""`leukedge import`: bring a model leukedge did not train into a leukedge run folder.

A model trained elsewhere (the public ALL-vs-HEM notebook: `Sequential([InceptionV3(..., pooling='max'),
BatchNormalization(), Dense(256), Dropout, Dense(2, softmax)])` on raw 0..255 pixels, nearest resize,
outputs [all, hem]) carries none of what leukedge's later steps rely on: which pixels it expects, the
order of its outputs, which class is positive, its decision rule. The user declares them; with labelled
data the import then *checks* the declaration against the model's behaviour, because a wrong scaling
or a reversed label order does not fail loudly — it yields a near-constant P(positive) (issue 11: a
copied card gave P(all) ~ 0.78 for every cell, silently).

Writes OUT/model.keras (a flat tf-keras copy: nested models flattened, outputs checked equal on probe
inputs) and its card OUT/model.keras.json (labels in the model's output order, the positive label by
name, the declared preprocessing, the decision threshold, provenance.imported); with --data also
OUT/split.json (so optimize and benchmark can run) and OUT/import-report.json/.md (the preprocessing
check and a validation report — on images the model may have been trained on: its training images
are unknown).

Scalings (input = (x - mean) / std on 0..255 RGB, per channel):
    raw            x               mean 0,     std 1       (the notebook: no rescaling)
    unit           x / 255         mean 0,     std 255     (tf.keras Rescaling(1/255))
    tf             x / 127.5 - 1   mean 127.5, std 127.5   (keras.applications.inception_v3.preprocess_input)
    inception-2015 (x - 128) / 128 mean 128,   std 128     (Google's 2015 InceptionV3 graph; leukedge's own)
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leukedge import __version__
from leukedge.edge.card import ModelCard, card_path_for
from leukedge.edge.errors import LeukedgeError
from leukedge.edge.files import sha256_file, staged_dir, write_text_atomic
from leukedge.edge.preprocess import Preprocessing, normalize

from leukedge.options import option

from .cells import measure_training_cells

SCALINGS: dict[str, tuple[float, float, str]] = {
    "raw": (0.0, 1.0, "x (raw 0..255)"),
    "unit": (0.0, 255.0, "x/255"),
    "tf": (127.5, 127.5, "x/127.5-1"),
    "inception-2015": (128.0, 128.0, "(x-128)/128"),
}
CHECK_RESIZES = ("nearest", "bilinear", "bicubic", "area")
CHECK_SAMPLE = 200  # labelled images scored per candidate preprocessing
# The check's rule (issue 11): the declared preprocessing is "near chance" when its AUROC < 0.65, its
# balanced accuracy < 0.6, or its P(positive) barely varies (5th..95th percentile range < 0.05); another
# candidate is "clearly better" when its AUROC is >= 0.75 and at least 0.15 higher, or its balanced
# accuracy is >= 0.7 and at least 0.2 higher. Chance is 0.5 for both measures.
NEAR_CHANCE_AUROC, NEAR_CHANCE_BACC, MIN_SPREAD = 0.65, 0.6, 0.05
BETTER_AUROC, BETTER_AUROC_GAIN, BETTER_BACC, BETTER_BACC_GAIN = 0.75, 0.15, 0.7, 0.2
IMPORT_REPORT = "import-report.json"
TRAINING_IMAGES_UNKNOWN = ("training images unknown: the model may have been trained on some of these images, "
                           "so figures measured on them may be optimistic")


class ModelImportError(LeukedgeError, ValueError):
    """A model or declaration that cannot be imported; one line naming the file, the cause and the fix."""


class PreprocessingMismatch(ModelImportError):
    """The declared preprocessing scores near chance on labelled data while another is clearly better."""


def scaling_of(name: str | None = None, mean: float | None = None, std: float | None = None) -> tuple[float, float, str]:
    """(mean, std, description) of a named scaling or of an explicit --mean/--std (exactly one of the two).

    Raises ModelImportError for an unknown name, both or neither given, or std <= 0."""
    if name and (mean is not None or std is not None):
        raise ModelImportError("give either --scale or --mean/--std, not both")
    if name:
        if name not in SCALINGS:
            raise ModelImportError(f"unknown --scale {name!r}; one of {', '.join(SCALINGS)} (or --mean M --std S)")
        return SCALINGS[name]
    if mean is None or std is None:
        raise ModelImportError("say how the model expects its pixels: --scale " + "|".join(SCALINGS)
                               + " or --mean M --std S (input = (x - M) / S on 0..255 RGB)")
    if not std > 0:
        raise ModelImportError(f"--std must be positive, got {std}")
    return float(mean), float(std), f"(x-{mean:g})/{std:g}"


def parse_threshold(value: str | float, n_labels: int = 2) -> tuple[float, str]:
    """(threshold on P(positive), rule text). 'argmax' with two classes is 0.5: the positive class wins
    the argmax exactly when P(positive) > 0.5 (a tie at exactly 0.5 goes to the positive class here)."""
    if isinstance(value, str) and value.strip().lower() == "argmax":
        if n_labels != 2:
            raise ModelImportError("--threshold argmax needs a two-class model")
        return 0.5, "argmax (0.5 on P(positive)), the model's own rule"
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ModelImportError(f"--threshold must be 'argmax' or a number in [0, 1], got {value!r}") from None
    if not 0.0 <= t <= 1.0:
        raise ModelImportError(f"--threshold {t} outside [0, 1]")
    return t, f"declared at import ({t:g} on P(positive))"


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


# -- the preprocessing check -------------------------------------------------------------------------------


@dataclass
class Candidate:
    """One way of feeding the model: a scaling, a resize method and a label order."""

    scaling: str  # a SCALINGS name or the declared (x-M)/S text
    mean: float
    std: float
    resize: str
    reversed_labels: bool = False
    auroc: float | None = None
    balanced_accuracy: float | None = None
    spread: float | None = None  # 95th - 5th percentile of P(positive)
    declared: bool = False

    def describe(self, labels: list[str]) -> str:
        order = list(reversed(labels)) if self.reversed_labels else list(labels)
        return f"{self.scaling} scaling, {self.resize} resize, labels [{', '.join(order)}]"

    def to_dict(self) -> dict:
        return {"scaling": self.scaling, "mean": self.mean, "std": self.std, "resize": self.resize,
                "reversed_labels": self.reversed_labels, "auroc": self.auroc,
                "balanced_accuracy": self.balanced_accuracy, "p_positive_spread": self.spread,
                "declared": self.declared}

    @property
    def near_chance(self) -> bool:
        return ((self.auroc or 0.5) < NEAR_CHANCE_AUROC or (self.balanced_accuracy or 0.5) < NEAR_CHANCE_BACC
                or (self.spread or 0.0) < MIN_SPREAD)

    def clearly_better_than(self, other: "Candidate") -> bool:
        a, b = self.auroc or 0.5, other.auroc or 0.5
        ba, bb = self.balanced_accuracy or 0.5, other.balanced_accuracy or 0.5
        return (a >= BETTER_AUROC and a - b >= BETTER_AUROC_GAIN) or (ba >= BETTER_BACC and ba - bb >= BETTER_BACC_GAIN)


def _score(cand: Candidate, probs: np.ndarray, y_pos: np.ndarray, positive: int, threshold: float) -> Candidate:
    from leukedge.edge.decision import decide
    from leukedge.edge.metrics import auroc

    p = probs[:, 1 - positive] if cand.reversed_labels else probs[:, positive]
    pred = np.asarray(decide(p, threshold), bool)
    sens = float(np.mean(pred[y_pos])) if y_pos.any() else 0.0
    spec = float(np.mean(~pred[~y_pos])) if (~y_pos).any() else 0.0
    cand.auroc = auroc(y_pos, p)
    cand.balanced_accuracy = (sens + spec) / 2
    cand.spread = float(np.percentile(p, 95) - np.percentile(p, 5)) if len(p) else 0.0
    return cand


def _probabilities(model, x: np.ndarray, kind: str) -> np.ndarray:
    y = np.concatenate([model.predict(x[i:i + 64], verbose=0) for i in range(0, len(x), 64)]).astype(np.float64)
    if kind == "logits":
        y = np.exp(y - y.max(axis=1, keepdims=True))
        y /= y.sum(axis=1, keepdims=True)
    return y


def check_preprocessing(model, samples, prep: Preprocessing, labels: list[str], positive: int, threshold: float,
                        kind: str = "probabilities", scaling_name: str = "") -> dict:
    """Score the declared preprocessing and the obvious alternatives on labelled images.

    model: tf-keras model; samples: objects with .path and .label (class index in the MODEL's label
    order), decoded here with the device decoder at prep.size; prep: the declared preprocessing;
    positive: index of the positive label; threshold: the declared decision threshold on P(positive).
    Alternatives: every named scaling at the declared resize, every other resize at the declared scaling,
    and each of those with the label order reversed; measured by AUROC and balanced accuracy (F1 looks
    fine for a constant answer on 2:1 data). Returns {"verified", "declared", "best", "candidates",
    "images", "rule", "reason"}. Raises PreprocessingMismatch (one line) when the declared one is near
    chance while another is clearly better (thresholds: module constants, from issue 11).
    """
    from leukedge.evaluation import decode_samples

    declared_name = SCALINGS[scaling_name][2] if scaling_name in SCALINGS else f"(x-{prep.mean[0]:g})/{prep.std[0]:g}"
    cands: list[Candidate] = []
    decoded = {}
    plan = [(declared_name, prep.mean[0], prep.std[0], prep.resize, True)]
    plan += [(text, m, s, prep.resize, False) for m, s, text in SCALINGS.values() if (m, s) != (prep.mean[0], prep.std[0])]
    plan += [(declared_name, prep.mean[0], prep.std[0], r, False) for r in CHECK_RESIZES if r != prep.resize]
    for name, m, s, r, is_declared in plan:
        if r not in decoded:
            decoded[r] = decode_samples(samples, Preprocessing(size=prep.size, resize=r), progress=False,
                                        what="check images")
        arr = decoded[r]
        probs = _probabilities(model, normalize(arr.images, Preprocessing(size=prep.size, resize=r, mean=(m,) * 3,
                                                                          std=(s,) * 3)), kind)
        for rev in (False, True):
            c = Candidate(name, float(m), float(s), r, rev, declared=is_declared and not rev)
            cands.append(_score(c, probs, arr.labels == positive, positive, threshold))
    declared = cands[0]
    best = max(cands, key=lambda c: ((c.auroc or 0.5) + (c.balanced_accuracy or 0.5), not c.declared))
    better = [c for c in cands if not c.declared and c.clearly_better_than(declared)]
    result = {"images": int(len(decoded[prep.resize].labels)), "declared": declared.to_dict(), "best": best.to_dict(),
              "candidates": [c.to_dict() for c in cands],
              "rule": (f"declared near chance = AUROC < {NEAR_CHANCE_AUROC}, balanced accuracy < {NEAR_CHANCE_BACC} or "
                       f"P(positive) 5..95th percentile range < {MIN_SPREAD}; clearly better = AUROC >= {BETTER_AUROC} and "
                       f"+{BETTER_AUROC_GAIN}, or balanced accuracy >= {BETTER_BACC} and +{BETTER_BACC_GAIN}")}
    if declared.near_chance and better:
        top = max(better, key=lambda c: ((c.auroc or 0.5) + (c.balanced_accuracy or 0.5)))
        fix = []
        if (top.mean, top.std) != (declared.mean, declared.std):
            fix.append("--scale")
        if top.resize != declared.resize:
            fix.append("--resize")
        if top.reversed_labels:
            fix.append("--labels (output order)")
        raise PreprocessingMismatch(
            f"declared {declared.describe(labels)}: AUROC {declared.auroc or 0:.2f}, balanced accuracy "
            f"{declared.balanced_accuracy:.2f}, P({labels[positive]}) spread {declared.spread:.2f}; "
            f"{top.describe(labels)}: AUROC {top.auroc or 0:.2f}, balanced accuracy {top.balanced_accuracy:.2f} "
            f"on {result['images']} labelled images — check {' and '.join(fix)}")
    result["verified"] = not declared.near_chance
    result["reason"] = ("the declared preprocessing separates the classes and no alternative does clearly better"
                        if result["verified"] else
                        f"the declared preprocessing scores near chance (AUROC {declared.auroc or 0:.2f}, balanced "
                        f"accuracy {declared.balanced_accuracy:.2f}) and no alternative does clearly better: the model "
                        "does not work on this data as declared")
    return result


# -- the step ---------------------------------------------------------------------------------------------


@dataclass
class ImportOptions:
    """Options of `leukedge import` (see import_model)."""

    labels: tuple[str, ...] = option((), "The model's labels in OUTPUT order, comma-separated (e.g. all,hem).")
    positive: str = option("", "The positive label, by name (e.g. all).")
    size: int = option(0, "Input size in px (0: the model's own fixed input size).")
    resize: str = option("bilinear", "Resize filter the model was trained with (Keras's image loader: nearest).")
    scale: str = option("", "Pixel scaling: raw = x (0..255), unit = x/255, tf = x/127.5-1 (Keras InceptionV3 "
                            "preprocess_input), inception-2015 = (x-128)/128. Or give --mean/--std.")
    mean: float | None = option(None, "Input = (x - MEAN) / STD on 0..255 RGB (instead of --scale).")
    std: float | None = option(None, "See --mean.")
    # --decision-rule: `--threshold` means a P cut-off everywhere else (edge-classify); kept here as an alias
    threshold: str = option("argmax", "Decision rule: argmax (0.5 on P(positive) for two classes) or a number in [0, 1].",
                            flags=("--decision-rule", "--threshold"))
    data: str = option("", "Labelled dataset: checks the declared preprocessing, writes split.json and a validation report.")
    sample: int = option(CHECK_SAMPLE, "Labelled images scored per candidate preprocessing in the check.")
    seed: int = option(0, "Seed of the check's sample and the split.")
    name: str = option("", "The model's name in its card (default: imported-<file stem>).")

    RANGES = {"size": (0, 4096), "sample": (10, 100000)}
    CHOICES = {"resize": ("nearest", "bilinear", "bicubic", "lanczos", "area")}  # --scale: checked by scaling_of


def import_model(source: str | Path, out: str | Path, opts: ImportOptions) -> dict:
    """Import a Keras model trained elsewhere into a leukedge run folder: the `leukedge import` step.

    source: a tf-keras 2 `.keras` or an `.h5` file. out: the folder for model.keras, its card and, with
    opts.data, split.json and import-report.json/.md (written all or nothing).
    opts.labels: the model's labels in OUTPUT order (index 0 first); opts.positive: the positive label
    by name; opts.size: input size in px; opts.resize: resize filter (nearest for Keras's image loader);
    opts.scale or opts.mean/std: the pixel scaling (SCALINGS); opts.threshold: 'argmax' or a number.
    Without data the card records preprocessing_verified = false, and optimize/benchmark refuse it.
    Returns {"out", "card", "check" (or None), "validation" (or None)}. Raises ModelImportError (or
    PreprocessingMismatch, DatasetError) in one line.
    """
    from leukedge.tfcompat import tensorflow

    src = Path(source)
    labels = [x.strip() for x in opts.labels if x.strip()]
    if len(labels) != 2 or len(set(labels)) != 2:
        raise ModelImportError(f"--labels must name two distinct classes in the model's output order, got {labels}")
    if opts.positive not in labels:
        raise ModelImportError(f"--positive {opts.positive!r} is not one of --labels {labels}")
    mean, std, scale_text = scaling_of(opts.scale or None, opts.mean, opts.std)
    threshold, rule = parse_threshold(opts.threshold)
    model, flavour = open_source(src)
    size = opts.size or (model.input_shape[1] if model.input_shape[1] == model.input_shape[2] else 0)
    if not size:
        raise ModelImportError(f"{src}: the model takes any input size; say which with --size PX")
    try:
        prep = Preprocessing(size=int(size), resize=opts.resize, mean=(mean,) * 3, std=(std,) * 3)
    except ValueError as exc:
        raise ModelImportError(f"invalid preprocessing: {exc}") from None
    if model.output_shape[-1] != len(labels):
        raise ModelImportError(f"{src}: the model has {model.output_shape[-1]} outputs but --labels names {len(labels)}")
    kind = output_kind(model)
    flat, steps = conform(model, prep.size)
    positive = labels.index(opts.positive)
    tf = tensorflow()
    source_sha = sha256_file(src)

    check = validation = split_desc = None
    ds = split = None
    if opts.data:
        from .datasets import read_dataset
        from .splits import make_split, subsample

        ds = read_dataset(opts.data, positive=opts.positive)
        if sorted(ds.labels) != sorted(labels):
            raise ModelImportError(f"{opts.data}: dataset labels {ds.labels} differ from --labels {labels}")
        from types import SimpleNamespace

        chosen = [SimpleNamespace(path=s.path, label=labels.index(ds.labels[s.label]))  # model's label order
                  for s in subsample(ds.labelled, opts.sample, opts.seed)]
        check = check_preprocessing(flat, chosen, prep, labels, positive, threshold, kind, opts.scale or "")
        split = make_split(ds, seed=opts.seed)
        split_desc = split.describe(ds)

    imported = {
        "source": {"file": src.name, "path": str(src.resolve()), "sha256": source_sha},
        "keras": flavour,
        "training_images": "unknown",
        "declared": {"labels": labels, "positive": opts.positive, "size": prep.size, "resize": prep.resize,
                     "scaling": scale_text, "mean": mean, "std": std, "threshold": opts.threshold},
        "preprocessing_verified": bool(check and check["verified"]),
        "preprocessing_check": ({k: check[k] for k in ("images", "declared", "best", "rule", "reason")} if check else
                                "not run (no --data): optimize and benchmark refuse this model until it is "
                                "re-imported with labelled data"),
        "surgery": steps,
    }
    import tf_keras

    card = ModelCard(labels=labels, positive_label=opts.positive, preprocessing=prep, model_file="model.keras",
                     model_format="keras", threshold=threshold, name=opts.name or f"imported-{src.stem}",
                     variant="float", output=kind,
                     cells=(measure_training_cells([s.path for s in ds.labelled], root=ds.root, step="import",
                                                   seed=opts.seed) if ds is not None else None),
                     provenance={"leukedge_version": __version__, "imported": imported,
                                 "keras": {"flavour": "tf-keras", "version": getattr(tf_keras, "__version__", ""),
                                           "opens_with": "tf-keras 2 with TF_USE_LEGACY_KERAS=1 (not Keras 3)"},
                                 "tensorflow_version": tf.__version__, "threshold_rule": rule,
                                 **({"data": {"root": str(Path(ds.root).resolve()), "layout": ds.layout},
                                     "split": split_desc} if ds is not None else {})})
    with staged_dir(out) as stage:
        path = stage / "model.keras"
        flat.save(path)
        _check_copy(model, path, prep)
        if split is not None:
            from leukedge.evaluation import KerasScorer, evaluate, load_part

            from .splits import SPLIT_FILE, write_split

            write_split(split, ds, stage / SPLIT_FILE)
            val = load_part(split.parts["validation"], prep, "validation").in_label_order(ds.labels, labels)
            ev = evaluate(KerasScorer(flat, prep, positive, output=kind), val, threshold, labels, positive)
            validation = {**ev.report, "images": int(len(val.labels)), "note": TRAINING_IMAGES_UNKNOWN}
            card.metrics = {"validation": validation}
        card.bind(path)
        card.save(card_path_for(path))
        if check is not None:
            report = {"schema": "leukedge.import-report", "schema_version": 1, "source": imported["source"],
                      "check": check, "validation": validation, "card": card_path_for(path).name}
            write_text_atomic(stage / IMPORT_REPORT, json.dumps(report, indent=2) + "\n")
            write_text_atomic(stage / "import-report.md", report_markdown(report, labels, positive))
    print(f"leukedge import: wrote {Path(out)}/model.keras and its card from {src.name} "
          f"({flavour['flavour']}; preprocessing {'verified on ' + str(check['images']) + ' images' if check and check['verified'] else 'UNVERIFIED'})",
          file=sys.stderr)
    return {"out": str(out), "card": card.to_dict(), "check": check, "validation": validation}


def _check_copy(source_model, saved: Path, prep: Preprocessing, atol: float = 1e-5) -> None:
    """The saved flat copy gives the source's outputs on probe inputs (seeded uniform 0..255 pixels)."""
    from leukedge.tfcompat import load_keras_model

    copy = load_keras_model(saved)
    rng = np.random.default_rng(0)
    x = normalize(rng.integers(0, 256, (4, prep.size, prep.size, 3), dtype=np.uint8), prep)
    a = source_model.predict(x, verbose=0)
    b = copy.predict(x, verbose=0)
    diff = float(np.max(np.abs(a - b)))
    if not diff <= atol:
        raise ModelImportError(f"{saved.name}: the flat copy's outputs differ from the source's by {diff:.2e} "
                               f"on probe inputs (tolerance {atol}); not written")


def report_markdown(report: dict, labels: list[str], positive: int) -> str:
    """The import report as Markdown: the preprocessing check table and the validation figures."""
    c = report["check"]
    lines = [f"# leukedge import: {report['source']['file']}", "",
             f"Preprocessing check on {c['images']} labelled images: {'verified' if c['verified'] else 'NOT verified'} "
             f"({c['reason']}). Rule: {c['rule']}.", "",
             f"| scaling | resize | label order | AUROC | balanced accuracy | P({labels[positive]}) spread | |",
             "|---|---|---|---:|---:|---:|---|"]
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for k in c["candidates"]:
        order = ", ".join(reversed(labels) if k["reversed_labels"] else labels)
        lines.append(f"| {k['scaling']} | {k['resize']} | [{order}] | {f(k['auroc'])} | {f(k['balanced_accuracy'])} | "
                     f"{f(k['p_positive_spread'])} | {'declared' if k['declared'] else ''} |")
    v = report.get("validation")
    if v:
        lines += ["", f"Validation part ({v['images']} images): F1({labels[positive]}) {v['f1_positive']:.4f}, "
                      f"sensitivity {v['sensitivity']:.4f}, specificity {v['specificity']:.4f}, "
                      f"AUROC {f(v.get('auroc'))} at threshold {v['threshold']:.4f}.", "",
                  f"**Note:** {TRAINING_IMAGES_UNKNOWN}."]
    return "\n".join(lines) + "\n"


def require_verified(card: ModelCard, model_path: str | Path) -> None:
    """Refuse (ModelImportError, one line with the fix) an imported model whose preprocessing was never
    checked on labelled data. Models leukedge trained, and verified imports, pass."""
    imported = (card.provenance or {}).get("imported")
    if imported is not None and not imported.get("preprocessing_verified"):
        src = (imported.get("source") or {}).get("file", "MODEL")
        raise ModelImportError(f"{model_path}: imported without labelled data, so its preprocessing is unverified — "
                               f"re-run `leukedge import {src} --out DIR ... --data DATA` to check it")



def verify_card_behaviour(model, card: ModelCard, samples, data_labels: list[str], model_path: str | Path = "",
                          sample: int = 100, seed: int = 0) -> dict:
    """The preprocessing check for a card that did not come from `leukedge import` (e.g. in optimize, on the
    validation part): catches a card whose labels or preprocessing disagree with the model's behaviour.

    samples: split samples (.path, .label in `data_labels` order); up to `sample` are scored (stratified).
    Returns check_preprocessing's dict. Raises PreprocessingMismatch, prefixed with the model path.
    """
    from types import SimpleNamespace

    from .splits import subsample

    chosen = [SimpleNamespace(path=s.path, label=card.labels.index(data_labels[s.label]))
              for s in subsample(list(samples), sample, seed)]
    try:
        return check_preprocessing(model, chosen, card.preprocessing, card.labels, card.positive_index,
                                   card.threshold, card.output)
    except PreprocessingMismatch as exc:
        raise PreprocessingMismatch(f"{model_path}: its card disagrees with the model's behaviour: {exc}") from None
