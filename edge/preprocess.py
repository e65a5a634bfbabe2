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

import os
import threading
import warnings
from pathlib import Path
from struct import error as struct_error  # raised by Pillow's header parsers

import numpy as np
from PIL import Image

from .files import IMAGE_SUFFIXES
from .preprocess_decode import _RESAMPLE, decode_image, finish
from .preprocess_spec import DecodeOptions, ImageError, Preprocessing

__all__ = ["IMAGE_EXTENSIONS", "DecodeOptions", "ImageError", "Preprocessing", "is_image_name", "load_rgb",
           "normalize", "preprocess_file", "quantize"]

IMAGE_EXTENSIONS = IMAGE_SUFFIXES  # one list of image names (.jfif/.jpe/.jif are JPEG): edge.files


# The container formats leukedge decodes. Restricting Image.open keeps other plugins (EPS runs
# Ghostscript, PSD, ...) away from untrusted files.
_FORMATS = ("BMP", "PNG", "JPEG", "TIFF")  # JPEG includes MPO (multi-picture) files
# Image.open(formats=...) calls Image.init(), which imports every Pillow plugin (15-35 ms of a cold start),
# as soon as one listed format is not registered; Image.preinit() registers BMP, PNG and JPEG but not TIFF.
# Registering TIFF here (about 1 ms) keeps the device's first image from paying for the other plugins.
Image.preinit()
from PIL import TiffImagePlugin  # noqa: E402,F401 - imported for its registration

_DEFAULT_OPTIONS = DecodeOptions()

# The per-cell path of edge.fields.frames resizes through the same function as load_rgb.
_finish = finish

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
            rgb = decode_image(im, p, size, opts)  # loaded: nothing below reads the file or warns
        arr = np.asarray(finish(rgb, size, resize), dtype=np.uint8)
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
    """uint8 RGB (..., H, W, 3) -> float32 model input of the same shape, (x - mean) / std per channel."""
    x = np.asarray(rgb, dtype=np.float32)
    mean = np.asarray(prep.mean, dtype=np.float32)
    std = np.asarray(prep.std, dtype=np.float32)
    return (x - mean) / std


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    """Float tensor -> integer tensor (same shape, `dtype`) through a quantized tensor's (scale, zero_point).

    q = clip(round(x / scale) + zero_point) to dtype's range; dtype must be an integer NumPy dtype.
    """
    info = np.iinfo(dtype)
    q = np.rint(x / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def preprocess_file(path: str | os.PathLike, prep: Preprocessing, options: DecodeOptions | None = None) -> np.ndarray:
    """One file -> float32 (size, size, 3) model input (no batch axis); options default to prep's bit depth.

    Raises ImageError (as `load_rgb`) for an unusable file.
    """
    opts = options if options is not None else (prep.decode_options() if prep.bit_depth is not None else None)
    return normalize(load_rgb(path, prep.size, prep.resize, opts), prep)


def is_image_name(path: str | os.PathLike) -> bool:
    """True when the name ends in one of IMAGE_EXTENSIONS (any case); the file itself is not read."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)
