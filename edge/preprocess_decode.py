"""The pixel decoding behind `edge.preprocess.load_rgb`: bit depth, alpha, ICC profile, pages, orientation.

Every rule is stated in `edge.preprocess`'s module docstring; this module implements them on an opened
Pillow image (`decode_image`), and does the one resize (`finish`). Nothing here opens a file by name
except `_raw16_colour`, which reads uncompressed 16-bit colour TIFF strips directly.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from .preprocess_spec import RESIZE_METHODS, DecodeOptions, ImageError

# resize method name (a card's "resize") -> Pillow filter; "area" is Pillow's box filter
_RESAMPLE = dict(zip(RESIZE_METHODS, (
    Image.Resampling.NEAREST,
    Image.Resampling.BILINEAR,
    Image.Resampling.BICUBIC,
    Image.Resampling.LANCZOS,
    Image.Resampling.BOX,
)))

# EXIF Orientation -> the transpose that undoes it (the table of PIL.ImageOps.exif_transpose).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_STRIP_PIXELS = 1 << 20  # rows are converted in strips of about 1 Mpx (4 MB of float32 at most)

# A truncated file must fail, not be padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@lru_cache(maxsize=16)
def _depth_lut(top: int) -> np.ndarray:
    """uint16 -> uint8 table of the bit-depth rule round(min(v, top) * 255 / top)."""
    v = np.minimum(np.arange(65536, dtype=np.float64), top)
    return np.rint(v * (255.0 / top)).astype(np.uint8)


def _strips(im: Image.Image, fn) -> Image.Image:
    """Apply fn (ndarray strip -> uint8 strip) to rows of a single-band image, ~1 Mpx at a time."""
    w, h = im.size
    out = np.empty((h, w), np.uint8)
    rows = max(1, _STRIP_PIXELS // max(w, 1))
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        out[r0:r1] = fn(np.asarray(im.crop((0, r0, w, r1))))
    return Image.fromarray(out, "L")


def _tiff_tag(im: Image.Image, tag: int):
    tags = getattr(im, "tag_v2", None)
    if tags is None:
        return None
    try:
        v = tags.get(tag)
    except Exception:  # noqa: BLE001 - a malformed tag is as good as an absent one here
        return None
    return v


def _as_int(v) -> int | None:
    """The largest integer in a TIFF tag value (int, or tuple of ints); None when it is not one."""
    vals = v if isinstance(v, (tuple, list)) else (v,)
    out = None
    for x in vals:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(float(x)):
            return None
        out = int(x) if out is None else max(out, int(x))
    return out


def _significant_bits(im: Image.Image, container: int, opts: DecodeOptions) -> int:
    """Significant bits of an integer image: the file's SMaxSampleValue, else declared, else container."""
    smax = _as_int(_tiff_tag(im, 341))  # SMaxSampleValue
    if smax is not None and smax > 0:
        bits = smax.bit_length()
    elif opts.bit_depth is not None:
        bits = opts.bit_depth
    else:
        bits = container
    return max(1, min(bits, container))


def _container_bits(im: Image.Image, default: int) -> int:
    bps = _as_int(_tiff_tag(im, 258))  # BitsPerSample
    return bps if bps is not None and 1 <= bps <= 32 else default


def _rawmode(im: Image.Image) -> str:
    try:
        args = im.tile[0][3]
        raw = args[0] if isinstance(args, tuple) else args
        return raw if isinstance(raw, str) else ""
    except Exception:  # noqa: BLE001
        return ""


def _single_band_to_l(im: Image.Image, path: Path, opts: DecodeOptions) -> Image.Image:
    """A one-band image of any depth -> mode L by the bit-depth rule (or the float rule)."""
    mode = im.mode
    if mode in ("1", "L"):
        if mode == "L":
            bits = _significant_bits(im, 8, opts)
            if bits < 8:
                return im.point(_depth_lut((1 << bits) - 1)[:256].tolist())
        return im.convert("L")
    if mode.startswith("I;16"):
        lut = _depth_lut((1 << _significant_bits(im, 16, opts)) - 1)
        return _strips(im, lambda a: lut[a.astype(np.uint16, copy=False)])
    if mode == "I":
        container = _container_bits(im, 32) if getattr(im, "format", None) == "TIFF" else 16
        top = float((1 << _significant_bits(im, container, opts)) - 1)
        # Signed samples below 0 are clipped to 0 (the rule's range starts at 0).
        return _strips(im, lambda a: np.rint(np.clip(a, 0, top) * (255.0 / top)).astype(np.uint8))
    if mode == "F":
        if opts.value_range is not None:
            lo, hi = (float(v) for v in opts.value_range)
        else:
            lo, hi = 0.0, 1.0

        def conv(a):
            a = a.astype(np.float32, copy=False)
            if not np.isfinite(a).all():
                raise ImageError(path, "float image contains NaN or infinite values")
            if opts.value_range is None:
                mn, mx = float(a.min(initial=0.0)), float(a.max(initial=0.0))
                if mn < -1e-6 or mx > 1 + 1e-6:
                    ext = im.getextrema()
                    raise ImageError(path, f"float image with values in [{ext[0]:.6g}, {ext[1]:.6g}], outside [0, 1]; "
                                           "declare its range (DecodeOptions.value_range, --value-range LOW HIGH)")
            x = (a - np.float32(lo)) * np.float32(255.0 / (hi - lo))
            return np.rint(np.clip(x, 0, 255)).astype(np.uint8)

        return _strips(im, conv)
    raise ImageError(path, f"unsupported single-channel mode {mode}")


_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _raw16_colour(im: Image.Image, path: Path, top: int) -> Image.Image | None:
    """Uncompressed 16-bit colour TIFF strips read directly and reduced by the bit-depth rule.

    Pillow keeps only the high byte of 16-bit colour samples, which loses a declared 12-bit depth;
    for uncompressed, chunky TIFF strips the samples are read here, one strip at a time. Returns an
    8-bit RGB or RGBA image (the file's info, ICC profile included, carried over), or None when the
    layout is another (compressed, tiled, planar): the caller then refuses the file.
    """
    w, h = im.size
    tiles = list(im.tile)
    if not tiles or im.format != "TIFF":
        return None
    first = tiles[0][3][0] if isinstance(tiles[0][3], tuple) else tiles[0][3]
    if not isinstance(first, str) or first[:4] not in ("RGB;", "RGBA", "RGBX"):
        return None
    spp = 3 if first.startswith("RGB;") else 4
    dtype = np.dtype("<u2" if first.endswith("L") else ">u2")
    lut = _depth_lut(top)
    out = np.empty((h, w, spp), np.uint8)
    with open(path, "rb") as fh:
        for t in tiles:
            codec, box, offset, args = t[0], t[1], t[2], t[3]
            rawmode = args[0] if isinstance(args, tuple) else args
            stride = args[1] if isinstance(args, tuple) and len(args) > 1 else 0
            if codec != "raw" or rawmode != first or stride not in (0, w * spp * 2) or box[0] != 0 or box[2] != w:
                return None
            y0, y1 = box[1], min(box[3], h)
            n = (y1 - y0) * w * spp
            fh.seek(offset)
            buf = fh.read(n * 2)
            if len(buf) != n * 2:
                raise ImageError(path, "corrupt or truncated image: a 16-bit strip is shorter than its size")
            out[y0:y1] = lut[np.frombuffer(buf, dtype).astype(np.uint16)].reshape(y1 - y0, w, spp)
    mode = "RGB" if spp == 3 else ("RGBA" if im.mode == "RGBA" else "RGB")
    res = Image.fromarray(out if spp == 3 or mode == "RGBA" else np.ascontiguousarray(out[..., :3]), mode)
    res.info = dict(im.info)
    return res


def _to_rgb(im: Image.Image, path: Path, opts: DecodeOptions, raw: str) -> Image.Image:
    """One decoded page -> mode RGB, or L for grey (8 bits), by the module's rules, ICC profile applied.

    raw: the page's raw mode as Pillow reported it before loading (e.g. "RGB;16B").
    """
    mode = im.mode
    if ";16" in raw and mode in ("RGB", "RGBA"):
        # Pillow keeps the high byte of 16-bit colour samples: the container rule, within 1 level.
        bits = _significant_bits(im, 16, opts)
        if bits < 16:
            raise ImageError(path, f"16-bit colour image with {bits} significant bits in a compressed or tiled "
                                   "layout (or PNG): only uncompressed 16-bit colour TIFF strips can be read at full "
                                   "depth; store it so, as 8-bit RGB, or as three 16-bit grey pages")
    has_alpha = mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in im.info)
    profile = im.info.get("icc_profile")
    if has_alpha:
        rgba = im.convert("RGBA")
        lo, hi = rgba.getchannel("A").getextrema()
        if hi == 0 or lo == 255:
            # all 0: alpha declared but never filled -> opaque; all 255: nothing to do.
            rgb = rgba.convert("RGB")
        else:
            black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            rgb = Image.alpha_composite(black, rgba).convert("RGB")
        base = "RGB" if mode not in ("LA", "La") else "L"
    elif mode in ("RGB", "CMYK", "YCbCr", "P", "RGBX"):
        rgb, base = im, ("CMYK" if mode == "CMYK" else "RGB")
    elif mode in ("1", "L", "F") or mode.startswith("I"):
        rgb, base = _single_band_to_l(im, path, opts), "L"
    else:
        raise ImageError(path, f"unsupported colour mode {mode}")
    if mode in ("RGB", "RGBA", "LA") and ";16" not in raw:
        bits = _significant_bits(im, 8, opts)
        if bits < 8:
            rgb = rgb.convert("RGB").point(_depth_lut((1 << bits) - 1)[:256].tolist() * 3)
    if profile:
        return _icc_to_srgb(rgb, base, profile, path)
    # Grey stays one band until after resizing (a third of the memory; the same pixels).
    return rgb if rgb.mode in ("RGB", "L") else rgb.convert("RGB")


def _icc_to_srgb(im: Image.Image, base: str, profile: bytes, path: Path) -> Image.Image:
    """Convert pixels described by an embedded ICC profile to sRGB (ImageCms, imported lazily)."""
    if base == "L" and im.mode != "L":
        im = im.convert("L")
    elif base == "RGB" and im.mode != "RGB":
        im = im.convert("RGB")
    try:
        transform = _icc_transform(bytes(profile), im.mode)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - ImageCms raises PyCMSError, OSError, TypeError...
        raise ImageError(path, f"embedded ICC colour profile cannot be used ({type(exc).__name__}: {exc})") from None
    return transform.apply(im)


@lru_cache(maxsize=8)
def _icc_transform(profile: bytes, in_mode: str):
    from PIL import ImageCms  # lazy: only files with an embedded profile pay for it

    src = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    return ImageCms.buildTransform(src, ImageCms.createProfile("sRGB"), in_mode, "RGB",
                                   renderingIntent=1,  # ICC intent 1: relative colorimetric (Pillow >= 9.1)
                                   flags=0x0040)  # cmsFLAGS_NOCACHE: one cached transform, shared by threads


def _orientation(im: Image.Image) -> int:
    try:
        v = im.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - unreadable EXIF: no orientation to apply
        return 1
    return v if isinstance(v, int) and v in _ORIENTATION else 1


def _check_cap(im: Image.Image, path: Path, opts: DecodeOptions, what: str = "image"):
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageError(path, f"{what} has no pixels ({w}x{h})")
    if w * h > opts.max_pixels:
        raise ImageError(path, f"{what} is {w}x{h} = {w * h:,} pixels, above leukedge's cap of "
                               f"{opts.max_pixels:,} (raise it with --max-pixels / DecodeOptions.max_pixels)")


def _frames(im: Image.Image) -> int:
    try:
        n = int(getattr(im, "n_frames", 1))
    except Exception:  # noqa: BLE001 - a broken page chain: the first page is all there is
        return 1
    return max(n, 1)


def _page_plan(im: Image.Image, path: Path, n: int) -> str:
    """'first' (pyramid/thumbnails) or 'planes' (three single-channel pages), else ImageError."""
    if n > 256:  # no pyramid has that many levels; a long series is refused without reading every header
        raise ImageError(path, f"multi-page image with {n} pages; choose one with --page 1..{n}")
    pages = []
    for i in range(n):
        im.seek(i)
        sub = _as_int(_tiff_tag(im, 254)) or 0  # NewSubfileType: bit 0 = reduced-resolution copy
        pages.append((im.size, im.mode, bool(sub & 1)))
    im.seek(0)
    (w0, h0), mode0, _ = pages[0]
    if all(red or (w < w0 and h < h0) for (w, h), _, red in pages[1:]):
        return "first"
    single = all(m in ("1", "L", "F") or m.startswith("I") for _, m, _ in pages)
    if n == 3 and single and all(s == pages[0][0] and m == mode0 for s, m, _ in pages):
        return "planes"
    raise ImageError(path, f"multi-page image with {n} pages (not a pyramid, a thumbnail or three colour planes); "
                           f"choose one with --page 1..{n}")


def decode_image(im: Image.Image, path: Path, size: int | None, opts: DecodeOptions) -> Image.Image:
    """The file's pixels as an RGB (or L/LA/RGBA, converted later) image in memory, orientation applied.

    size: the model's input side, only to choose a reduced-size JPEG decode (>= 2x size); the resize
    itself is the caller's (`finish`), outside the warnings lock."""
    _check_cap(im, path, opts)
    n = _frames(im)
    if opts.page is not None:
        if opts.page > n:
            raise ImageError(path, f"page {opts.page} requested, but the file has {n} page(s)")
        if opts.page > 1:
            im.seek(opts.page - 1)
            _check_cap(im, path, opts, f"page {opts.page}")
        plan = "first"
    else:
        plan = "first" if n == 1 else _page_plan(im, path, n)
    if plan == "planes":
        planes = []
        for i in range(3):
            im.seek(i)
            _check_cap(im, path, opts, f"page {i + 1}")
            im.load()
            if i == 0:
                orientation = _orientation(im)
            planes.append(_single_band_to_l(im, path, opts))
        rgb = Image.merge("RGB", planes)
    else:
        if size is not None and im.format in ("JPEG", "MPO") and min(im.size) >= 4 * size:
            im.draft(im.mode, (2 * size, 2 * size))  # reduced-size DCT decode, still >= 2x the target
        raw = _rawmode(im)
        direct = None
        if ";16" in raw and im.mode in ("RGB", "RGBA"):
            bits = _significant_bits(im, 16, opts)
            if bits < 16:
                direct = _raw16_colour(im, path, (1 << bits) - 1)
        im.load()
        orientation = _orientation(im)  # after load: TIFF tags and PNG eXIf are complete only then
        if direct is not None:
            rgb = _to_rgb(direct, path, DecodeOptions(max_pixels=opts.max_pixels), "")
        else:
            rgb = _to_rgb(im, path, opts, raw)
    if orientation != 1:
        rgb = rgb.transpose(_ORIENTATION[orientation])
    return rgb


def finish(rgb: Image.Image, size: int | None, resize: str) -> Image.Image:
    """Resize to size x size (the card's method) and make it RGB. Pillow's resize releases the GIL."""
    if size is not None and rgb.size != (size, size):
        rgb = rgb.resize((size, size), _RESAMPLE[resize])
    return rgb if rgb.mode == "RGB" else rgb.convert("RGB")


# warnings.catch_warnings swaps the process-wide filter list and is not thread-safe: two worker
# threads entering and leaving it interleaved can leave "ignore" installed for good, or remove it
