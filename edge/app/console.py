"""edge-classify's stderr: one escaped line per message, prefixed with the program's name.

The name is `edge-classify`, or `leukedge classify` through the workstation CLI (`set_prog`). While a
progress bar is drawn (`bar_on_screen`), a line clears it first; the bar is redrawn at its next update.
"""

from __future__ import annotations

import sys

prog = "edge-classify"
bar_on_screen = False


def set_prog(name: str) -> None:
    global prog
    prog = name


def _write(text: str) -> None:
    try:
        sys.stderr.write(("\r\x1b[2K" if bar_on_screen else "") + text)
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr gone (a closed terminal): the run goes on, its rows still count
        pass


def log(msg: str) -> None:
    """One stderr line per line of `msg` (each escaped, so no file name can forge a line)."""
    from ..text import escape_text

    _write("".join(f"{prog}: {escape_text(line)}\n" for line in str(msg).split("\n")))


def error(message: str) -> None:
    """The one `PROG: error: MESSAGE` line a run ends with."""
    from ..text import escape_text

    _write(f"{prog}: error: {escape_text(message)}\n")
