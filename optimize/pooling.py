"""Average pooling that the int8 engines run fast: a float-exact rewrite done just before full-integer conversion.

Why: InceptionV3's pooling branches (mixed0-mixed2, mixed4-mixed7, mixed9-mixed10) each start with a 3x3,
stride-1, 'same' average pool. LiteRT's XNNPACK delegate has no signed-int8 average pool, so in a full-integer
model every one of them falls back to TFLite's own kernel, and the model is cut into delegate partitions around
them. Measured with ai-edge-litert 2.3 on an Intel Xeon (Sapphire Rapids, AVX-512 VNNI), one thread, ten such
pools on a 35x35x256 int8 tensor: 13.8 ms with XNNPACK asked for (not taken) against 1.7 ms for ten 3x3 depthwise
convolutions (delegated) and 0.26 ms for ten max pools (`benchmarks/results/README.md`, issue 23). In InceptionV3
the pools cost about as much as a third of all the convolutions; channel pruning leaves them in place, which is
why a slim model's time did not fall with its multiply-accumulates.

The rewrite: a k x k, stride-1 'same' average pool is a depthwise convolution with every weight 1/(k*k), times a
per-position constant k*k / (number of in-image pixels under the window): TensorFlow's 'SAME' average pool leaves
padding out of the count, so border positions are averages of 4 or 6 pixels, not 9. Both are ops every int8
engine delegates (DEPTHWISE_CONV_2D, MUL). In float the two agree to rounding (a test checks 1e-5 on
InceptionV3); in int8 the depthwise weights 1/9 are exact at per-channel scale and the correction map has three
values (1, 1.5, 2.25), so the only added error is the requantization of one more tensor.
"""

from __future__ import annotations

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


def pools_as_depthwise(model):
    """A copy of the Keras `model` whose stride-1 'same' k x k AveragePooling2D layers (k odd) are depthwise
    convolutions times a constant border correction; every other layer keeps its weights. Returns `model` itself
    when it has none. Only functional/sequential tf-keras models; a pool with a dynamic spatial size raises
    ValueError (the rewrite needs the border map)."""
    if not count_rewritable_pools(model):
        return model
    keras = tensorflow().keras
    layer_cls = depthwise_average_pool_class()

    def clone(layer):
        if _rewritable(layer):
            return layer_cls(pool_size=layer.pool_size[0], name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    for src, dst in zip(model.layers, copy.layers):
        if src.get_weights():
            dst.set_weights(src.get_weights())
    return copy
