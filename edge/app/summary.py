"""The per-sample summary of a run (edge.summary.SampleSummary), fed by every row written; in watch mode
rewritten every few seconds and rebuilt from the results file after a restart."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .console import log
from .errors import UsageError


class SummaryLocationError(OSError):
    pass



class Summary:
    """The per-sample summary of a run (edge.summary.SampleSummary) fed by every written row."""

    def __init__(self, by: str, out: str | None):
        from ..summary import SampleSummary, check_summary_output

        self.out = out
        if out:
            check_summary_output(out)
            folder = Path(os.path.realpath(out)).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SummaryLocationError(f"{out}: cannot write the summary there: {exc.strerror or exc}") from None
            if not os.access(folder, os.W_OK):
                raise SummaryLocationError(f"{out}: cannot write the summary there: folder not writable")
        self.failed_write = False
        self.summary = SampleSummary(by)
        self.clf = None
        self.every = None
        self.last_write = 0.0

    def attach(self, emitter, clf, every_seconds: float | None = None) -> None:
        self.clf, self.every = clf, every_seconds
        self.summary.positive_label = clf.card.positive_label
        emitter.observers.append(self.add_row)

    def add_row(self, row: dict) -> None:
        failed = row.get("status") not in (None, "ok") or bool(row.get("error"))
        self.summary.add(row["path"], None if failed else row.get("label") == self.summary.positive_label,
                         None if failed or row.get("p_all") in (None, "") else float(row["p_all"]), failed,
                         bool(row.get("warning")))
        self.write_if_due()

    def write_if_due(self) -> None:
        """In watch mode (every_seconds given): rewrite the summary file when its interval has passed."""
        if self.every is not None and self.out and time.monotonic() - self.last_write >= self.every:
            self.write()

    def rebuild(self, output: str, fmt: str) -> None:
        from .rows import read_rows

        try:
            for row in read_rows(output, fmt):
                if row.get("path"):
                    self.add_row(row)
        except (OSError, ValueError) as exc:
            log(f"{output}: summary not rebuilt from earlier rows: {exc}")

    def rows(self) -> list[dict]:
        val = (self.clf.card.metrics or {}).get("validation", {}) if self.clf else {}
        return self.summary.rows(val.get("sensitivity"), val.get("specificity"))

    def write(self) -> None:
        self.last_write = time.monotonic()
        try:
            self.summary.write(self.out, self.rows())
            self.failed_write = False
        except OSError as exc:
            self.failed_write = True
            log(f"{self.out}: cannot write the summary: {exc.strerror or exc}")

    def finish(self, quiet: bool) -> None:
        rows = self.rows()
        if not quiet:
            log("per-sample summary (sensitivity/specificity from the card's validation figures):\n"
                 + self.summary.format_text(rows))
        if self.out:
            self.write()


def summary_or_fail(by: str | None, out: str | None):
    if not by and not out:
        return None
    from ..errors import LeukedgeError

    try:
        return Summary(by or "subject", out)
    except (LeukedgeError, ValueError, SummaryLocationError) as exc:
        raise UsageError(str(exc))
