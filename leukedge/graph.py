"""Graph helpers every workstation step may use: copy a tf-keras model, find and flatten nested models.

`train` (import flattens a notebook's nested model) and `optimize` (surgery before pruning and QAT) both
need them, so they live here, below both layers, instead of in optimize/ (issue 19: no import against
the layers, and optimize.prune and optimize.surgery no longer import each other).
"""

from __future__ import annotations

from leukedge.edge.errors import LeukedgeError
from leukedge.tfcompat import tensorflow


def clone_float(model):
    """A copy of a tf-keras model with its own variables (pruning wrappers would otherwise share the parent's)."""
    tf = tensorflow()
    copy = tf.keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


class SurgeryError(LeukedgeError, ValueError):
    """A model that cannot be rewritten for pruning/QAT; the message names the layer and the cause."""


def _is_model(layer) -> bool:
    tf = tensorflow()
    return isinstance(layer, tf.keras.Model)


def is_nested(model) -> bool:
    """True when any layer of `model` is itself a Keras model."""
    return any(_is_model(layer) for layer in model.layers)


def _run_graph(model, inputs: list, rename: dict, path: str):
    """Re-apply the (original) layers of a functional `model` to `inputs`, recursing into nested models
    instead of calling them; mirrors tf-keras's Functional._run_internal_graph. Returns output tensors."""
    tf = tensorflow()
    if not getattr(model, "_is_graph_network", False):
        raise SurgeryError(f"layer {model.name!r} is a subclassed Keras model; it cannot be flattened into "
                           "one functional graph (rebuild it with the functional API)")
    usage = model._tensor_usage_count
    tensors = {}
    for ref, new in zip(model.inputs, inputs):
        tensors[str(id(ref))] = [new] * usage[str(id(ref))]
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input or any(t not in tensors for t in node.flat_input_ids):
                continue
            args, kwargs = node.map_arguments(tensors)
            layer = node.layer
            if _is_model(layer):
                inner_in = tf.nest.flatten(args[0] if args else kwargs.get("inputs"))
                outs = _run_graph(layer, inner_in, rename, f"{path}{layer.name}/")
                outs = outs[0] if len(outs) == 1 else outs
            else:
                if path and layer.name in rename.get("__seen__", set()):
                    layer._name = f"{path.replace('/', '_')}{layer.name}"
                rename.setdefault("__seen__", set()).add(layer.name)
                kwargs.pop("training", None)
                outs = layer(*args, **kwargs)
            for oid, y in zip(node.flat_output_ids, tf.nest.flatten(outs)):
                tensors[oid] = [y] * usage[oid]
    return [tensors[str(id(x))].pop() for x in model.outputs]


def flatten(model):
    """One functional graph holding every layer of `model` and of the models nested in it.

    model: a built tf-keras Functional or Sequential model. Returns (flat model, steps: list[str]);
    the flat model has its own variables (a copy), so `model` is left as it was. Outputs are identical.
    Raises SurgeryError for a subclassed (non-graph) model.
    """
    tf = tensorflow()
    if not is_nested(model):
        return model, []
    copy = clone_float(model)  # own layers, so renaming or rewiring never touches the parent
    nested = [layer.name for layer in copy.layers if _is_model(layer)]
    inputs = [tf.keras.layers.Input(shape=x.shape[1:], dtype=x.dtype, name=x.name.split(":")[0].replace("/", "_"))
              for x in copy.inputs]
    seen = {"__seen__": {layer.name for layer in copy.layers if not _is_model(layer)}}
    outs = _run_graph(copy, inputs, seen, "")
    flat = tf.keras.Model(inputs, outs[0] if len(outs) == 1 else outs, name=f"{copy.name}_flat")
    n = len([layer for layer in flat.layers if not isinstance(layer, tf.keras.layers.InputLayer)])
    return flat, [f"flattened nested model(s) {', '.join(nested)} into one functional graph ({n} layers, "
                  "same weights, outputs unchanged)"]


def rebuild(config: dict, error: type[Exception], what: str, custom_objects: dict | None = None):
    """A new tf-keras functional model from `config` (a Model.get_config() dict a surgery edited); custom_objects:
    layer classes the config names that Keras does not know.

    Keras raises many exception types for a config it cannot rebuild; every one becomes `error` with one line:
    "cannot rebuild <what>: <type>: <Keras's first line, 200 characters at most>"."""
    tf = tensorflow()
    try:
        return tf.keras.Model.from_config(config, custom_objects=custom_objects)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a config it cannot rebuild
        raise error(f"cannot rebuild {what}: {type(exc).__name__}: "
                    f"{(str(exc).splitlines() or [''])[0][:200]}") from None
