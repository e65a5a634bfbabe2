"""What ends an edge-classify run early, as typed errors; `edge.app.cli.main` alone turns them into exit codes.

Exit codes: 0 every input classified; 1 some inputs failed or hit an internal error (each is reported as
its own row; the others are still classified); 2 usage, model (a failed self-test included) or
output-location error; 129 / 130 / 143 a run ended by SIGHUP / SIGINT / SIGTERM (128 + the signal, as a
shell reports it).
"""

from __future__ import annotations

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_SIGHUP, EXIT_SIGINT, EXIT_SIGTERM = 128 + 1, 128 + 2, 128 + 15  # the shell's convention: 128 + the signal


class AppError(Exception):
    """A run that cannot go on: `message` (None: already said) is one stderr line, `code` the exit code."""

    code = EXIT_USAGE

    def __init__(self, message: str | None = None):
        super().__init__(message)
        self.message = message


class UsageError(AppError):
    """Options, inputs or places to write that cannot work together (exit 2; nothing is classified)."""


class ModelUnusable(AppError):
    """The model, its card, its signature or its self-test rule it out on this device (exit 2)."""


class OutputProblem(AppError):
    """Results cannot be written where asked (exit 2); the message names where finished rows are kept."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM (systemd, kill), SIGHUP (the terminal closed) or SIGINT during a batch or while a model loads: it
    ends the run like Ctrl-C, with the signal's own exit code. name: "SIGTERM" | "SIGHUP" | "SIGINT";
    code: 128 + n; where: the file that keeps every finished row, when there is one."""

    def __init__(self, name: str = "SIGTERM", code: int = EXIT_SIGTERM, where: str | None = None):
        super().__init__(name)
        self.name, self.code, self.where = name, code, where


class Exit(AppError):
    """End the run now with `code`, nothing more to say (e.g. 1 after a closed stdout pipe)."""

    def __init__(self, code: int):
        super().__init__(None)
        self.code = code
