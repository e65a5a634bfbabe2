"""The per-sample summary of `edge-classify --summary-by` and its grouping rules, in one place.

A lab acts on a patient's sample, not on one cell: `SampleSummary` counts per group (a folder, a C-NMC
subject, or a regular expression's group) the cells flagged positive, with the flagged fraction's Wilson
interval and the Rogan-Gladen correction for the model's validated sensitivity and specificity
(leukedge.edge.stats). The grouping rules (`cnmc_subject`, `group_key`) are the one implementation:
training (leukedge.train.datasets) imports `cnmc_subject` from here.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import LeukedgeError
from .files import write_text_atomic
from .stats import _z, rogan_gladen, rogan_gladen_interval, wilson_interval

# C-NMC training file names: UID_<subject>_<image>_<cell>_<all|hem>.bmp; the release mixes case
# ('UID_h3_' and 'UID_H3_' are one subject). The one rule: training (leukedge.train.datasets)
# imports `cnmc_subject` from here. Compiled on first use (re's cache), not at every device start.
_CNMC_SUBJECT = r"^UID_([A-Za-z]?\d+)_"

UNKNOWN_GROUP = "unknown"
SUMMARY_FORMATS = (".json", ".csv")
SUMMARY_FIELDS = ("group", "cells", "flagged", "flagged_fraction", "flagged_low", "flagged_high",
                  "corrected_fraction", "corrected_low", "corrected_high", "mean_p_positive",
                  "failures", "quality_warnings", "confidence", "sensitivity", "specificity")


class SummaryError(LeukedgeError, ValueError):
    """A bad `--summary-by` or `--summary-out` value; the message names the option and the problem."""



# -- per-sample summary -------------------------------------------------------------------------------

def _compile_group_pattern(by: str) -> re.Pattern:
    try:
        pattern = re.compile(by)
    except re.error as exc:
        raise SummaryError(f"--summary-by {by!r}: not a regular expression ({exc})") from None
    if pattern.groups != 1:
        raise SummaryError(f"--summary-by {by!r}: the regular expression must have exactly one group "
                           f"(the sample id), it has {pattern.groups}")
    return pattern


def cnmc_subject(name: str | os.PathLike) -> str | None:
    """C-NMC subject id from a file name (`UID_<subject>_...`), upper-case: 'UID_h3_...' and 'UID_H3_...'
    are subject 'H3'. None when the name does not follow the pattern."""
    m = re.match(_CNMC_SUBJECT, Path(name).name, re.IGNORECASE)
    return m.group(1).upper() if m else None


def _key_for(path: str | os.PathLike, by: str, pattern: re.Pattern | None) -> str:
    p = Path(path)
    if by == "folder":  # the whole folder path: patA/cells and patB/cells are different samples
        parent = os.path.dirname(os.path.normpath(str(p)))
        return parent or "."
    if by == "subject":
        return cnmc_subject(p.name) or UNKNOWN_GROUP
    m = pattern.search(p.as_posix())
    return m.group(1) if m and m.group(1) else UNKNOWN_GROUP


def group_key(path: str | os.PathLike, by: str) -> str:
    """The sample a cell image belongs to.

    by = "folder": the name of the file's parent folder (one folder per sample).
    by = "subject": the C-NMC subject of a training file name `UID_<subject>_<image>_<cell>_...`,
    upper-cased ('UID_h3_' and 'UID_H3_' are one subject), else "unknown".
    Anything else: a regular expression with exactly one group, searched in the path (with '/'
    separators); the group is the sample id, "unknown" when it does not match.
    Example: by = r"(P\\d+)_" maps "scans/P042_cell7.png" to "P042".
    Raises SummaryError (one line) for an invalid expression or one without exactly one group.
    """
    pattern = None if by in ("folder", "subject") else _compile_group_pattern(by)
    return _key_for(path, by, pattern)


def check_summary_output(path: str | os.PathLike) -> str:
    """'json' or 'csv' from the file extension of `--summary-out`; SummaryError for any other.

    Call it before classifying, so a typo fails at once and not after a long batch.
    """
    ext = Path(path).suffix.lower()
    if ext not in SUMMARY_FORMATS:
        raise SummaryError(f"{path}: --summary-out must end in .json or .csv, not {ext or 'no extension'!r}")
    return ext[1:]


def _natural_key(group: str) -> tuple:
    """Sort groups as a person would: subject 2 before 10, H3 before h10, "unknown" last."""
    parts = re.split(r"(\d+)", group)
    return (group == UNKNOWN_GROUP, [int(t) if i % 2 else t.lower() for i, t in enumerate(parts)])


class _Cell:
    """One cell's result in a summary: its group, decision, P(positive), failed, warned.
    A slotted class, not a dataclass: making a dataclass costs every device start ~0.3 ms."""

    __slots__ = ("key", "positive", "p_positive", "failed", "warned")

    def __init__(self, key: str, positive: bool | None, p_positive: float | None, failed: bool, warned: bool):
        self.key, self.positive, self.p_positive, self.failed, self.warned = key, positive, p_positive, failed, warned


class SampleSummary:
    """Per-sample counts of cells flagged positive, for `edge-classify --summary-by`.

    A lab acts on a patient's sample, not on one cell: each group (subject, folder or regex group)
    gets the number of cells classified and flagged, the flagged fraction with its Wilson interval,
    the fraction corrected for the model's sensitivity and specificity (Rogan-Gladen), the mean
    P(positive), failures and quality warnings.

    Cells are keyed by their absolute path: adding the same path again (a re-read in --watch mode,
    or a rebuild after a restart) replaces its earlier contribution, so every cell counts once.
    """

    def __init__(self, by: str = "subject", confidence: float = 0.95, positive_label: str = "all"):
        """by: "folder", "subject" or a one-group regular expression (see `group_key`);
        confidence: level of the Wilson and Rogan-Gladen intervals; positive_label: for the text table.
        Raises SummaryError for a bad `by`, ValueError for a confidence outside (0, 1)."""
        self.by = by
        self._pattern = None if by in ("folder", "subject") else _compile_group_pattern(by)
        _z(confidence)
        self.confidence = float(confidence)
        self.positive_label = positive_label
        self._cells: dict[str, _Cell] = {}

    def __len__(self) -> int:
        return len(self._cells)

    def group_key(self, path: str | os.PathLike) -> str:
        """This summary's group of `path` (see the module-level `group_key`)."""
        return _key_for(path, self.by, self._pattern)

    def add(self, path: str | os.PathLike, label_is_positive: bool | None, p_positive: float | None,
            failed: bool, warned: bool, key: str | None = None) -> None:
        """Record one cell's result (replacing an earlier result for the same path).

        label_is_positive: the device's decision (True = flagged positive); None when failed.
        p_positive: the calibrated P(positive) in [0, 1]; None when failed.
        failed: the image could not be classified; warned: it got at least one quality warning.
        key: the group, when the caller knows it better than the path does (else `group_key`).
        Raises ValueError for a classified cell without a decision or with p outside [0, 1].
        """
        if not failed:
            if label_is_positive is None:
                raise ValueError(f"{path}: a classified cell needs a decision (label_is_positive)")
            if p_positive is not None and not 0.0 <= float(p_positive) <= 1.0:
                raise ValueError(f"{path}: P(positive) must lie in [0, 1], got {p_positive!r}")
        cell = _Cell(key if key is not None else self.group_key(path),
                     None if failed else bool(label_is_positive),
                     None if failed or p_positive is None else float(p_positive),
                     bool(failed), bool(warned))
        self._cells[os.path.normpath(os.path.abspath(path))] = cell

    def add_record(self, record: dict, positive_label: str) -> None:
        """Record one result dict as `Prediction.to_dict()` writes it (path, label, p_all, error,
        warnings); used both live and to rebuild a summary from an earlier run's output."""
        failed = bool(record.get("error"))
        label = record.get("label")
        self.add(record["path"], None if failed or label is None else label == positive_label,
                 None if failed else record.get("p_all"), failed, bool(record.get("warnings")))

    def rows(self, sensitivity: float | None = None, specificity: float | None = None) -> list[dict]:
        """One dict per group, in natural order (2 before 10), "unknown" last.

        sensitivity, specificity: the model's validated rates from its card; when either is None,
        or their sum is <= 1, the corrected fraction and its interval are None.
        Keys: group, cells (classified), flagged, flagged_fraction, flagged_low, flagged_high (Wilson),
        corrected_fraction, corrected_low, corrected_high (Rogan-Gladen; the interval ignores the
        uncertainty of sensitivity/specificity), mean_p_positive, failures, quality_warnings,
        confidence, sensitivity, specificity. Fractions are None for a group with no classified cell.
        """
        correct = (sensitivity is not None and specificity is not None
                   and float(sensitivity) + float(specificity) > 1.0)
        groups: dict[str, list[_Cell]] = {}
        for cell in self._cells.values():
            groups.setdefault(cell.key, []).append(cell)
        out = []
        for key in sorted(groups, key=_natural_key):
            cells = groups[key]
            done = [c for c in cells if not c.failed]
            n, k = len(done), sum(1 for c in done if c.positive)
            low, high = wilson_interval(k, n, self.confidence)
            ps = [c.p_positive for c in done if c.p_positive is not None]
            row = {
                "group": key, "cells": n, "flagged": k,
                "flagged_fraction": k / n if n else None, "flagged_low": low, "flagged_high": high,
                "corrected_fraction": None, "corrected_low": None, "corrected_high": None,
                "mean_p_positive": float(np.mean(ps)) if ps else None,
                "failures": sum(1 for c in cells if c.failed),
                "quality_warnings": sum(1 for c in cells if c.warned),
                "confidence": self.confidence, "sensitivity": sensitivity, "specificity": specificity,
            }
            if correct and n:
                row["corrected_fraction"] = rogan_gladen(k / n, sensitivity, specificity)
                row["corrected_low"], row["corrected_high"] = rogan_gladen_interval(
                    k, n, sensitivity, specificity, self.confidence)
            out.append(row)
        return out

    def write(self, path: str | os.PathLike, rows: Sequence[dict]) -> None:
        """Write `rows` atomically to `path`: JSON (an object with the settings and "groups") or CSV
        (one line per group, the keys of `rows` as header), chosen by the extension.
        Floats are rounded to 6 decimals; None is null in JSON and empty in CSV.
        Raises SummaryError for another extension."""
        fmt = check_summary_output(path)
        clean = [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
        if fmt == "json":
            text = json.dumps({"summary_by": self.by, "positive_label": self.positive_label,
                               "confidence": self.confidence,
                               "interval": "Wilson score; corrected = Rogan-Gladen on the Wilson bounds, "
                                           "sensitivity and specificity taken as known",
                               "groups": clean}, indent=2) + "\n"
        else:
            import csv

            buf = io.StringIO()
            fields = list(clean[0]) if clean else list(SUMMARY_FIELDS)
            writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
            writer.writeheader()
            for r in clean:
                writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
            text = buf.getvalue()
        write_text_atomic(path, text)

    def format_text(self, rows: Sequence[dict]) -> str:
        """A fixed-width table of `rows` for the terminal (one line per group, a header, a legend)."""
        pct = f"{self.confidence * 100:g} %"

        def frac(v, lo, hi):
            return "-" if v is None else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"

        head = ["group", "cells", f"flagged {self.positive_label}", f"fraction [{pct} CI]",
                f"corrected [{pct} CI]", f"mean P({self.positive_label})", "failed", "warned"]
        table = [head]
        for r in rows:
            table.append([str(r["group"]), str(r["cells"]), str(r["flagged"]),
                          frac(r["flagged_fraction"], r["flagged_low"], r["flagged_high"]),
                          frac(r["corrected_fraction"], r["corrected_low"], r["corrected_high"]),
                          "-" if r["mean_p_positive"] is None else f"{r['mean_p_positive']:.3f}",
                          str(r["failures"]), str(r["quality_warnings"])])
        widths = [max(len(line[i]) for line in table) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                 for line in table]
        se = rows[0]["sensitivity"] if rows else None
        sp = rows[0]["specificity"] if rows else None
        if se is not None and sp is not None and se + sp > 1:
            legend = (f"corrected = Rogan-Gladen with sensitivity {se:.3f}, specificity {sp:.3f} "
                      f"(its interval treats them as exact)")
        else:
            legend = "corrected: not available (the card gives no usable sensitivity and specificity)"
        return "\n".join([f"summary by {self.by} ({pct} Wilson intervals)", *lines, legend])
