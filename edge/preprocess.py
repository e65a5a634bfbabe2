"""The one image preprocessing: decode, convert to RGB, resize, scale, quantize.

Training, calibration, evaluation and the device all call this module, so a model
never sees pixels prepared one way in training and another way in the field.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from .errors import LeukedgeError

IMAGE_EXTENSIONS = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "area": Image.Resampling.BOX,
}

# A truncated file must fail, not be padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(LeukedgeError, ValueError):
    """An input image that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass(frozen=True)
class Preprocessing:
    """How pixels become the model's input; stored in the model card.

    input = (rgb - mean) / std, per channel, after resizing to size x size.
    """

    size: int = 224
    resize: str = "bilinear"
    channels: str = "RGB"
    mean: tuple[float, float, float] = (128.0, 128.0, 128.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    layout: str = field(default="NHWC")

    def __post_init__(self):
        if self.resize not in _RESAMPLE:
            raise ValueError(f"unknown resize method {self.resize!r}; one of {sorted(_RESAMPLE)}")
        if self.channels != "RGB":
            raise ValueError(f"only RGB input is supported, not {self.channels!r}")
        if not (32 <= int(self.size) <= 4096):
            raise ValueError(f"input size {self.size} out of range 32..4096")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values each, std > 0")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(
            size=int(d["size"]),
            resize=str(d.get("resize", "bilinear")),
            channels=str(d.get("channels", "RGB")),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            layout=str(d.get("layout", "NHWC")),
        )


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16/32-bit greyscale: Pillow's convert() clips at 255; rescale the full range instead.
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr8 = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        arr8 = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info):
        # Segmented cells sit on black: transparent pixels become background, not white.
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return im.convert("RGB")


def load_rgb(path: str | os.PathLike, size: int | None = None, resize: str = "bilinear") -> np.ndarray:
    """Decode one image file to a uint8 HxWx3 RGB array, resized to size x size if given."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ImageError(p, "no such file") from None
    except OSError as exc:
        raise ImageError(p, f"cannot read: {exc.strerror or exc}") from None
    if p.is_dir():
        raise ImageError(p, "is a directory, not an image")
    if st.st_size == 0:
        raise ImageError(p, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                im.load()
                rgb = _to_rgb(im)
                if size is not None and rgb.size != (size, size):
                    rgb = rgb.resize((size, size), _RESAMPLE[resize])
                arr = np.asarray(rgb, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(p, f"image too large (decompression-bomb guard): {exc}") from None
    except Image.UnidentifiedImageError:
        raise ImageError(p, "not a recognised image (corrupt, or not an image despite its extension)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(p, f"corrupt or truncated image: {exc}") from None
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


def preprocess_file(path: str | os.PathLike, prep: Preprocessing) -> np.ndarray:
    """One file -> float32 HxWx3 model input (no batch axis)."""
    return normalize(load_rgb(path, prep.size, prep.resize), prep)


def is_image_name(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)
