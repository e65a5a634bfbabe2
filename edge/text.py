"""File names in result rows and stderr lines: the lossless escaping that keeps a name on one line.

`escape_text` / `unescape_text` (a round trip to the name's bytes): backslash -> ``\\\\``, TAB -> ``\\t``,
LF -> ``\\n``, CR -> ``\\r``, other control characters and bytes that are not UTF-8 -> ``\\xHH``; everything
else as UTF-8. Used by the device app's rows (edge.app.rows) and by edge.stderr's reader, so it lives in
the device library with no imports beyond `os`.
"""

from __future__ import annotations

import os

# -- names -------------------------------------------------------------------------

_SIMPLE = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNSIMPLE = {"\\": b"\\", "t": b"\t", "n": b"\n", "r": b"\r"}


def escape_text(s: str) -> str:
    """Escape a string (a path from os.fsdecode, possibly with surrogate-escaped bytes) for CSV/text.

    See the module docstring for the rule; `unescape_text` inverts it to the original bytes.
    """
    out = []
    for ch in s:
        o = ord(ch)
        if ch in _SIMPLE:
            out.append(_SIMPLE[ch])
        elif 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{o - 0xDC00:02x}")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif 0xD800 <= o <= 0xDFFF:  # any other lone surrogate cannot be written as UTF-8
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)


def unescape_text(s: str) -> bytes:
    """Inverse of `escape_text`: the escaped field -> the original name's bytes (os.fsencode form)."""
    out = bytearray()
    i = 0
    while i < len(s):
        ch = s[i]
        if ch != "\\":
            out += ch.encode("utf-8")
            i += 1
            continue
        nxt = s[i + 1: i + 2]
        if nxt in _UNSIMPLE:
            out += _UNSIMPLE[nxt]
            i += 2
        elif nxt == "x":
            out.append(int(s[i + 2: i + 4], 16))
            i += 4
        elif nxt == "u":
            out += chr(int(s[i + 2: i + 6], 16)).encode("utf-8", "surrogatepass")
            i += 6
        else:
            raise ValueError(f"bad escape at {i} in {s!r}")
    return bytes(out)


def _json_str(s: str) -> str:
    """A string JSON can carry as UTF-8: undecodable bytes shown as U+FFFD."""
    return os.fsencode(s).decode("utf-8", "replace") if _has_surrogates(s) else s


def _has_surrogates(s: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in s)


def path_bytes(path: str) -> bytes:
    """The file system bytes of a path string (surrogate-escaped bytes restored)."""
    return os.fsencode(path)
