"""Graph surgery before pruning and quantization-aware training, each step reported.

Models leukedge did not build (a `Sequential([InceptionV3(...), BatchNormalization(), Dense(...),
...])` from a notebook, say) trip tfmot in three ways: a Keras model nested inside another is not
quantizable ("Quantizing a keras Model inside another keras Model is not supported"); an activity
regularizer on a layer breaks pruning's graph tracing; and a BatchNormalization that does not follow a
Conv2D/Dense (e.g. after global pooling) has no 8-bit QAT recipe (tfmot only folds Conv/Dense+BN
pairs). `prepare` rewrites such a model into one tfmot accepts, with the same inference outputs:

1. flatten nested models into one functional graph (exact: the same layers, the same weights);
2. drop activity regularizers (they only add a training loss; inference is unchanged);
3. fold a standalone BatchNormalization into the Dense that follows it (inference-mode BN is the
   affine map x*a + b with a = gamma/sqrt(var+eps), b = beta - mean*a, so Dense(W, c) after it becomes
   Dense(a[:, None]*W, b@W + c); equal up to float rounding, ~1e-7 relative).

Fine-tunes keep every BatchNorm statistic frozen (inference mode; prune.py and qat.py set them
non-trainable on the flat graph, where every BatchNorm is now a top-level layer).

What still cannot be pruned or quantization-aware-trained is refused by `check` in one line naming
the layer (SurgeryError), before a fine-tune starts.
"""

from __future__ import annotations

import numpy as np

from leukedge.graph import SurgeryError, _is_model, clone_float, flatten, is_nested, rebuild  # noqa: F401 (re-exported)
from leukedge.tfcompat import tensorflow


def _consumers(config: dict) -> dict[str, list[str]]:
    """Layer name -> names of the layers that take its output, from a functional config."""
    out: dict[str, list[str]] = {}
    for layer in config["layers"]:
        for node in layer.get("inbound_nodes", []):
            for inbound in _inbound_refs(node):
                out.setdefault(inbound[0], []).append(layer["name"])
    return out


def _inbound_refs(node):
    """[(layer name, node index, tensor index), ...] of one inbound node, either config style."""
    if isinstance(node, dict):  # newer nested style {"args": ..., "kwargs": ...}
        return []
    return [tuple(ref[:3]) for ref in node if isinstance(ref, (list, tuple)) and ref and isinstance(ref[0], str)]


def rewrite(model):
    """Drop activity regularizers and fold standalone BatchNormalization layers into the next Dense.

    model: a flat functional tf-keras model. Returns (new model with its own weights, steps: list[str]).
    A BatchNormalization is folded when its input is a vector (rank 2), its only consumer is a Dense and
    it normalizes the last axis. Raises SurgeryError when the rebuilt graph cannot be made.
    """
    config = model.get_config()
    if "layers" not in config:
        return model, []
    steps = []
    by_name = {layer["name"]: layer for layer in config["layers"]}
    for lc in config["layers"]:
        if lc["config"].get("activity_regularizer"):
            lc["config"]["activity_regularizer"] = None
            steps.append(f"dropped the activity regularizer of layer {lc['name']!r} (a training-only loss)")
    consumers = _consumers(config)
    folds = {}  # dense name -> bn name
    for lc in list(config["layers"]):
        if lc["class_name"] != "BatchNormalization":
            continue
        name = lc["name"]
        layer = model.get_layer(name)
        axis = lc["config"].get("axis")
        axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
        users = consumers.get(name, [])
        if len(layer.input_shape) != 2 or axis not in (-1, 1) or len(users) != 1:
            continue
        if by_name[users[0]]["class_name"] != "Dense" or len(lc.get("inbound_nodes", [])) != 1:
            continue
        dense = by_name[users[0]]
        if len(dense.get("inbound_nodes", [])) != 1:
            continue
        src = lc["inbound_nodes"][0]
        dense["inbound_nodes"] = [[list(ref) for ref in src]]
        dense["config"]["use_bias"] = True
        config["layers"].remove(lc)
        for out in config.get("output_layers", []):
            if out[0] == name:  # never happens when a Dense consumes it, kept for safety
                raise SurgeryError(f"layer {name!r}: a model output cannot be folded")
        folds[dense["name"]] = name
        steps.append(f"folded BatchNormalization {name!r} into the Dense {dense['name']!r} that follows it "
                     "(inference-mode affine map; outputs equal up to float rounding)")
    if not steps:
        return model, []
    new = rebuild(config, SurgeryError, f"{model.name!r} after surgery")
    for layer in new.layers:
        if not layer.weights:
            continue
        if layer.name in folds:
            bn = model.get_layer(folds[layer.name])
            layer.set_weights(_fold_bn_dense(bn, model.get_layer(layer.name)))
        else:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return new, steps


def _fold_bn_dense(bn, dense) -> list[np.ndarray]:
    """Weights [kernel, bias] of Dense(BN(x)) as one Dense (float64 arithmetic, stored as float32)."""
    w = {v.name.split("/")[-1].split(":")[0]: v.numpy().astype(np.float64) for v in bn.weights}
    var, mean = w["moving_variance"], w["moving_mean"]
    gamma = w.get("gamma", np.ones_like(var))
    beta = w.get("beta", np.zeros_like(var))
    a = gamma / np.sqrt(var + bn.epsilon)
    b = beta - mean * a
    kernel = dense.kernel.numpy().astype(np.float64)
    bias = dense.bias.numpy().astype(np.float64) if dense.use_bias else np.zeros(kernel.shape[1])
    return [(a[:, None] * kernel).astype(np.float32), (b @ kernel + bias).astype(np.float32)]


def batchnorm_layers(model) -> list[str]:
    """Names of every BatchNormalization layer, nested models included."""
    tf = tensorflow()
    names = []
    for layer in model.layers:
        if _is_model(layer):
            names += batchnorm_layers(layer)
        elif isinstance(layer, tf.keras.layers.BatchNormalization):
            names.append(layer.name)
    return names


def check(model, purpose: str) -> None:
    """Refuse, in one line naming the layer, what tfmot cannot prune ('prune') or quantize ('qat').

    model: the flat model `prepare` returned. Raises SurgeryError; returns None when every layer is
    supported. For QAT a BatchNormalization must follow a Conv2D, DepthwiseConv2D or Dense (tfmot folds
    those pairs); any other layer must be in tfmot's 8-bit registry.
    """
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as qreg,
    )
    from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry

    tf = tensorflow()
    if purpose not in ("prune", "qat"):
        raise ValueError(f"purpose must be 'prune' or 'qat', not {purpose!r}")
    registry = qreg.Default8BitQuantizeRegistry()
    foldable = (tf.keras.layers.Conv2D, tf.keras.layers.DepthwiseConv2D, tf.keras.layers.Dense)
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.InputLayer):
            continue
        if _is_model(layer):
            raise SurgeryError(f"layer {layer.name!r} is a nested model; flatten it first (surgery.prepare)")
        if getattr(layer, "activity_regularizer", None) is not None:
            raise SurgeryError(f"layer {layer.name!r} has an activity regularizer; drop it first (surgery.prepare)")
        kind = type(layer).__name__
        if purpose == "prune":
            if layer.weights and not prune_registry.PruneRegistry.supports(layer) and not hasattr(layer, "get_prunable_weights"):
                raise SurgeryError(f"layer {layer.name!r} ({kind}) cannot be pruned by tfmot; remove or replace it")
            continue
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            # the layer feeding it in this model's graph (a layer reused in another graph has more nodes)
            prev = [n.inbound_layers for i, n in enumerate(layer._inbound_nodes)
                    if f"{layer.name}_ib-{i}" in model._network_nodes]  # tf-keras's node key
            prev = [p for group in prev for p in (group if isinstance(group, list) else [group])]
            if not (len(prev) == 1 and isinstance(prev[0], foldable)):
                raise SurgeryError(f"layer {layer.name!r} (BatchNormalization after "
                                   f"{type(prev[0]).__name__ if prev else 'the input'}) has no 8-bit QAT recipe: "
                                   "tfmot folds BatchNorm only into a preceding Conv2D/Dense")
            continue
        if not registry.supports(layer):
            raise SurgeryError(f"layer {layer.name!r} ({kind}) is not supported by tfmot's 8-bit quantization-aware "
                               "training; remove or replace it (post-training int8 still works)")


def prepare(model, purpose: str):
    """Flatten, drop activity regularizers, fold standalone BatchNorms, then `check` for `purpose`.

    model: a tf-keras model (nested or flat). purpose: 'prune' | 'qat'.
    Returns (model ready for tfmot — the input itself when nothing had to change —, steps: list[str]
    describing each change, for the card). Raises SurgeryError naming the layer that cannot be handled.
    """
    flat, steps = flatten(model)
    flat, more = rewrite(flat)
    steps = steps + more
    check(flat, purpose)
    n_bn = len(batchnorm_layers(flat))
    if n_bn:
        steps.append(f"kept the statistics of all {n_bn} BatchNormalization layers frozen during the fine-tune")
    return flat, steps


def check_variants(model, variants) -> dict[str, list[str]]:
    """Refuse, before any image is decoded, a model that the requested variants cannot prune or QAT.

    model: the float parent (tf-keras); variants: optimize.variants.Variant rows. Runs `prepare` once per
    purpose the rows need ('prune' for rows that prune, 'qat' for quantization-aware rows). Returns
    {purpose: surgery steps} for the card. Raises SurgeryError naming the variant, the layer and the cause.
    """
    needed = {}
    for v in variants:
        if getattr(v, "prunes", False):
            needed.setdefault("prune", v.name)
        if getattr(v, "quantization_aware", False):
            needed.setdefault("qat", v.name)
    found = {}
    for purpose, name in needed.items():
        try:
            found[purpose] = prepare(model, purpose)[1]
        except SurgeryError as exc:
            raise SurgeryError(f"variant {name}: {exc}") from None
    return found
