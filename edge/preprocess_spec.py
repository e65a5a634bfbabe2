"""What preprocessing is, as data: the card's `Preprocessing`, the `DecodeOptions` of a file, `ImageError`.

Split from `edge.preprocess` (which re-exports every name here): these need neither NumPy nor Pillow, so
the model card and the options can be validated without loading an image library. The decoding rules
themselves are `edge.preprocess`'s module docstring; the decoder is `edge.preprocess_decode`.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

from .errors import LeukedgeError

# The resize methods a card may name; edge.preprocess_decode maps each to its Pillow filter.
RESIZE_METHODS = ("nearest", "bilinear", "bicubic", "lanczos", "area")


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
        _text("resize", self.resize, RESIZE_METHODS)
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
            resize=_text("resize", d.get("resize", "bilinear"), RESIZE_METHODS),
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

