"""Average pools as depthwise convolutions before int8 conversion (optimize.pooling; issue 23's fixed cost)."""

import numpy as np
import pytest

from leukedge.tfcompat import tensorflow

tf = tensorflow()
keras = tf.keras


def test_window_counts_leave_padding_out():
    from leukedge.optimize.pooling import _window_counts

    c = _window_counts(4, 5, 3)
    assert c.shape == (4, 5)
    assert c[0, 0] == c[3, 4] == 4  # corners
    assert c[0, 2] == c[2, 0] == 6  # edges
    assert c[1, 1] == c[2, 3] == 9  # inside
    assert _window_counts(1, 1, 3)[0, 0] == 1
    assert _window_counts(7, 7, 5)[0, 0] == 9 and _window_counts(7, 7, 5)[3, 3] == 25


def _pool_model(size=(9, 11), channels=5):
    x = inp = keras.Input((*size, channels))
    a = keras.layers.AveragePooling2D(3, strides=1, padding="same", name="pool3")(x)
    b = keras.layers.AveragePooling2D(5, strides=1, padding="same", name="pool5")(x)
    c = keras.layers.AveragePooling2D(2, strides=2, padding="valid", name="pool_s2")(x)  # not rewritten
    d = keras.layers.Conv2D(4, 1, name="conv")(keras.layers.Concatenate()([a, b]))
    out = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(d), keras.layers.Flatten()(c)])
    return keras.Model(inp, out)


def test_rewrite_is_float_exact_and_leaves_other_layers_alone():
    from leukedge.optimize.pooling import count_rewritable_pools, pools_as_depthwise

    m = _pool_model()
    assert count_rewritable_pools(m) == 2
    r = pools_as_depthwise(m)
    assert r is not m and count_rewritable_pools(r) == 0
    kinds = {layer.name: type(layer).__name__ for layer in r.layers}
    assert kinds["pool3"] == kinds["pool5"] == "DepthwiseAveragePool"
    assert kinds["pool_s2"] == "AveragePooling2D"
    np.testing.assert_array_equal(r.get_layer("conv").get_weights()[0], m.get_layer("conv").get_weights()[0])
    x = np.random.default_rng(0).normal(size=(3, 9, 11, 5)).astype("float32")
    np.testing.assert_allclose(r(x).numpy(), m(x).numpy(), rtol=1e-5, atol=1e-6)
    for name in ("pool3", "pool5"):  # each pool alone, borders included
        a = keras.Model(m.input, m.get_layer(name).output)(x).numpy()
        b = keras.Model(r.input, r.get_layer(name).output)(x).numpy()
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_a_pool_feeding_only_a_pointwise_conv_swaps_with_it():
    """pool -> linear 1x1 conv -> BatchNorm commute: the rewritten model pools the BatchNorm's output (the conv's
    fewer channels), before the ReLU, which does not commute."""
    from leukedge.optimize.pooling import pools_as_depthwise

    keras.utils.set_random_seed(3)
    inp = keras.Input((9, 9, 16))
    p = keras.layers.AveragePooling2D(3, strides=1, padding="same", name="pool")(inp)
    c = keras.layers.Conv2D(4, 1, use_bias=True, name="pw")(p)  # a bias commutes too: the pool averages constants to themselves
    y = keras.layers.ReLU(name="relu")(keras.layers.BatchNormalization(name="bn")(c))
    shared = keras.layers.AveragePooling2D(3, strides=1, padding="same", name="pool_shared")(inp)
    z = keras.layers.Concatenate()([keras.layers.Conv2D(4, 1, name="a")(shared), keras.layers.Conv2D(4, 1, name="b")(shared)])
    m = keras.Model(inp, [y, z])
    m.get_layer("bn").set_weights([w + np.random.default_rng(0).uniform(0.5, 1.5, w.shape).astype("float32")
                                   for w in m.get_layer("bn").get_weights()])
    r = pools_as_depthwise(m)
    assert r.get_layer("pw").input.shape[-1] == 16 and r.get_layer("pool").input.shape[-1] == 4  # swapped
    assert r.get_layer("bn").input is r.get_layer("pw").output  # the converter can still fold the BatchNorm
    assert r.get_layer("pool").input is r.get_layer("bn").output and r.get_layer("relu").input is r.get_layer("pool").output
    assert r.get_layer("pool_shared").input.shape[-1] == 16  # two consumers: stays in front
    x = np.random.default_rng(4).normal(size=(2, 9, 9, 16)).astype("float32")
    for got, want in zip(r(x), m(x)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


def test_a_nested_model_is_flattened_and_rewritten():
    from leukedge.optimize.pooling import count_rewritable_pools, pools_as_depthwise

    inner_in = keras.Input((8, 8, 6))
    inner = keras.Model(inner_in, keras.layers.Conv2D(3, 1, name="pw")(
        keras.layers.AveragePooling2D(3, strides=1, padding="same", name="pool")(inner_in)), name="inner")
    inp = keras.Input((8, 8, 6))
    m = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(inner(inp)))
    r = pools_as_depthwise(m)
    assert count_rewritable_pools(r) == 0 and not any(isinstance(layer, keras.Model) for layer in r.layers)
    x = np.random.default_rng(5).normal(size=(2, 8, 8, 6)).astype("float32")
    np.testing.assert_allclose(r(x).numpy(), m(x).numpy(), rtol=1e-5, atol=1e-6)


def test_model_without_pools_is_returned_as_is():
    from leukedge.optimize.pooling import pools_as_depthwise

    inp = keras.Input((8, 8, 3))
    m = keras.Model(inp, keras.layers.Conv2D(2, 3)(inp))
    assert pools_as_depthwise(m) is m


def test_inception_v3_features_unchanged():
    from leukedge.optimize.pooling import count_rewritable_pools, pools_as_depthwise

    keras.utils.set_random_seed(0)
    m = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=(75, 75, 3), pooling="avg")
    assert count_rewritable_pools(m) == 9  # mixed0-2, mixed4-7, mixed9-10
    r = pools_as_depthwise(m)
    x = np.random.default_rng(1).uniform(-1, 1, size=(2, 75, 75, 3)).astype("float32")
    a, b = m(x).numpy(), r(x).numpy()
    assert np.abs(b - a).max() <= 1e-5 * max(np.abs(a).max(), 1e-6)


def _op_names(buf: bytes) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=buf)
    return [op["op_name"] for op in it._get_ops_details()]


def test_int8_conversion_has_no_average_pool_and_matches_float():
    from ai_edge_litert.interpreter import Interpreter

    from leukedge.optimize.convert import representative_from, to_tflite

    keras.utils.set_random_seed(0)
    x = inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    a = keras.layers.Conv2D(4, 1, activation="relu")(keras.layers.AveragePooling2D(3, strides=1, padding="same")(x))
    b = keras.layers.Conv2D(4, 1, activation="relu")(x)
    y = keras.layers.GlobalAveragePooling2D()(keras.layers.Concatenate()([a, b]))
    m = keras.Model(inp, keras.layers.Dense(2)(y))
    calib = np.random.default_rng(2).uniform(-1, 1, size=(16, 12, 12, 3)).astype("float32")
    fast = to_tflite(m, "int8", representative_from(calib), io="float32", pools_as_depthwise=True)
    plain = to_tflite(m, "int8", representative_from(calib), io="float32")  # the default keeps TFLite's pool
    assert "AVERAGE_POOL_2D" not in _op_names(fast) and "DEPTHWISE_CONV_2D" in _op_names(fast)
    assert "AVERAGE_POOL_2D" in _op_names(plain)
    want = m(calib[:4]).numpy()
    for buf in (fast, plain):
        it = Interpreter(model_content=buf)
        it.allocate_tensors()
        got = []
        for img in calib[:4]:
            it.set_tensor(it.get_input_details()[0]["index"], img[None])
            it.invoke()
            got.append(it.get_tensor(it.get_output_details()[0]["index"])[0])
        span = np.abs(want).max()
        assert np.abs(np.array(got) - want).max() < 0.1 * span


def test_float_modes_keep_their_pools():
    from leukedge.optimize.convert import to_tflite

    inp = keras.Input((6, 6, 2))
    m = keras.Model(inp, keras.layers.AveragePooling2D(3, strides=1, padding="same")(inp))
    assert "AVERAGE_POOL_2D" in _op_names(to_tflite(m, "float32"))


def test_dynamic_spatial_size_is_refused():
    from leukedge.optimize.pooling import pools_as_depthwise

    inp = keras.Input((None, None, 3))
    m = keras.Model(inp, keras.layers.AveragePooling2D(3, strides=1, padding="same")(inp))
    with pytest.raises(ValueError, match="static height"):
        pools_as_depthwise(m)
