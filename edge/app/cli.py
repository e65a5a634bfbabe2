"""The `edge-classify` entry point: parse, run, and turn every way a run ends into its exit code (here only).

Exit codes (edge.app.errors): 0 every input classified; 1 some inputs failed (each has its row) or a closed
stdout pipe; 2 usage, model (a failed self-test included) or output-location error (a batch with -o keeps
every finished row in the temporary file the message names); 129 / 130 / 143 a batch ended by SIGHUP /
SIGINT / SIGTERM (rows kept, one line naming where); a watcher ended by SIGHUP exits 129 after its
`stopped` line. Native libraries' stderr lines go through edge.stderr (prefixed, whole). OpenBLAS
(NumPy's) is held to one thread: its per-core threads and buffers are what a small device runs out of first.
"""

from __future__ import annotations

import os

# Before NumPy is first imported (it is not imported at the top of this module): OpenBLAS otherwise
# starts a thread with its own buffers per core, which under a memory limit aborts inside native code.
# NumPy does no heavy linear algebra here; the user's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import errno  # noqa: E402 - after the environment above
import sys  # noqa: E402

from . import console  # noqa: E402
from .errors import EXIT_SIGINT, EXIT_SOME_FAILED, EXIT_USAGE, AppError, Interrupted  # noqa: E402

_NO_MEMORY = "not enough memory for this run (the README names the memory each model needs)"


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """The `edge-classify` console script: parse `argv` (default: sys.argv[1:]), run, sys.exit(code).

    prog: the name in usage and errors (`leukedge classify` when called from the workstation CLI).
    """
    from .. import stderr as native_stderr
    from .parser import parse_args
    from .places import release_locks
    from .run import classify
    from .signals import end_on_signals, quiet_closed_pipes, restore_signals

    console.set_prog(prog or "edge-classify")
    native_stderr.install(console.prog)
    saved = end_on_signals()
    try:
        code = classify(parse_args(argv, console.prog))
    except AppError as exc:
        if exc.message is not None:
            console.error(exc.message)
        code = exc.code
    except Interrupted as exc:
        code = _interrupted(exc.name, exc.code, exc.where)
    except KeyboardInterrupt:
        code = _interrupted("SIGINT", EXIT_SIGINT)
    except MemoryError:
        console.error(_NO_MEMORY)
        code = EXIT_USAGE
    except ImportError as exc:  # under a memory limit a library's shared object cannot be mapped
        text = " ".join(str(exc).split())
        if "failed to map segment" not in text and "Cannot allocate memory" not in text:
            raise
        console.error(f"{_NO_MEMORY} ({text[:200]})")
        code = EXIT_USAGE
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        quiet_closed_pipes()
        code = EXIT_SOME_FAILED
    finally:
        restore_signals(saved)
        release_locks()
        native_stderr.uninstall()
    sys.exit(code)


def _interrupted(signal_name: str, code: int, where: str | None = None) -> int:
    """One line for a run ended by a signal (naming the file that keeps its rows); returns `code`."""
    kept = f"; every finished row is in {where}" if where else ""
    try:
        sys.stderr.write("\n" if signal_name == "SIGINT" and sys.stderr.isatty() else "")  # after the ^C echo
    except (OSError, ValueError):
        pass
    console.error(f"interrupted by {signal_name}{kept}")
    return code


if __name__ == "__main__":
    main()
