"""edge-classify's option parser: argparse, generated from `ClassifyOptions` (edge.app.options).

argparse, not click: click costs a device ~10 ms at every start; it is imported only to draw the progress
bar of a multi-file batch on a terminal. Every usage error is a UsageError (edge.app.errors): one line,
exit 2.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from leukedge import __version__

from .errors import UsageError
from .options import ClassifyOptions, option_fields

DESCRIPTION = """\
Classify segmented blood-cell images with a screening model. The model's card names its labels
(C-NMC models: ALL = leukemic blast, HEM = normal); p_all is P(the card's positive label).

INPUTS are image files (BMP, PNG, JPEG, TIFF), folders, or glob patterns.

Exit codes:
  0    every input was classified
  1    some inputs failed (each is reported; the others are still classified)
  2    usage, model (a failed self-test included) or output error (a batch's finished rows are
       kept; the message says where)
  130  a batch interrupted by Ctrl-C (SIGINT), 143 by SIGTERM: every finished row is kept
"""


class _Range:
    """argparse type: an int or float within [low, high] (None: unbounded), like click's IntRange/FloatRange.

    A value that is not a number, or lies outside the range (NaN included), is a usage error (exit 2)
    whose message names the option, the value and the range: `2.0 is not in the range 0.0<=x<=1.0`.
    """

    def __init__(self, kind: type, low=None, high=None):
        self.kind, self.low, self.high = kind, low, high

    def describe(self) -> str:
        if self.low is None:
            return f"x<={self.high}"
        if self.high is None:
            return f"x>={self.low}"
        return f"{self.low}<=x<={self.high}"

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a valid {'integer' if self.kind is int else 'number'}") from None
        if value != value or (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise argparse.ArgumentTypeError(f"{value} is not in the range {self.describe()}")
        return value


class _PathArg:
    """argparse type: a path checked like click.Path: when it exists, it must be of the allowed kind
    (a file or a folder) and readable; with exists=True it must exist. The path is returned as given."""

    def __init__(self, file_okay: bool = True, dir_okay: bool = True, exists: bool = False):
        self.file_okay, self.dir_okay, self.exists = file_okay, dir_okay, exists
        self.noun = "file" if not dir_okay else "folder" if not file_okay else "path"

    def __call__(self, text: str) -> str:
        import stat

        try:
            st = os.stat(text)
        except OSError:
            if self.exists:
                raise argparse.ArgumentTypeError(f"{self.noun} {text!r} does not exist") from None
            return text
        if not self.file_okay and stat.S_ISREG(st.st_mode):
            raise argparse.ArgumentTypeError(f"{self.noun} {text!r} is a file")
        if not self.dir_okay and stat.S_ISDIR(st.st_mode):
            raise argparse.ArgumentTypeError(f"{self.noun} {text!r} is a folder")
        if not os.access(text, os.R_OK):
            raise argparse.ArgumentTypeError(f"{self.noun} {text!r} is not readable")
        return text


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The help layout: the description as written, option help in a column from 34 characters.

    argparse makes a formatter for every add_argument (to check the metavar); the terminal width,
    which costs importing shutil, is looked up only when help or usage is really formatted."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=34, width=120)

    def _fit_terminal(self) -> None:
        import shutil

        self._width = max(shutil.get_terminal_size().columns - 2, 40)
        self._max_help_position = min(34, max(self._width - 20, 2 * self._indent_increment))

    def format_help(self) -> str:
        self._fit_terminal()
        return super().format_help()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """A usage error: one `PROG: error: ... (PROG --help lists the options)` line (edge.app.cli); exit 2."""
        raise UsageError(f"{message} ({self.prog} --help lists the options)")


# argparse takes "-1e3" or "-inf" for an option name (its own pattern knows only -1 and -.5); no
# option of edge-classify looks like a number, so every number-like word is a value.
_NEGATIVE_NUMBER = re.compile(r"^-(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|inf(?:inity)?|nan)$", re.IGNORECASE)


def _add(ap: argparse.ArgumentParser, f) -> None:
    """One option from its field's metadata; a ranged value's help ends like click's: [default: D; RANGE]."""
    spec = f.metadata
    kw = {"dest": f.name, "help": spec["help"], "default": f.default}
    if spec.get("env"):
        kw["default"] = os.environ.get(spec["env"]) or None
    if spec.get("flag"):
        kw["action"] = "store_true"
    for key in ("metavar", "choices", "nargs", "type"):
        if key in spec:
            kw[key] = spec[key]
    if "range" in spec:
        kind, low, high = spec["range"]
        kw["type"] = t = _Range(kind, low, high)
        note = f"[default: {f.default}; {t.describe()}]" if f.default is not None else f"[{t.describe()}]"
        kw["help"] = f"{spec['help']}  {note}"
    if "path" in spec:
        kw["type"] = _PathArg(**spec["path"])
    ap.add_argument(*spec["flags"], **kw)


def build_parser(prog: str = "edge-classify") -> argparse.ArgumentParser:
    """The option parser of `edge-classify`, one option per ClassifyOptions field (every default and range
    is in its help)."""
    ap = _Parser(prog=prog, usage="%(prog)s [OPTIONS] [INPUTS]...", description=DESCRIPTION, add_help=False,
                 allow_abbrev=False, formatter_class=_HelpFormatter)
    ap._negative_number_matcher = _NEGATIVE_NUMBER  # argparse's hook for this (a private name since 3.2)
    ap.add_argument("inputs", nargs="*", metavar="INPUTS", help="Image files, folders or glob patterns.")
    for f in option_fields():
        _add(ap, f)
    ap.add_argument("--version", action="version", version=f"edge-classify (leukedge), version {__version__}",
                    help="Show the version and exit.")
    ap.add_argument("-h", "--help", action="help", help="Show this message and exit.")
    return ap


def parse_args(argv: list[str] | None = None, prog: str = "edge-classify") -> ClassifyOptions:
    """The options of one run; a usage error raises UsageError (exit 2).

    Options and INPUTS may be mixed in any order; everything after `--` is an input.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    tail: list[str] = []
    if "--" in args:  # parse_intermixed_args mishandles `--`: split it off here
        cut = args.index("--")
        args, tail = args[:cut], args[cut + 1:]
    parser = build_parser(prog)
    opts = vars(parser.parse_intermixed_args(args))
    opts["inputs"] = (*opts["inputs"], *tail)
    if opts["value_range"] is not None:
        opts["value_range"] = tuple(opts["value_range"])
    if "" in opts["inputs"]:  # Path("") is the current folder: an unset "$IMG" must not classify it
        parser.error("an input is an empty string (an unset shell variable?)")
    for action in parser._actions:
        if action.option_strings and isinstance(opts.get(action.dest), str) and opts[action.dest] == "":
            parser.error(f"argument {'/'.join(action.option_strings)}: empty value")
    for only, needs in (("watch", "watch_dir"), ("fields", "fields")):
        if not opts[needs]:
            _refuse_stray(parser, opts, only)
    if opts["choice"] and any(a in ("-m", "--model") or a.startswith("--model=") for a in args):
        parser.error("give either --model or --choice, not both")
    return ClassifyOptions(**opts)


def _refuse_stray(parser: argparse.ArgumentParser, opts: dict, only: str) -> None:
    """Options that mean something only with --watch DIR (only="watch") or --fields: given without it, a
    usage error rather than silently ignored."""
    dests = {f.name for f in option_fields() if f.metadata.get("only") == only}
    stray = [a.option_strings[-1] for a in parser._actions if a.dest in dests and opts[a.dest] != a.default]
    if stray:
        with_what = "--watch DIR" if only == "watch" else "--fields"
        parser.error(f"{', '.join(stray)} only appl{'ies' if len(stray) == 1 else 'y'} with {with_what}")
