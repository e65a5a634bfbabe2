"""How signals end an edge-classify batch: SIGTERM and SIGHUP raise `Interrupted` in the main thread, as
SIGINT raises KeyboardInterrupt, so a run ended by any of them keeps its rows and says so; after EPIPE
stdout and stderr are pointed at /dev/null. (A watcher sets its own handlers: edge.app.watch.)"""

from __future__ import annotations

import os
import signal
import sys

from .errors import EXIT_SIGHUP, EXIT_SIGTERM, Interrupted

_ENDING_SIGNALS = {"SIGTERM": EXIT_SIGTERM, "SIGHUP": EXIT_SIGHUP}


def end_on_signals() -> dict:
    """From now on SIGTERM and SIGHUP raise Interrupted in the main thread (SIGINT raises
    KeyboardInterrupt already). Returns {signal number: previous handler} for `restore_signals`."""
    saved = {}
    for name, code in _ENDING_SIGNALS.items():
        signum = getattr(signal, name, None)
        if signum is None:  # no SIGHUP off POSIX
            continue

        def _terminate(signum, frame, name=name, code=code):
            raise Interrupted(name, code)

        try:
            saved[signum] = signal.signal(signum, _terminate)
        except ValueError:  # not the main thread (a caller's worker): leave the defaults
            break
    return saved


def restore_signals(saved: dict) -> None:
    for signum, handler in saved.items():
        try:
            signal.signal(signum, handler)
        except (ValueError, TypeError):
            pass


def quiet_closed_pipes() -> None:
    """After EPIPE: point stdout and stderr at /dev/null so the final flush at exit cannot complain."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(null, stream.fileno())
        except (OSError, ValueError, AttributeError):
            pass
