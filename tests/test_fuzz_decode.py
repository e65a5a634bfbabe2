"""Seeded fuzz of the decoder: mutated BMP/PNG/JPEG/TIFF headers must give a picture or an ImageError.

No other exception may escape `load_rgb` for any file content (issue 10: a TIFF whose StripOffsets
tag had type RATIONAL raised TypeError and ended a whole batch). A few thousand cases run in the
default suite in a few seconds; LEUKEDGE_FUZZ_CASES raises the count for a longer local run.
"""

from __future__ import annotations

import io
import os
import random
import struct

import numpy as np
from PIL import Image, ImageCms

from leukedge.edge.preprocess import DecodeOptions, ImageError, load_rgb
from test_decode_integrity import write_bmp32, write_tiff

SEED = 20261129
CASES = int(os.environ.get("LEUKEDGE_FUZZ_CASES", "3000"))
INTERESTING = [0, 1, 2, 3, 4, 5, 7, 8, 12, 15, 16, 24, 32, 64, 127, 128, 255, 256, 4095, 0x7FFF, 0x8000, 0xFFFF,
               0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


def _save(arr, fmt, mode=None, **kw) -> bytes:
    im = Image.fromarray(arr)
    if mode:
        im = im.convert(mode)
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def _bases(tmp_path) -> dict[str, bytes]:
    rng = np.random.default_rng(SEED)
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    ex = Image.Exif()
    ex[0x0112] = 6
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    g16 = rng.integers(0, 4096, (12, 10)).astype(np.uint16)
    bases = {
        "bmp24": _save(rgb, "BMP"),
        "bmp8p": _save(rgb, "BMP", "P"),
        "bmp1": _save(rgb, "BMP", "1"),
        "png-rgb": _save(rgb, "PNG"),
        "png-rgba": _save(np.dstack([rgb, rgb[..., 0]]), "PNG"),
        "png-p": _save(rgb, "PNG", "P"),
        "png-16": _save(g16, "PNG"),
        "png-icc-exif": _save(rgb, "PNG", icc_profile=srgb, exif=ex.tobytes()),
        "jpeg": _save(rgb, "JPEG", quality=90),
        "jpeg-progressive-exif": _save(rgb, "JPEG", progressive=True, exif=ex.tobytes()),
        "tiff-rgb": _save(rgb, "TIFF"),
        "tiff-16": _save(g16, "TIFF"),
        "tiff-lzw": _save(rgb, "TIFF", compression="tiff_lzw"),
    }
    for name, writer in {
        "bmp32-v5-alpha": lambda p: write_bmp32(p, rgb, np.zeros(rgb.shape[:2], np.uint8)),
        "tiff-float": lambda p: write_tiff(p, [rng.random((12, 10)).astype(np.float32)]),
        "tiff-3pages": lambda p: write_tiff(p, [rgb[..., k].copy() for k in range(3)]),
        "tiff-pyramid": lambda p: write_tiff(p, [rgb, rgb[::2, ::2]]),
    }.items():
        p = tmp_path / f"base-{name}"
        writer(p)
        bases[name] = p.read_bytes()
    return bases


def _tiff_entries(b: bytes) -> list[int]:
    """Byte offsets of the first IFD's entries of a little- or big-endian TIFF (empty if unparsable)."""
    try:
        bo = "<" if b[:2] == b"II" else ">"
        ifd = struct.unpack_from(bo + "I", b, 4)[0]
        n = struct.unpack_from(bo + "H", b, ifd)[0]
        return [ifd + 2 + 12 * i for i in range(min(n, 64)) if ifd + 14 + 12 * i <= len(b)]
    except struct.error:
        return []


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random header mutation: byte flips, an interesting integer, a TIFF field type/count, truncation."""
    b = bytearray(data)
    head = min(len(b), 600)
    kind = rng.randrange(6)
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(head)] = rng.randrange(256)
    elif kind == 1:
        width = rng.choice((1, 2, 4))
        pos = rng.randrange(max(head - width, 1))
        v = rng.choice(INTERESTING) & ((1 << (8 * width)) - 1)
        b[pos:pos + width] = v.to_bytes(width, rng.choice(("little", "big")))
    elif kind == 2 and data[:2] in (b"II", b"MM"):
        entries = _tiff_entries(data)
        if entries:
            e = rng.choice(entries)
            bo = "<" if data[:2] == b"II" else ">"
            field = rng.choice(("type", "count", "value"))
            if field == "type":
                struct.pack_into(bo + "H", b, e + 2, rng.randint(0, 18))
            elif field == "count":
                struct.pack_into(bo + "I", b, e + 4, rng.choice(INTERESTING))
            else:
                struct.pack_into(bo + "I", b, e + 8, rng.choice(INTERESTING + [len(b), len(b) - 4]))
    elif kind == 3:
        b = b[: rng.randrange(1, len(b))]
    elif kind == 4:
        pos = rng.randrange(head)
        b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    else:
        pos = rng.randrange(head)
        del b[pos:pos + rng.randint(1, 16)]
    return bytes(b)


def test_no_exception_but_image_error_escapes_the_decoder(tmp_path):
    bases = _bases(tmp_path)
    rng = random.Random(SEED)
    names = sorted(bases)
    escaped, decoded, refused = [], 0, 0
    small_cap = DecodeOptions(max_pixels=1 << 20)  # keeps mutated-but-plausible sizes fast to reject
    f = tmp_path / "case"
    for case in range(CASES):
        name = names[case % len(names)]
        data = mutate(bases[name], rng)
        if rng.random() < 0.3:
            data = mutate(data, rng)
        f.write_bytes(data)
        size = rng.choice((None, 16))
        opts = small_cap if case % 10 else None
        try:
            out = load_rgb(f, size, "bilinear", opts)
            assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
            decoded += 1
        except ImageError as exc:
            assert "\n" not in str(exc) and str(f) in str(exc)
            refused += 1
        except Exception as exc:  # noqa: BLE001 - the point of the test
            escaped.append(f"case {case} ({name}): {type(exc).__name__}: {exc}")
    assert not escaped, f"{len(escaped)} non-ImageError exceptions, e.g.: " + " | ".join(escaped[:5])
    # The fuzz exercised both outcomes (a mutation that always broke or never broke files would say little).
    assert decoded > CASES // 10 and refused > CASES // 10, (decoded, refused)
