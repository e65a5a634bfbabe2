"""What the model sees is what the microscope saw: every decoding rule of edge.preprocess, per class.

Bit depth (every integer container), float ranges, every alpha layout, every multi-page
arrangement accepted or refused, EXIF orientations 2-8, ICC profiles, the pixel cap, JPEG draft
decoding, bounded memory, and the reproductions of ../shared/repro/odd_images.py.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from helpers import SHARED_DATA
from leukedge.edge.preprocess import DecodeOptions, ImageError, load_rgb
from leukedge.edge.quality import assess, reference_statistics

REPRO = SHARED_DATA.parent / "repro"
RNG = np.random.default_rng(7)


def rule(v, bits):
    """The documented bit-depth rule, computed independently in float64."""
    top = 2 ** bits - 1
    return np.rint(np.minimum(np.asarray(v, np.float64), top) * 255.0 / top).astype(np.uint8)


def grey3(a):
    return np.repeat(np.asarray(a)[..., None], 3, axis=2)


# ----------------------------------------------------------------------------- a minimal TIFF writer
_TYPES = {3: ("H", 2), 4: ("I", 4), 5: ("II", 8)}


def write_tiff(path: Path, pages, extra_tags=None, byteorder="<"):
    """Uncompressed TIFF, one strip per page. pages: arrays HxW or HxWxC (uint8/uint16/int32/float32);
    extra_tags: per page, a dict tag -> (type, [values]) (e.g. {254: (4, [1])})."""
    bo = byteorder
    buf = bytearray((b"II*\x00" if bo == "<" else b"MM\x00*") + b"\0\0\0\0")
    offs = []
    for arr in pages:
        arr = np.ascontiguousarray(arr)
        offs.append(len(buf))
        buf += arr.astype(arr.dtype.newbyteorder(bo)).tobytes()
        if len(buf) % 2:
            buf += b"\0"
    ifds = []
    for k, arr in enumerate(pages):
        h, w = arr.shape[:2]
        spp = 1 if arr.ndim == 2 else arr.shape[2]
        fmt = 3 if arr.dtype.kind == "f" else (2 if arr.dtype.kind == "i" else 1)
        nbytes = arr.size * arr.dtype.itemsize
        tags = {256: (4, [w]), 257: (4, [h]), 258: (3, [arr.dtype.itemsize * 8] * spp), 259: (3, [1]),
                262: (3, [2 if spp >= 3 else 1]), 273: (4, [offs[k]]), 277: (3, [spp]), 278: (4, [h]),
                279: (4, [nbytes]), 284: (3, [1]), 339: (3, [fmt] * spp)}
        if spp == 4:
            tags[338] = (3, [2])  # ExtraSamples: unassociated alpha
        tags.update((extra_tags or [{}] * len(pages))[k])
        start = len(buf)
        ifds.append(start)
        n = len(tags)
        body = bytearray(struct.pack(bo + "H", n))
        extra = bytearray()
        extra_at = start + 2 + 12 * n + 4
        for tag in sorted(tags):
            typ, vals = tags[tag]
            f, size = _TYPES[typ]
            raw = struct.pack(bo + f * len(vals), *vals) if typ != 5 else struct.pack(bo + "I" * (2 * len(vals)), *[x for v in vals for x in v])
            count = len(vals)
            if len(raw) <= 4:
                body += struct.pack(bo + "HHI", tag, typ, count) + raw.ljust(4, b"\0")
            else:
                body += struct.pack(bo + "HHII", tag, typ, count, extra_at + len(extra))
                extra += raw
        body += b"\0\0\0\0"
        buf += body + extra
    struct.pack_into(bo + "I", buf, 4, ifds[0])
    for k, off in enumerate(ifds):
        n = struct.unpack_from(bo + "H", buf, off)[0]
        struct.pack_into(bo + "I", buf, off + 2 + 12 * n, ifds[k + 1] if k + 1 < len(ifds) else 0)
    path.write_bytes(bytes(buf))
    return path


def write_bmp32(path: Path, rgb: np.ndarray, alpha: np.ndarray, layout="BGRA", header=124):
    """32-bpp BI_BITFIELDS BMP (V4/V5 header) with an alpha mask; layout BGRA (Windows) or ABGR (GIMP)."""
    h, w = rgb.shape[:2]
    a = alpha[..., None].astype(np.uint8)
    if layout == "BGRA":
        px, masks = np.concatenate([rgb[..., 2:3], rgb[..., 1:2], rgb[..., 0:1], a], axis=2), (0xFF0000, 0xFF00, 0xFF, 0xFF000000)
    else:
        px, masks = np.concatenate([a, rgb[..., 2:3], rgb[..., 1:2], rgb[..., 0:1]], axis=2), (0xFF000000, 0xFF0000, 0xFF00, 0xFF)
    data = px[::-1].tobytes()
    hdr = struct.pack("<IiiHHIIiiII", header, w, h, 1, 32, 3, len(data), 3780, 3780, 0, 0) + struct.pack("<IIII", *masks)
    hdr += b"BGRs" + b"\0" * 48
    if header == 124:
        hdr += struct.pack("<IIII", 4, 0, 0, 0)
    off = 14 + len(hdr)
    path.write_bytes(b"BM" + struct.pack("<IHHI", off + len(data), 0, 0, off) + hdr + data)
    return path


# ----------------------------------------------------------------------------- reproductions
@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    script = REPRO / "odd_images.py"
    if not script.is_file() or not SHARED_DATA.is_dir():
        pytest.skip(f"reproductions not found at {REPRO} (../shared is absent on this machine)")
    out = tmp_path_factory.mktemp("odd")
    subprocess.run([sys.executable, str(script), str(out)], check=True, capture_output=True)
    return out


@pytest.mark.parametrize("name", ["v5_32bpp_bitfields_alpha0.bmp", "tiff_three_channel_pages.tif",
                                  "jpeg_exif_orientation6.jpg"])
def test_reproduction_decodes_to_the_expected_pixels(odd, name):
    got = load_rgb(odd / name)
    want = np.load(odd / "expected" / (Path(name).stem + ".npy"))
    assert got.shape == want.shape
    assert np.array_equal(got, want)


def test_twelve_bit_tiff_with_declared_depth_is_exact_and_undeclared_is_caught(odd, cnmc_dir):
    f = odd / "tiff16_grey_12bit_data.tif"
    want = np.load(odd / "expected" / "tiff16_grey_12bit_data.npy")
    assert np.array_equal(load_rgb(f, options=DecodeOptions(bit_depth=12)), want)
    # Undeclared: the container rule (16 bits) makes it 16x darker; the quality gate must say so.
    dark = load_rgb(f, 224)
    assert dark.max() <= 16
    ref = reference_statistics(load_rgb(p, 224) for p in sorted(cnmc_dir.glob("training_data/*/*/*.bmp")))
    flags = assess(dark, ref)
    assert [fl.code for fl in flags] == ["too_dark"] and "darker" in flags[0].message
    # Declared: brightness as in training (a grey picture of a stained cell may still be OOD, not dark).
    assert all(fl.kind == "ood" for fl in assess(load_rgb(f, 224, options=DecodeOptions(bit_depth=12)), ref))


# ----------------------------------------------------------------------------- bit depth
def _grey_u16(bits, shape=(24, 20)):
    return RNG.integers(0, 2 ** bits, shape).astype(np.uint16)


@pytest.mark.parametrize("container", ["png16", "tiff16le", "tiff16be", "tiff32"])
@pytest.mark.parametrize("bits", [None, 10, 12, 14, 16])
def test_one_bit_depth_rule_for_every_integer_container(tmp_path, container, bits):
    data = _grey_u16(bits or 16)
    if container == "png16":
        p = tmp_path / "g.png"
        Image.fromarray(data).save(p)
        native = 16
    elif container == "tiff32":
        p = write_tiff(tmp_path / "g.tif", [data.astype(np.int32)])
        native = 32
    else:
        p = write_tiff(tmp_path / "g.tif", [data], byteorder="<" if container == "tiff16le" else ">")
        native = 16
    got = load_rgb(p, options=DecodeOptions(bit_depth=bits))
    assert np.array_equal(got, grey3(rule(data, bits or native)))


def test_declared_depth_does_not_depend_on_the_image(tmp_path):
    # The same camera value gives the same output whatever else the image holds (no per-image gain).
    dim = np.full((8, 8), 300, np.uint16)
    bright = dim.copy()
    bright[0, 0] = 4000
    opts = DecodeOptions(bit_depth=12)
    a = load_rgb(write_tiff(tmp_path / "dim.tif", [dim]), options=opts)
    b = load_rgb(write_tiff(tmp_path / "bright.tif", [bright]), options=opts)
    assert a[4, 4, 0] == b[4, 4, 0] == rule(300, 12)


def test_file_declared_significant_bits_win(tmp_path):
    data = _grey_u16(12)
    p = write_tiff(tmp_path / "s.tif", [data], [{341: (3, [4095])}])  # SMaxSampleValue
    want = grey3(rule(data, 12))
    assert np.array_equal(load_rgb(p), want)
    assert np.array_equal(load_rgb(p, options=DecodeOptions(bit_depth=16)), want)


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB"])
def test_eight_bit_modes_are_unchanged_and_a_higher_declared_depth_is_capped(tmp_path, mode):
    rgb = RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    im = Image.fromarray(rgb).convert(mode)
    p = tmp_path / "x.png"
    im.save(p)
    want = np.asarray(Image.open(p).convert("RGB"))
    assert np.array_equal(load_rgb(p), want)
    assert np.array_equal(load_rgb(p, options=DecodeOptions(bit_depth=12)), want)


def test_eight_bit_container_with_fewer_significant_bits(tmp_path):
    data = RNG.integers(0, 64, (10, 10), dtype=np.uint8)
    p = tmp_path / "six.png"
    Image.fromarray(data, "L").save(p)
    assert np.array_equal(load_rgb(p, options=DecodeOptions(bit_depth=6)), grey3(rule(data, 6)))


def test_sixteen_bit_colour_container_rule_and_declared_depth_refused(tmp_path):
    data = RNG.integers(0, 65536, (6, 7, 3)).astype(np.uint16)
    p = write_tiff(tmp_path / "rgb16.tif", [data])
    got = load_rgb(p).astype(int)
    assert np.abs(got - rule(data, 16)).max() <= 1  # Pillow keeps the high byte: within one level
    twelve = RNG.integers(0, 4096, (6, 7, 3)).astype(np.uint16)
    for bo in "<>":
        p12 = write_tiff(tmp_path / "rgb12.tif", [twelve], byteorder=bo)
        assert np.array_equal(load_rgb(p12, options=DecodeOptions(bit_depth=12)), rule(twelve, 12))
        p12s = write_tiff(tmp_path / "rgb12s.tif", [twelve], [{341: (3, [4095] * 3)}], byteorder=bo)
        assert np.array_equal(load_rgb(p12s), rule(twelve, 12))
    rgba = np.dstack([twelve, np.full(twelve.shape[:2], 4095, np.uint16)])
    assert np.array_equal(load_rgb(write_tiff(tmp_path / "rgba12.tif", [rgba]), options=DecodeOptions(bit_depth=12)),
                          rule(twelve, 12))
    png = tmp_path / "rgb16.png"
    with open(png, "wb") as fh:  # a 16-bit colour PNG (Pillow cannot write one): the declared depth is refused
        import zlib
        raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in twelve)

        def chunk(t, d):
            return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
        fh.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 7, 6, 16, 2, 0, 0, 0))
                 + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    assert np.abs(load_rgb(png).astype(int) - rule(twelve, 16)).max() <= 1
    with pytest.raises(ImageError, match="16-bit colour image with 12 significant bits"):
        load_rgb(png, options=DecodeOptions(bit_depth=12))


# ----------------------------------------------------------------------------- floats
def test_float_in_unit_range_is_scaled_by_255(tmp_path):
    data = RNG.random((9, 11)).astype(np.float32)
    data[0, 0], data[0, 1] = 0.0, 1.0
    got = load_rgb(write_tiff(tmp_path / "f.tif", [data]))
    assert np.array_equal(got, grey3(np.rint(data * 255).astype(np.uint8)))


def test_float_outside_unit_range_needs_a_declared_range(tmp_path):
    data = (RNG.random((9, 11)) * 4095).astype(np.float32)
    p = write_tiff(tmp_path / "f.tif", [data])
    with pytest.raises(ImageError, match=r"outside \[0, 1\].*value_range"):
        load_rgb(p)
    got = load_rgb(p, options=DecodeOptions(value_range=(0.0, 4095.0)))
    assert np.abs(got[..., 0].astype(int) - np.rint(data / 4095 * 255)).max() <= 1
    signed = (RNG.random((9, 11)) * 2 - 1).astype(np.float32)
    got = load_rgb(write_tiff(tmp_path / "s.tif", [signed]), options=DecodeOptions(value_range=(-1, 1)))
    assert np.abs(got[..., 0].astype(int) - np.rint((signed + 1) / 2 * 255)).max() <= 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_with_nan_or_infinity_is_refused(tmp_path, bad):
    data = np.full((4, 4), 0.5, np.float32)
    data[2, 2] = bad
    with pytest.raises(ImageError, match="NaN or infinite"):
        load_rgb(write_tiff(tmp_path / "n.tif", [data]))


# ----------------------------------------------------------------------------- alpha
def _cell(h=12, w=10):
    return RNG.integers(1, 256, (h, w, 3), dtype=np.uint8)


def _alpha_cases(rgb):
    h, w = rgb.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    mask[2:8, 3:7] = 255
    mask[0, 0] = 128
    composite = np.rint(rgb.astype(np.float64) * mask[..., None] / 255).astype(np.uint8)
    return {"zero": (np.zeros((h, w), np.uint8), rgb), "opaque": (np.full((h, w), 255, np.uint8), rgb),
            "mask": (mask, composite)}


@pytest.mark.parametrize("alpha", ["zero", "opaque", "mask"])
@pytest.mark.parametrize("layout", ["png-RGBA", "png-LA", "tiff-RGBA", "bmp-v5-BGRA", "bmp-v4-BGRA", "bmp-v5-ABGR"])
def test_every_alpha_layout(tmp_path, layout, alpha):
    rgb = _cell()
    if layout == "png-LA":
        rgb = grey3(rgb[..., 0])
    a, want = _alpha_cases(rgb)[alpha]
    if layout == "png-RGBA":
        p = tmp_path / "a.png"
        Image.fromarray(np.dstack([rgb, a]), "RGBA").save(p)
    elif layout == "png-LA":
        p = tmp_path / "a.png"
        Image.fromarray(np.dstack([rgb[..., 0], a]), "LA").save(p)
    elif layout == "tiff-RGBA":
        p = write_tiff(tmp_path / "a.tif", [np.dstack([rgb, a])])
    else:
        _, hdr, order = layout.split("-")
        p = write_bmp32(tmp_path / "a.bmp", rgb, a, order, 124 if hdr == "v5" else 108)
    got = load_rgb(p).astype(int)
    assert np.abs(got - want).max() <= 1  # Pillow's compositing rounds within one level


def test_palette_with_transparency(tmp_path):
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([200, 100, 50] + [10, 20, 30] + [0, 0, 0] * 254)
    pal.putpixel((1, 1), 1)
    p = tmp_path / "p.png"
    pal.save(p, transparency=0)  # colour 0 fully transparent, colour 1 opaque
    got = load_rgb(p)
    assert tuple(got[0, 0]) == (0, 0, 0) and tuple(got[1, 1]) == (10, 20, 30)
    p_all = tmp_path / "p_all.png"
    Image.new("P", (4, 4), 0).save(p_all, transparency=0)  # alpha 0 everywhere: ignored
    pal0 = Image.open(p_all).convert("RGB").getpixel((0, 0))
    assert tuple(load_rgb(p_all)[0, 0]) == pal0


# ----------------------------------------------------------------------------- multi-page
def _planes(h=10, w=12, dtype=np.uint8):
    top = 255 if dtype == np.uint8 else 4095
    return [RNG.integers(0, top + 1, (h, w)).astype(dtype) for _ in range(3)]


def test_three_grey_pages_are_rgb_planes_in_page_order(tmp_path):
    pl = _planes()
    assert np.array_equal(load_rgb(write_tiff(tmp_path / "p.tif", pl)), np.dstack(pl))


def test_three_sixteen_bit_pages_follow_the_depth_rule(tmp_path):
    pl = _planes(dtype=np.uint16)
    got = load_rgb(write_tiff(tmp_path / "p.tif", pl), options=DecodeOptions(bit_depth=12))
    assert np.array_equal(got, np.dstack([rule(x, 12) for x in pl]))


@pytest.mark.parametrize("arrangement", ["pyramid", "thumbnail", "flagged-reduced"])
def test_reduced_resolution_pages_mean_page_one(tmp_path, arrangement):
    full = _cell(32, 40)
    if arrangement == "pyramid":
        pages, tags = [full, full[::2, ::2], full[::4, ::4]], None
    elif arrangement == "thumbnail":
        pages, tags = [full, full[::8, ::8]], None
    else:  # same size, but NewSubfileType says "reduced-resolution copy"
        pages, tags = [full, full], [{}, {254: (4, [1])}]
    assert np.array_equal(load_rgb(write_tiff(tmp_path / "m.tif", pages, tags)), full)


@pytest.mark.parametrize("n,kind", [(2, "grey"), (4, "grey"), (3, "rgb"), (5, "rgb"), (3, "mixed-size")])
def test_other_multi_page_files_are_refused_naming_the_page_count(tmp_path, n, kind):
    if kind == "grey":
        pages = [_cell()[..., 0] for _ in range(n)]
    elif kind == "rgb":
        pages = [_cell() for _ in range(n)]
    else:
        pages = [_cell(10, 12)[..., 0], _cell(10, 12)[..., 0], _cell(12, 12)[..., 0]]
    p = write_tiff(tmp_path / "z.tif", pages)
    with pytest.raises(ImageError, match=rf"multi-page image with {n} pages.*--page 1\.\.{n}"):
        load_rgb(p)
    for k in range(1, n + 1):  # --page picks any one
        want = pages[k - 1] if pages[k - 1].ndim == 3 else grey3(pages[k - 1])
        assert np.array_equal(load_rgb(p, options=DecodeOptions(page=k)), want)
    with pytest.raises(ImageError, match=rf"page {n + 1} requested, but the file has {n} page"):
        load_rgb(p, options=DecodeOptions(page=n + 1))


def test_page_option_on_a_single_page_file(tmp_path):
    p = write_tiff(tmp_path / "one.tif", [_cell()])
    assert load_rgb(p, options=DecodeOptions(page=1)).shape == (12, 10, 3)
    with pytest.raises(ImageError, match="page 2 requested, but the file has 1 page"):
        load_rgb(p, options=DecodeOptions(page=2))


# ----------------------------------------------------------------------------- orientation, colour
_UNDO = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
         5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
         8: Image.Transpose.ROTATE_270}  # how a camera stores an upright picture for each tag value


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_exif_orientation_is_applied(tmp_path, orientation, fmt):
    upright = np.zeros((30, 20, 3), np.uint8)
    upright[:10, :5] = (250, 10, 10)  # a red top-left corner: every transform moves it
    upright[-5:, :] = (10, 250, 10)
    stored = Image.fromarray(upright)
    if orientation in _UNDO:
        stored = stored.transpose(_UNDO[orientation])
    ex = Image.Exif()
    ex[0x0112] = orientation
    p = tmp_path / f"o.{fmt.lower()}"
    stored.save(p, fmt, exif=ex.tobytes(), **({"quality": 100} if fmt == "JPEG" else {}))
    got = load_rgb(p)
    with Image.open(p) as im:
        assert np.array_equal(got, np.asarray(ImageOps.exif_transpose(im).convert("RGB")))
    assert got.shape == upright.shape
    diff = np.abs(got.astype(int) - upright)
    assert (diff.mean() < 6) if fmt == "JPEG" else (diff.max() == 0)  # JPEG rings at the edges


def _swapped_primaries_profile() -> bytes:
    """An RGB ICC profile whose red and blue colorants are sRGB's blue and red (built from lcms's sRGB)."""
    b = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    n = struct.unpack_from(">I", b, 128)[0]
    tags = {struct.unpack_from(">4s", b, 132 + 12 * i)[0]: i for i in range(n)}
    r, bl = 132 + 12 * tags[b"rXYZ"], 132 + 12 * tags[b"bXYZ"]
    r_entry, b_entry = bytes(b[r + 4:r + 12]), bytes(b[bl + 4:bl + 12])
    b[r + 4:r + 12], b[bl + 4:bl + 12] = b_entry, r_entry
    return bytes(b)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_embedded_icc_profile_is_converted_to_srgb(tmp_path, fmt):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 60, 20
    p = tmp_path / f"icc.{fmt.lower()}"
    Image.fromarray(rgb).save(p, fmt, icc_profile=_swapped_primaries_profile(), **({"quality": 100} if fmt == "JPEG" else {}))
    got = load_rgb(p)[4, 4].astype(int)
    assert np.abs(got - [20, 60, 200]).max() <= 3
    srgb = tmp_path / f"srgb.{fmt.lower()}"
    Image.fromarray(rgb).save(srgb, fmt, icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(),
                              **({"quality": 100} if fmt == "JPEG" else {}))
    assert np.abs(load_rgb(srgb)[4, 4].astype(int) - [200, 60, 20]).max() <= 3


def test_corrupt_icc_profile_is_an_image_error(tmp_path):
    p = tmp_path / "bad.png"
    Image.fromarray(_cell()).save(p, icc_profile=b"not a profile at all" * 10)
    with pytest.raises(ImageError, match="ICC colour profile"):
        load_rgb(p)


def test_imagecms_stays_lazy(tmp_path):
    p = Image.fromarray(_cell())
    f = tmp_path / "plain.png"
    p.save(f)
    code = ("import sys; from leukedge.edge.preprocess import load_rgb; load_rgb(sys.argv[1], 32); "
            "print('PIL.ImageCms' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- size and memory
def test_pixel_cap_refuses_from_the_header_in_one_line(tmp_path):
    p = tmp_path / "big.png"
    Image.new("L", (5000, 4000)).save(p)  # 20 Mpx of zeros: a small file
    with pytest.raises(ImageError) as e:
        load_rgb(p, 224)
    msg = str(e.value)
    assert "5000x4000 = 20,000,000 pixels" in msg and "16,000,000" in msg and "--max-pixels" in msg and "\n" not in msg
    small = tmp_path / "s.png"
    Image.new("RGB", (100, 100)).save(small)
    with pytest.raises(ImageError, match="above leukedge's cap of 5,000"):
        load_rgb(small, options=DecodeOptions(max_pixels=5000))
    assert load_rgb(p, 32, options=DecodeOptions(max_pixels=20_000_000)).shape == (32, 32, 3)


def test_sixteen_bit_decode_makes_no_full_size_float_copy(tmp_path):
    side = 2000
    data = np.tile(np.arange(side, dtype=np.uint16) * 2, (side, 1))
    p = tmp_path / "g16.png"
    Image.fromarray(data).save(p, compress_level=1)
    tracemalloc.start()
    try:
        out = load_rgb(p, 64)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (64, 64, 3)
    # numpy allocations only (Pillow's own buffers are not traced): the old float64 copy was 8 B/px;
    # now the uint8 result (1 B/px) and one strip.
    assert peak < 3 * side * side, f"peak numpy memory {peak / 1e6:.1f} MB for a {side}x{side} 16-bit image"


def test_large_jpeg_is_decoded_in_draft_mode_close_to_a_full_decode(tmp_path):
    big = np.asarray(Image.fromarray(_cell(40, 40)).resize((1200, 1200), Image.Resampling.BICUBIC))
    p = tmp_path / "big.jpg"
    Image.fromarray(big).save(p, quality=95)
    got = load_rgb(p, 224).astype(int)
    full = np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)).astype(int)
    assert got.shape == (224, 224, 3)
    assert np.abs(got - full).mean() < 3


# ----------------------------------------------------------------------------- errors
def test_tiff_with_rational_strip_offsets_is_an_image_error(tmp_path):
    b = io.BytesIO()
    Image.new("RGB", (8, 8)).save(b, "TIFF")
    b = bytearray(b.getvalue())
    ifd = struct.unpack_from("<I", b, 4)[0]
    for i in range(struct.unpack_from("<H", b, ifd)[0]):
        pos = ifd + 2 + 12 * i
        if struct.unpack_from("<H", b, pos)[0] == 273:
            struct.pack_into("<H", b, pos + 2, 5)  # RATIONAL
    p = tmp_path / "bad.tif"
    p.write_bytes(bytes(b))
    with pytest.raises(ImageError) as e:
        load_rgb(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_formats_other_than_bmp_png_jpeg_tiff_are_refused(tmp_path):
    p = tmp_path / "cell.png"
    Image.fromarray(_cell()).save(p, "GIF")  # a GIF behind a .png name
    with pytest.raises(ImageError, match="not a recognised image"):
        load_rgb(p)


def test_decode_options_are_validated():
    for kw, field in [({"bit_depth": 0}, "bit_depth"), ({"bit_depth": True}, "bit_depth"), ({"page": 0}, "page"),
                      ({"max_pixels": 1.5}, "max_pixels"), ({"value_range": (1.0, 1.0)}, "value_range"),
                      ({"value_range": (0, float("nan"))}, "value_range")]:
        with pytest.raises(ValueError, match=field):
            DecodeOptions(**kw)


# ----------------------------------------------------------------------------- train time == device time
def test_train_time_tensors_equal_edge_time_tensors_on_real_images(cnmc_dir):
    """The bit-identical contract on the real sample images (C-NMC BMPs, and PBC JPEGs when present)."""
    from helpers import PBC
    from leukedge.edge.preprocess import Preprocessing, preprocess_file
    from leukedge.train.datasets import read_dataset
    from leukedge.train.pipeline import decode_samples, make_dataset

    samples = read_dataset(cnmc_dir).labelled[:4]
    if PBC.is_dir():
        samples += read_dataset(PBC, "ig").labelled[:4]
    prep = Preprocessing(size=96, mean=(120.0, 110.0, 130.0), std=(60.0, 70.0, 65.0))
    arrays = decode_samples(samples, prep, progress=False)
    batch = next(iter(make_dataset(arrays, prep, batch_size=len(samples), training=False)))[0].numpy()
    for i, s in enumerate(samples):
        assert np.array_equal(batch[i], preprocess_file(s.path, prep)), f"{s.path}: train and edge tensors differ"
