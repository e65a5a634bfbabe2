"""Quality and out-of-distribution flags, relative to the training images' statistics."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageFilter

from leukedge.edge.quality import (STATISTICS, Flag, assess, dataset_report, image_statistics, reference_statistics,
                                   screen_training_images)

SIZE = 96


def cell(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A stand-in for a segmented, stained cell: a textured purple disc on black, jittered."""
    yy, xx = np.mgrid[:size, :size]
    cy, cx = size / 2 + rng.normal(0, 3, 2)
    r = size * rng.uniform(0.28, 0.36)
    d = np.hypot(yy - cy, xx - cx)
    inside = d < r
    base = np.array([150, 90, 170]) * rng.uniform(0.9, 1.1) + rng.normal(0, 6, 3)
    nucleus = d < r * 0.6
    img = np.zeros((size, size, 3))
    img[inside] = base
    img[nucleus] = base * 0.6
    img += inside[..., None] * rng.normal(0, 10, (size, size, 1))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def training():
    rng = np.random.default_rng(3)
    return np.stack([cell(rng) for _ in range(60)])


@pytest.fixture(scope="module")
def ref(training):
    return reference_statistics(training)


@pytest.fixture()
def fresh():
    return cell(np.random.default_rng(99))


def test_statistics_are_named_finite_floats(fresh):
    s = image_statistics(fresh)
    assert list(s) == list(STATISTICS)
    assert all(isinstance(v, float) and math.isfinite(v) for v in s.values())
    assert 0.4 < s["bg_fraction"] < 0.9  # a disc on black
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        image_statistics(fresh.astype(np.float32))


def test_reference_is_json_and_needs_enough_images(training, ref, fresh):
    back = json.loads(json.dumps(ref))
    assert back["n_images"] == 60 and back["image_size"] == [SIZE, SIZE]
    assert assess(fresh, back) == assess(fresh, ref)
    with pytest.raises(ValueError, match="at least 20 images"):
        reference_statistics(training[:5])


def test_an_ordinary_image_is_not_flagged(ref):
    rng = np.random.default_rng(1234)
    flagged = sum(bool(assess(cell(rng), ref)) for _ in range(30))
    assert flagged <= 1


def test_constant_image_is_flagged_with_or_without_a_reference(ref):
    for colour in (0, 128, 255):
        img = np.full((SIZE, SIZE, 3), colour, np.uint8)
        for r in (None, ref):
            flags = assess(img, r)
            assert [f.code for f in flags] == ["constant"] and flags[0].kind == "quality"
            assert str(colour) in flags[0].message


def test_without_a_reference_only_the_absolute_check(fresh):
    noise = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    assert assess(noise, None) == [] and assess(fresh, None) == []


def test_far_darker_and_brighter_than_training(ref, fresh):
    dark = (fresh // 16).astype(np.uint8)  # 12-bit data read as 16-bit: 16x darker
    flags = assess(dark, ref)
    assert [f.code for f in flags] == ["too_dark"] and "darker" in flags[0].message
    bright = np.clip(fresh.astype(int) + 200, 0, 254).astype(np.uint8)
    assert [f.code for f in assess(bright, ref)] == ["too_bright"]


def test_mostly_saturated(ref, fresh):
    sat = fresh.copy()
    sat[: SIZE * 3 // 4] = 255
    flags = assess(sat, ref)
    assert "saturated" in [f.code for f in flags]
    msg = next(f.message for f in flags if f.code == "saturated")
    assert "% of pixels at 255" in msg


@pytest.mark.parametrize("probe", ["noise", "hue", "blur", "tiled", "grey"])
def test_out_of_distribution_probes_are_flagged(ref, probe):
    rng = np.random.default_rng(5)
    img = cell(rng)
    if probe == "noise":
        img = rng.integers(0, 256, img.shape, dtype=np.uint8)
    elif probe == "hue":
        hsv = np.array(Image.fromarray(img).convert("HSV"))
        hsv[..., 0] = (hsv[..., 0].astype(int) + 110) % 256
        img = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
    elif probe == "blur":
        img = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(4)))
    elif probe == "tiled":
        big = np.concatenate([np.concatenate([cell(rng), cell(rng)], 1), np.concatenate([cell(rng), cell(rng)], 1)], 0)
        img = np.asarray(Image.fromarray(big).resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    else:
        img = np.repeat(img.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    flags = assess(img, ref)
    assert flags and flags[-1].kind in ("ood", "quality")
    assert all(isinstance(f, Flag) and "\n" not in f.message for f in flags)


def test_ood_message_names_the_statistic_and_numbers(ref, fresh):
    green = fresh[..., [1, 0, 2]]  # swap red and green: a different stain colour
    flags = assess(green, ref)
    assert flags and flags[0].code == "ood" and flags[0].kind == "ood"
    assert "training range" in flags[0].message or "Mahalanobis" in flags[0].message


def test_reference_of_another_version_is_refused(ref, fresh):
    with pytest.raises(ValueError, match="version"):
        assess(fresh, dict(ref, version=99))


def _write_dataset(root, n=24):
    rng = np.random.default_rng(11)
    for k in range(n):
        Image.fromarray(cell(rng)).save(root / ("all" if k % 2 else "hem") / f"c{k}.png")
    Image.new("RGB", (SIZE, SIZE), (0, 0, 0)).save(root / "hem" / "blank.png")
    (root / "all" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)


def test_dataset_report_counts_reasons_and_names_paths(tmp_path):
    for c in ("all", "hem"):
        (tmp_path / c).mkdir()
    _write_dataset(tmp_path)
    rep = dataset_report(sorted(tmp_path.rglob("*.png")), size=SIZE)
    assert rep["checked"] == 25 and rep["reference"] == "dataset"
    assert rep["per_reason"].get("constant") == 1 and rep["flagged"] >= 1
    assert any("blank.png" in line for line in rep["examples"]["constant"])
    assert [p.endswith("broken.png") for p, _ in rep["unreadable"]] == [True]


def test_data_inspect_reports_suspicious_images(tmp_path):
    for c in ("all", "hem"):
        (tmp_path / c).mkdir()
    _write_dataset(tmp_path)
    r = subprocess.run([sys.executable, "-m", "leukedge.cli", "data", "inspect", str(tmp_path), "--positive", "all",
                        "--quality-size", str(SIZE)], capture_output=True, text=True, timeout=120)
    assert "suspicious images:" in r.stdout, r.stdout + r.stderr
    assert "constant" in r.stdout and "blank.png" in r.stdout


def test_screen_training_images_drops_flagged_and_references_the_rest():
    rng = np.random.default_rng(8)
    good = [cell(rng) for _ in range(199)]
    imgs = np.stack(good + [np.zeros((SIZE, SIZE, 3), np.uint8), good[0] // 16])  # 1 % broken
    keep, flags, ref = screen_training_images(imgs)
    assert keep.shape == (201,) and not keep[199] and not keep[200]
    assert flags[199][0].code == "constant" and flags[200][0].code == "too_dark"
    assert keep[:199].all() and ref["n_images"] == 199 and ref["image_size"] == [SIZE, SIZE]  # OOD flags keep
    keep_all, _, _ = screen_training_images(imgs, drop=("quality", "ood"))
    assert keep_all.sum() <= keep.sum() and not keep_all[199] and not keep_all[200]


def _statistics_reference(a: np.ndarray) -> dict[str, float]:
    """The statistics written plainly (np.median, np.percentile-free histogram quantiles, per-channel
    loops): the oracle the fast `image_statistics` must equal bit for bit."""
    sub = a[::2, ::2].astype(np.int64)
    h, w = sub.shape[:2]
    n = h * w
    ring_mask = np.zeros((h, w), bool)
    ring_mask[:2] = ring_mask[-2:] = True
    ring_mask[:, :2] = ring_mask[:, -2:] = True
    bg = np.array([np.median(sub[..., k][ring_mask]) for k in range(3)])
    fg = (np.abs(sub - bg) > 40).any(axis=2)
    n_fg = int(fg.sum())
    green = a[..., 1].astype(np.int64)
    gf = green.ravel().astype(np.float32)
    g_var = max(float(gf @ gf) / gf.size - (float(gf.sum()) / gf.size) ** 2, 0.0)
    s = {f"mean_{c}": int(sub[..., k].sum()) / n for k, c in enumerate("rgb")}
    s["green_std"] = math.sqrt(g_var)
    s["bg_fraction"] = 1.0 - n_fg / n
    means = []
    for k, c in enumerate("rgb"):
        vals = np.sort(sub[..., k][fg])
        for q in (5, 50, 95):
            # first level whose cumulative count reaches n_fg * q / 100
            s[f"fg_{c}_p{q:02d}"] = (float(vals[max(math.ceil(n_fg * q / 100.0) - 1, 0)]) if n_fg else float(bg[k]))
        means.append(int(vals.sum()) / n_fg if n_fg else float(bg[k]))
    s["fg_r_minus_g"] = means[0] - means[1]
    s["fg_b_minus_g"] = means[2] - means[1]
    mx = sub.max(axis=2)
    s["dark_fraction"] = int((mx < 20).sum()) / n
    s["clipped_fraction"] = int((mx == 255).sum()) / n
    cy, cx = h // 4, w // 4
    s["centre_fg"] = int(fg[cy:h - cy, cx:w - cx].sum()) / fg[cy:h - cy, cx:w - cx].size
    c = green[1:-1, 1:-1]
    lap = (green[:-2, 1:-1] + green[2:, 1:-1] + green[1:-1, :-2] + green[1:-1, 2:] - 4 * c).ravel().astype(np.float32)
    lv = max(float(lap @ lap) / lap.size - (float(lap.sum()) / lap.size) ** 2, 0.0)
    s["focus"] = math.log10(lv + 1.0)
    s["sharpness"] = lv / (g_var + 1.0)
    return s


def test_statistics_equal_a_plain_reference_implementation():
    """The fast statistics (channel-first planes, lookup tables, one bincount per channel) equal the plainly
    written ones exactly, on cells, noise, flat, two-level and odd-sized images."""
    rng = np.random.default_rng(7)
    images = [cell(rng) for _ in range(6)]
    for shape in [(8, 8), (9, 11), (8, 30), (15, 9), (64, 64), (224, 224), (101, 37)]:
        images += [rng.integers(0, 256, shape + (3,), dtype=np.uint8),
                   np.full(shape + (3,), rng.integers(0, 256), np.uint8),
                   ((rng.random(shape + (3,)) < 0.5) * 255).astype(np.uint8),
                   rng.integers(100, 140, shape + (3,), dtype=np.uint8)]
        half = np.zeros(shape + (3,), np.uint8)
        half[shape[0] // 3:, : shape[1] // 2] = 200
        images.append(half)
    for a in images:
        fast, plain = image_statistics(a), _statistics_reference(a)
        assert list(fast) == list(STATISTICS)
        for k in STATISTICS:
            assert fast[k] == plain[k], (a.shape, k, fast[k], plain[k])
