"""Average pooling that the int8 engines run fast: a float-exact rewrite done just before full-integer conversion.

Why: InceptionV3's pooling branches (mixed0-mixed2, mixed4-mixed7, mixed9-mixed10) each start with a 3x3,
stride-1, 'same' average pool. LiteRT's XNNPACK delegate has no signed-int8 average pool, so in a full-integer
model every one of them falls back to TFLite's own kernel, and the model is cut into delegate partitions around
them. Measured with ai-edge-litert 2.3 on an Intel Xeon (Sapphire Rapids, AVX-512 VNNI), one thread, ten such
pools on a 35x35x256 int8 tensor: 13.8 ms with XNNPACK asked for (not taken) against 1.7 ms for ten 3x3 depthwise
convolutions (delegated) and 0.26 ms for ten max pools. In InceptionV3 they took a third of the int8 model's
time (8.91 -> 5.84 ms at 1 thread on an idle machine: `benchmarks/results/README.md`, issue 23); channel pruning
leaves them in place, which is why a slim model's time did not fall with its multiply-accumulates.

The rewrite: a k x k, stride-1 'same' average pool is a depthwise convolution with every weight 1/(k*k), times a
per-position constant k*k / (number of in-image pixels under the window): TensorFlow's 'SAME' average pool leaves
padding out of the count, so border positions are averages of 4 or 6 pixels, not 9. Both are ops every int8
engine delegates (DEPTHWISE_CONV_2D, MUL). Where the pool feeds only a linear 1x1 convolution (every InceptionV3
pooling branch), the pool first moves after that convolution and its BatchNormalization: all are linear per
position or per channel, so the result is the same, and the pool then averages the branch's 32-192 channels
instead of the block's 192-2048 input channels. In float the rewritten
model agrees to rounding (a test checks 1e-5 on InceptionV3); in int8 the depthwise weights 1/9 are exact at
per-channel scale and the correction map has three values (1, 1.5, 2.25), so the only added error is the
requantization of one more tensor.
"""

from __future__ import annotations

import functools

import numpy as np

from leukedge.tfcompat import tensorflow


def _window_counts(height: int, width: int, k: int) -> np.ndarray:
    """(height, width) float32: how many in-image pixels a k x k 'same' window centred at each position covers."""
    pad = (k - 1) // 2

    def per_axis(n):
        idx = np.arange(n)
        lo = np.maximum(idx - pad, 0)
        hi = np.minimum(idx - pad + k - 1, n - 1)
        return (hi - lo + 1).astype(np.float32)

    return np.outer(per_axis(height), per_axis(width))


@functools.lru_cache(maxsize=None)
def depthwise_average_pool_class():
    """The Keras layer class that computes a stride-1 'same' k x k average pool as depthwise conv x constant map.

    Built lazily (TensorFlow is imported on first use). Its `get_config` carries `pool_size`, so the rewritten
    model can be cloned; it is meant to live only between rewrite and conversion (it is not registered for
    saving)."""
    tf = tensorflow()
    keras = tf.keras

    class DepthwiseAveragePool(keras.layers.Layer):
        def __init__(self, pool_size: int = 3, **kwargs):
            super().__init__(**kwargs)
            self.pool_size = int(pool_size)

        def build(self, input_shape):
            _, h, w, c = (int(d) if d is not None else None for d in input_shape)
            if h is None or w is None or c is None:
                raise ValueError(f"{self.name}: the rewrite needs a static height, width and channel count, "
                                 f"got {tuple(input_shape)}")
            k = self.pool_size
            self._kernel = tf.constant(np.full((k, k, c, 1), 1.0 / (k * k), np.float32))
            correction = (k * k) / _window_counts(h, w, k)
            self._correction = tf.constant(correction[None, :, :, None].astype(np.float32))
            super().build(input_shape)

        def call(self, x):
            y = tf.nn.depthwise_conv2d(x, self._kernel, strides=[1, 1, 1, 1], padding="SAME")
            return y * self._correction

        def get_config(self):
            return {**super().get_config(), "pool_size": self.pool_size}

    return DepthwiseAveragePool


def _rewritable(layer) -> bool:
    keras = tensorflow().keras
    if type(layer) is not keras.layers.AveragePooling2D:
        return False
    (ph, pw), (sh, sw) = tuple(layer.pool_size), tuple(layer.strides)
    return (ph == pw and ph % 2 == 1 and (sh, sw) == (1, 1) and layer.padding == "same"
            and layer.data_format == "channels_last")


def count_rewritable_pools(model) -> int:
    """How many of `model`'s layers are stride-1, 'same', odd square average pools (what the rewrite replaces)."""
    return sum(_rewritable(layer) for layer in model.layers)


def _names_in(nodes) -> list[str]:
    return [entry[0] for node in nodes for entry in node]


def _only_user(layers: list[dict], name: str, outputs: list) -> dict | None:
    """The one layer config that consumes layer `name` (applied once), or None when there are several, none, or
    `name` is a model output."""
    if any(o[0] == name for o in outputs):
        return None
    users = [lc for lc in layers if name in _names_in(lc["inbound_nodes"])]
    return users[0] if len(users) == 1 and len(users[0]["inbound_nodes"]) == 1 else None


def _linear_chain(layers: list[dict], pool: dict, outputs: list) -> list[dict]:
    """The layers right after the pool that commute with it: a linear 1x1, stride-1 Conv2D that is the pool's
    only consumer, and the channels-last BatchNormalization that is the conv's only consumer, if there is one.
    A per-channel affine map commutes with the pool because the pool's weights sum to 1 at every position. []
    when the pool's consumer is anything else."""
    if len(pool["inbound_nodes"]) != 1:
        return []
    conv = _only_user(layers, pool["name"], outputs)
    if conv is None or conv["class_name"] != "Conv2D":
        return []
    c = conv["config"]
    if not (tuple(c["kernel_size"]) == (1, 1) and tuple(c["strides"]) == (1, 1) and c.get("activation") == "linear"
            and tuple(c.get("dilation_rate", (1, 1))) == (1, 1) and c.get("groups", 1) == 1
            and c.get("data_format", "channels_last") == "channels_last"):
        return []
    bn = _only_user(layers, conv["name"], outputs)
    if bn is not None and bn["class_name"] == "BatchNormalization" and bn["config"].get("axis") in (-1, 3, [3], [-1]):
        return [conv, bn]
    return [conv]


def _swap(layers: list[dict], pool: dict, chain: list[dict], outputs: list) -> None:
    """chain(pool(x)) -> pool(chain(x)), in the config. The 1x1 convolution mixes channels, BatchNormalization
    scales and shifts each channel, the pool averages positions with weights that sum to 1: all linear, so the
    order does not change the result. The pool then runs on the convolution's (fewer) output channels, and the
    BatchNormalization still follows the convolution directly (the converter folds it in)."""
    first, last = chain[0], chain[-1]
    for lc in layers:
        if lc is not pool and all(lc is not c for c in chain):
            for node in lc["inbound_nodes"]:
                for entry in node:
                    if entry[0] == last["name"]:
                        entry[0] = pool["name"]
    for o in outputs:
        if o[0] == last["name"]:
            o[0] = pool["name"]
    first["inbound_nodes"], pool["inbound_nodes"] = pool["inbound_nodes"], [[[last["name"], 0, 0, {}]]]
    layers.remove(pool)
    layers.insert(layers.index(last) + 1, pool)


def pools_as_depthwise(model):
    """A copy of the Keras `model` whose stride-1 'same' k x k AveragePooling2D layers (k odd) are depthwise
    convolutions times a constant border correction; every other layer keeps its weights. Where such a pool
    feeds only a linear 1x1 convolution (InceptionV3's pooling branches: pool -> 1x1 conv -> BatchNorm -> ReLU),
    the pool moves after the convolution and its BatchNormalization (_linear_chain), so it averages the
    convolution's output channels (32-192) instead of the block's input (192-2048): the same numbers in float, a
    fraction of the pool's work.

    model: a tf-keras Functional model (a nested one is flattened first: leukedge.graph.flatten); any other model
    is returned as it is. Returns `model` itself when it has no such pool. Raises ValueError for a pool with a
    dynamic spatial size (the rewrite needs the border map)."""
    from leukedge.graph import flatten, is_nested, rebuild

    if is_nested(model):
        model, _ = flatten(model)
    if not count_rewritable_pools(model):
        return model
    config = model.get_config()
    if "layers" not in config or "output_layers" not in config:
        return model
    layer_cls = depthwise_average_pool_class()
    pools = [lc for lc in config["layers"] if _rewritable(model.get_layer(lc["name"]))]
    for pool in pools:
        chain = _linear_chain(config["layers"], pool, config["output_layers"])
        if chain:
            _swap(config["layers"], pool, chain, config["output_layers"])
        pool["class_name"] = "DepthwiseAveragePool"
        pool["module"], pool["registered_name"] = None, "DepthwiseAveragePool"  # found in custom_objects
        pool.pop("build_config", None)  # after a swap its input has the conv's channels: build from the graph
        pool["config"] = {"name": pool["name"], "trainable": pool["config"].get("trainable", True),
                          "dtype": pool["config"].get("dtype", "float32"),
                          "pool_size": int(model.get_layer(pool["name"]).pool_size[0])}
    copy = rebuild(config, ValueError, f"{model.name!r} with its average pools as depthwise convolutions",
                   custom_objects={"DepthwiseAveragePool": layer_cls})
    for layer in copy.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return copy
