"""The one image preprocessing: decode, convert to RGB, resize, scale, quantize.

Training, calibration, evaluation and the device all call this module, so a model
never sees pixels prepared one way in training and another way in the field.

Decoding rules (`load_rgb`; the README's "Image integrity" section says the same):

- Formats: BMP, PNG, JPEG (and JPEG/MPO) and TIFF only; anything else is refused.
- Size: leukedge's own pixel cap (`DecodeOptions.max_pixels`, default 16 Mpx, far above any
  single-cell image) is checked from the header, before any pixel is decoded. Decoding is
  memory-bounded: no full-resolution float64 copy; 16-bit, 32-bit and float images are
  reduced to 8 bits in strips of rows; a JPEG at least 4x larger than the requested size is
  decoded at reduced size (JPEG draft mode, scale 1/2..1/8, never below 2x the target).
- Bit depth (one rule for every integer mode): an integer sample v becomes
  round(min(v, top) * 255 / top) with top = 2**bits - 1, where bits is, in order,
  the significant bits the file declares (TIFF SMaxSampleValue, as its bit length), the
  declared depth (`DecodeOptions.bit_depth` / `Preprocessing.bit_depth`), else the
  container's depth (8 for 8-bit files, 16 for 16-bit, the TIFF BitsPerSample for 32-bit).
  Never a per-image guess. A declared depth above the container's is capped at the
  container's. 16-bit-per-sample *colour* files: with the container's 16 bits, Pillow's
  high byte is used (the rule within one level); with fewer significant bits, uncompressed
  TIFF strips are read directly at full depth, and other layouts (compressed or tiled TIFF,
  16-bit colour PNG) are refused, since Pillow has dropped the low bits.
- Float images: values in [0, 1] are scaled by 255; any other range needs
  `DecodeOptions.value_range=(lo, hi)` (mapped linearly onto 0..255, clipped), else refused;
  NaN or infinity is refused.
- Alpha: an alpha channel that is 0 everywhere covers nothing and is ignored (capture software
  that declares alpha and never fills it; Windows and Photoshop show such files opaque); an
  alpha channel that is all 255 changes nothing; any other mask is composited on black (the
  background of a segmented cell).
- Multi-page files: never silently page 1. Page 1 is used when every other page is a
  reduced-resolution copy (a pyramid, or a thumbnail page: TIFF NewSubfileType bit 0, or
  smaller in both dimensions); exactly three single-channel pages of equal size and mode are
  the R, G and B planes, in page order; anything else (a z-stack, a time series) is refused
  naming the page count, unless `DecodeOptions.page` (1-based) picks one.
- Orientation: the EXIF Orientation tag (2..8) is applied, as `PIL.ImageOps.exif_transpose` does.
- Colour: an embedded ICC profile is converted to sRGB (relative colorimetric) with
  `PIL.ImageCms` (imported only when a file carries a profile).
- Errors: any problem with the file's content raises `ImageError` naming the file and the
  problem, in one line; no other exception escapes `load_rgb`.
"""

from __future__ import annotations

import io
import math
import os
import threading
import warnings
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from struct import error as struct_error  # raised by Pillow's header parsers

import numpy as np
from PIL import Image, ImageFile

from .errors import LeukedgeError
from .files import IMAGE_SUFFIXES

IMAGE_EXTENSIONS = IMAGE_SUFFIXES  # one list of image names (.jfif/.jpe/.jif are JPEG): edge.files

# The container formats leukedge decodes. Restricting Image.open keeps other plugins (EPS runs
# Ghostscript, PSD, ...) away from untrusted files.
_FORMATS = ("BMP", "PNG", "JPEG", "TIFF")  # JPEG includes MPO (multi-picture) files

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "area": Image.Resampling.BOX,
}

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


class ImageError(LeukedgeError, ValueError):
    """An input image that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = " ".join(str(problem).split())  # one line, whatever the library said
        super().__init__(f"{self.path}: {self.problem}")


# ------------------------------------------------------------------ validation helpers

def _number(name: str, v, *, lo: float | None = None, hi: float | None = None, positive: bool = False) -> float:
    """A finite real number (not a bool, not a string) within [lo, hi]; ValueError naming `name`."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"'{name}' must be a number, not {type(v).__name__} {v!r}")
    try:
        f = float(v)
    except OverflowError:
        raise ValueError(f"'{name}' is out of range ({v!r})") from None
    if not math.isfinite(f):
        raise ValueError(f"'{name}' must be finite, not {f!r}")
    if positive and f <= 0:
        raise ValueError(f"'{name}' must be > 0, not {f!r}")
    if (lo is not None and f < lo) or (hi is not None and f > hi):
        raise ValueError(f"'{name}' = {f!r} is out of range {lo}..{hi}")
    return f


def _integer(name: str, v, lo: int, hi: int) -> int:
    """An integer (not a bool; an integral float such as 224.0 is accepted) in [lo, hi]."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"'{name}' must be an integer, not {type(v).__name__} {v!r}")
    if isinstance(v, float) and (not math.isfinite(v) or v != int(v)):
        raise ValueError(f"'{name}' must be an integer, not {v!r}")
    i = int(v)
    if not lo <= i <= hi:
        raise ValueError(f"'{name}' = {i} is out of range {lo}..{hi}")
    return i


def _triple(name: str, v, *, positive: bool = False) -> tuple[float, float, float]:
    if not isinstance(v, (list, tuple)):
        raise ValueError(f"'{name}' must be a list of 3 numbers, not {type(v).__name__} {v!r}"[:200])
    if len(v) != 3:
        raise ValueError(f"'{name}' must have 3 values (R, G, B), not {len(v)}")
    return tuple(_number(f"{name}[{i}]", x, lo=-1e6, hi=1e6, positive=positive) for i, x in enumerate(v))


def _text(name: str, v, allowed) -> str:
    if not isinstance(v, str):
        raise ValueError(f"'{name}' must be a string, not {type(v).__name__} {v!r}"[:200])
    if v not in allowed:
        raise ValueError(f"unknown {name} {v!r}; one of {sorted(allowed)}")
    return v


@dataclass(frozen=True)
class DecodeOptions:
    """How `load_rgb` interprets a file where the file alone cannot say (see the module docstring).

    bit_depth: significant bits of integer samples (1..32) when the file does not declare them,
        e.g. 12 for 12-bit camera data stored in 16-bit TIFFs; None = the container's depth.
    page: 1-based page of a multi-page file to use; None = the automatic rule (pyramid/thumbnail
        -> page 1, three single-channel pages -> RGB planes, else refused).
    max_pixels: refuse images with more pixels (width x height, from the header) than this;
        16 Mpx is far above a single-cell image (C-NMC 450x450, PBC 360x363) and keeps the peak
        memory of one decode bounded (see benchmarks/results/README.md for the measured peak).
    value_range: (lo, hi) of float images whose values are not in [0, 1]; mapped onto 0..255.
    Raises ValueError naming the field for invalid values.
    """

    bit_depth: int | None = None
    page: int | None = None
    max_pixels: int = 16_000_000
    value_range: tuple[float, float] | None = None

    def __post_init__(self):
        if self.bit_depth is not None:
            _integer("bit_depth", self.bit_depth, 1, 32)
        if self.page is not None:
            _integer("page", self.page, 1, 1_000_000)
        _integer("max_pixels", self.max_pixels, 1, 1 << 40)
        if self.value_range is not None:
            if not isinstance(self.value_range, (list, tuple)) or len(self.value_range) != 2:
                raise ValueError(f"'value_range' must be (low, high), not {self.value_range!r}")
            lo = _number("value_range[0]", self.value_range[0])
            hi = _number("value_range[1]", self.value_range[1])
            if not hi > lo:
                raise ValueError(f"'value_range' needs low < high, not {self.value_range!r}")


_DEFAULT_OPTIONS = DecodeOptions()


@dataclass(frozen=True)
class Preprocessing:
    """How pixels become the model's input; stored in the model card.

    input = (rgb - mean) / std, per channel, after resizing to size x size.
    bit_depth: significant bits of the training images' integer samples when declared at train
    time (e.g. 12); the device uses it as its default `DecodeOptions.bit_depth`. None = undeclared.
    Every field is validated (ValueError naming the field); nothing is coerced.
    """

    size: int = 224
    resize: str = "bilinear"
    channels: str = "RGB"
    mean: tuple[float, float, float] = (128.0, 128.0, 128.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    layout: str = field(default="NHWC")
    bit_depth: int | None = None

    def __post_init__(self):
        _integer("size", self.size, 32, 4096)
        _text("resize", self.resize, _RESAMPLE)
        if self.channels != "RGB":
            raise ValueError(f"only RGB input is supported, not channels={self.channels!r}")
        if self.layout != "NHWC":
            raise ValueError(f"only NHWC layout is supported, not layout={self.layout!r}")
        _triple("mean", self.mean)
        _triple("std", self.std, positive=True)
        if self.bit_depth is not None:
            _integer("bit_depth", self.bit_depth, 1, 32)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        """Validate a card's "preprocessing" object; ValueError naming the field on any bad value.

        Booleans are not numbers, strings are not lists, NaN/inf and absurd sizes are refused;
        an integral float (224.0) is accepted for integer fields. Missing optional fields take
        their defaults; `size`, `mean` and `std` are required.
        """
        if not isinstance(d, dict):
            raise ValueError(f"must be an object, not {type(d).__name__}")
        for k in ("size", "mean", "std"):
            if k not in d:
                raise ValueError(f"missing '{k}'")
        bit_depth = d.get("bit_depth")
        return cls(
            size=_integer("size", d["size"], 32, 4096),
            resize=_text("resize", d.get("resize", "bilinear"), _RESAMPLE),
            channels=_text("channels", d.get("channels", "RGB"), ("RGB",)),
            mean=_triple("mean", d["mean"]),
            std=_triple("std", d["std"], positive=True),
            layout=_text("layout", d.get("layout", "NHWC"), ("NHWC",)),
            bit_depth=None if bit_depth is None else _integer("bit_depth", bit_depth, 1, 32),
        )

    def decode_options(self, **overrides) -> DecodeOptions:
        """The DecodeOptions this preprocessing implies (its bit_depth), with overrides applied."""
        opts = {"bit_depth": self.bit_depth}
        opts.update(overrides)
        return DecodeOptions(**opts)


# ------------------------------------------------------------------ decoding

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


def _decode(im: Image.Image, path: Path, size: int | None, opts: DecodeOptions) -> Image.Image:
    """The file's pixels as an RGB (or L/LA/RGBA, converted later) image in memory, orientation applied.

    size: the model's input side, only to choose a reduced-size JPEG decode (>= 2x size); the resize
    itself is the caller's (`_finish`), outside the warnings lock."""
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


def _finish(rgb: Image.Image, size: int | None, resize: str) -> Image.Image:
    """Resize to size x size (the card's method) and make it RGB. Pillow's resize releases the GIL."""
    if size is not None and rgb.size != (size, size):
        rgb = rgb.resize((size, size), _RESAMPLE[resize])
    return rgb if rgb.mode == "RGB" else rgb.convert("RGB")


# warnings.catch_warnings swaps the process-wide filter list and is not thread-safe: two worker
# threads entering and leaving it interleaved can leave "ignore" installed for good, or remove it
# under the other's decode. Decoding holds the GIL anyway (Pillow's JPEG decoder), so one lock
# around open + decode costs no parallelism; the resize (which releases the GIL) runs outside it.
_WARNINGS_LOCK = threading.Lock()


def load_rgb(path: str | os.PathLike, size: int | None = None, resize: str = "bilinear",
             options: DecodeOptions | None = None) -> np.ndarray:
    """Decode one image file to a uint8 HxWx3 RGB array, resized to size x size if given.

    path: a BMP, PNG, JPEG or TIFF file. size: output side in pixels (None = as stored, after
    orientation). resize: one of nearest, bilinear, bicubic, lanczos, area. options: how to read
    what the file cannot say (bit depth, page, pixel cap, float range); see `DecodeOptions` and the
    module docstring for every rule. Returns a new C-contiguous uint8 array (H, W, 3).
    Raises ImageError (file and problem, one line) for any unusable file; no other exception
    escapes for any file content (an internal failure is reported as an ImageError naming its type).
    """
    opts = options or _DEFAULT_OPTIONS
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ImageError(p, "no such file") from None
    except (OSError, ValueError) as exc:
        raise ImageError(p, f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if p.is_dir():
        raise ImageError(p, "is a directory, not an image")
    if st.st_size == 0:
        raise ImageError(p, "empty file (0 bytes)")
    if resize not in _RESAMPLE:
        raise ValueError(f"unknown resize method {resize!r}; one of {sorted(_RESAMPLE)}")
    im = None
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            # Pillow warns about odd metadata and about sizes near its own bomb guard; the pixel cap
            # above decides, and a warning must never become an exception under `-W error`.
            warnings.simplefilter("ignore")
            im = Image.open(p, formats=_FORMATS)
            rgb = _decode(im, p, size, opts)  # loaded: nothing below reads the file or warns
        arr = np.asarray(_finish(rgb, size, resize), dtype=np.uint8)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(p, f"image too large (Pillow's decompression-bomb guard): {exc}") from None
    except Image.UnidentifiedImageError:
        raise ImageError(p, "not a recognised image (BMP, PNG, JPEG or TIFF; corrupt, or not an image "
                            "despite its extension)") from None
    except PermissionError:
        raise ImageError(p, "cannot read: permission denied") from None
    except MemoryError:
        raise ImageError(p, "not enough memory to decode this image") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct_error) as exc:
        raise ImageError(p, f"corrupt or truncated image: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - no file content may end a batch; name the type for bug reports
        raise ImageError(p, f"corrupt image (decoder failed with {type(exc).__name__}: {exc})") from None
    finally:
        if im is not None:
            im.close()  # the file (and a multi-page file's frames) closed whatever happened
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageError(p, f"unexpected decoded shape {arr.shape}")
    return arr


def normalize(rgb: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """uint8 RGB (..., H, W, 3) -> float32 model input, (x - mean) / std."""
    x = np.asarray(rgb, dtype=np.float32)
    mean = np.asarray(prep.mean, dtype=np.float32)
    std = np.asarray(prep.std, dtype=np.float32)
    return (x - mean) / std


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    """Float tensor -> integer tensor through a TFLite tensor's (scale, zero_point)."""
    info = np.iinfo(dtype)
    q = np.rint(x / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def preprocess_file(path: str | os.PathLike, prep: Preprocessing, options: DecodeOptions | None = None) -> np.ndarray:
    """One file -> float32 HxWx3 model input (no batch axis); options default to prep's bit depth."""
    opts = options if options is not None else (prep.decode_options() if prep.bit_depth is not None else None)
    return normalize(load_rgb(path, prep.size, prep.resize, opts), prep)


def is_image_name(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)
