import numpy as np
import pytest
from PIL import Image

from helpers import write_image
from leukedge.edge.preprocess import ImageError, Preprocessing, load_rgb, normalize, preprocess_file, quantize


@pytest.mark.parametrize("ext,fmt", [(".bmp", "BMP"), (".png", "PNG"), (".jpg", "JPEG"), (".tif", "TIFF")])
def test_decodes_every_supported_format(tmp_path, ext, fmt):
    p = write_image(tmp_path / f"cell{ext}", size=(50, 40), fmt=fmt)
    arr = load_rgb(p, 32)
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "1", "I"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    fmt = {"CMYK": "JPEG", "I": "TIFF"}.get(mode, "PNG")
    p = write_image(tmp_path / f"cell_{mode}.{fmt.lower()}", mode=mode, fmt=fmt)
    arr = load_rgb(p)
    assert arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8


def test_sixteen_bit_grey_is_rescaled_not_clipped(tmp_path):
    arr16 = np.full((8, 8), 65535, np.uint16)
    arr16[:4] = 32768
    p = tmp_path / "g16.png"
    Image.fromarray(arr16).save(p)
    rgb = load_rgb(p)
    assert rgb[0, 0, 0] == 128 and rgb[7, 7, 0] == 255


def test_transparent_pixels_become_black_background(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[0, 0, 3] = 255  # one opaque pixel, the rest fully transparent
    p = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(p)
    rgb = load_rgb(p)
    assert tuple(rgb[0, 0]) == (200, 200, 200) and tuple(rgb[3, 3]) == (0, 0, 0)


def test_normalize_and_quantize_follow_the_card():
    prep = Preprocessing(size=32, mean=(128.0,) * 3, std=(128.0,) * 3)
    x = normalize(np.array([[[0, 128, 255]]], np.uint8), prep)
    np.testing.assert_allclose(x[0, 0], [-1.0, 0.0, 127 / 128])
    q = quantize(np.array([-1.0, 0.0, 0.5, 2.0], np.float32), 1 / 128, -1, np.int8)
    assert q.tolist() == [-128, -1, 63, 127]  # clipped at the int8 range


def test_preprocess_file_resizes_real_cnmc_bmp(cnmc_dir):
    bmp = sorted(cnmc_dir.glob("training_data/fold_0/all/*.bmp"))[0]
    x = preprocess_file(bmp, Preprocessing(size=224))
    assert x.shape == (224, 224, 3) and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() < 1.0
    assert (x == -1.0).mean() > 0.2  # the black background of a segmented cell


def test_bad_inputs_name_the_file_and_problem(tmp_path):
    missing = tmp_path / "nope.bmp"
    with pytest.raises(ImageError, match="no such file") as e:
        load_rgb(missing)
    assert str(missing) in str(e.value)
    empty = tmp_path / "empty.bmp"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        load_rgb(empty)
    fake = tmp_path / "fake.png"
    fake.write_text("this is not an image")
    with pytest.raises(ImageError, match="not a recognised image"):
        load_rgb(fake)
    good = write_image(tmp_path / "t.bmp", size=(64, 64), fmt="BMP")
    truncated = tmp_path / "truncated.bmp"
    truncated.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_rgb(truncated)
    with pytest.raises(ImageError, match="is a directory"):
        load_rgb(tmp_path)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    p = write_image(tmp_path / "big.png", size=(200, 200), fmt="PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="decompression-bomb"):
        load_rgb(p)


# ----------------------------------------------------------------------------- card preprocessing is validated
GOOD = {"size": 224, "resize": "bilinear", "channels": "RGB", "mean": [128.0, 128.0, 128.0],
        "std": [128.0, 128.0, 128.0], "layout": "NHWC"}


def test_preprocessing_round_trips_with_bit_depth():
    prep = Preprocessing(size=64, bit_depth=12)
    d = prep.to_dict()
    assert d["bit_depth"] == 12 and Preprocessing.from_dict(d) == prep
    assert Preprocessing.from_dict(GOOD).bit_depth is None  # cards without it still load
    assert prep.decode_options(page=2).bit_depth == 12


@pytest.mark.parametrize("field,value,message", [
    ("std", [float("nan")] * 3, r"'std\[0\]' must be finite"),
    ("mean", [0.0, float("inf"), 0.0], r"'mean\[1\]' must be finite"),
    ("std", [128.0, 0.0, 128.0], r"'std\[1\]' must be > 0"),
    ("size", float("inf"), "'size' must be an integer"),  # what json.loads gives for 1e400
    ("size", 1e30, "'size' = .* out of range"),
    ("size", True, "'size' must be an integer, not bool"),
    ("size", "224", "'size' must be an integer, not str"),
    ("size", 224.5, "'size' must be an integer"),
    ("mean", "128", "'mean' must be a list of 3 numbers, not str"),
    ("mean", [128.0, 128.0], "'mean' must have 3 values"),
    ("mean", [True, 0.0, 0.0], r"'mean\[0\]' must be a number, not bool"),
    ("std", [1e400, 1.0, 1.0], r"'std\[0\]' must be finite"),
    ("resize", "fancy", "unknown resize 'fancy'"),
    ("resize", 3, "'resize' must be a string"),
    ("bit_depth", True, "'bit_depth' must be an integer, not bool"),
    ("bit_depth", 64, "'bit_depth' = 64 is out of range"),
    ("layout", "NCHW", "unknown layout"),
])
def test_card_preprocessing_values_are_validated_not_coerced(field, value, message):
    d = dict(GOOD, **{field: value})
    with pytest.raises(ValueError, match=message):
        Preprocessing.from_dict(d)


def test_missing_and_non_object_preprocessing():
    with pytest.raises(ValueError, match="missing 'std'"):
        Preprocessing.from_dict({k: v for k, v in GOOD.items() if k != "std"})
    with pytest.raises(ValueError, match="must be an object"):
        Preprocessing.from_dict([1, 2, 3])


def test_nan_card_is_one_card_error_naming_the_field(tmp_path):
    """../shared/repro/nan-card.sh: a card whose std is NaN gave p_all NaN and exit 0."""
    import json

    from leukedge.edge.card import CardError, ModelCard

    card = ModelCard(labels=["hem", "all"], positive_label="all", preprocessing=Preprocessing(size=64),
                     model_file="m.tflite", model_format="tflite", threshold=0.5)
    d = json.loads(json.dumps(card.to_dict()))
    d["preprocessing"]["std"] = [float("nan")] * 3
    d = json.loads(json.dumps(d))  # NaN survives JSON in Python, as in the reproduction
    with pytest.raises(CardError, match=r"std\[0\]") as e:
        ModelCard.from_dict(d, where="m.json")
    assert "\n" not in str(e.value)


def test_concurrent_decodes_leave_the_warning_filters_as_they_were(tmp_path):
    """Worker threads decode at once (the throughput layout); load_rgb's warnings.catch_warnings is
    process-wide, so unguarded it leaves an extra 'ignore' filter behind (reproduced without the lock)."""
    import threading
    import warnings

    from PIL import Image

    path = tmp_path / "t.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path)
    before = list(warnings.filters)

    def work():
        for _ in range(300):
            load_rgb(path, 8)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert warnings.filters == before


def test_decoding_a_cell_loads_only_the_plugins_it_lists(tmp_path):
    """Image.open(formats=...) must not fall back to Image.init() (every Pillow plugin: 15-35 ms of each
    edge-classify start): the four decoded formats are registered up front."""
    import subprocess
    import sys

    from PIL import Image

    img = tmp_path / "cell.png"
    Image.new("RGB", (32, 32), (200, 100, 50)).save(img)
    code = ("import sys; from leukedge.edge.preprocess import load_rgb; load_rgb(sys.argv[1], 16); "
            "from PIL import Image; print(Image._initialized, 'PIL.EpsImagePlugin' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(img)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "False"], out.stdout + out.stderr
