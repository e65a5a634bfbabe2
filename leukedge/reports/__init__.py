"""Every step's reports in one place: the Markdown, CSV and plots that `train`, `optimize` and the benchmarks
write for people.

Each writer takes the plain dicts a step already wrote as JSON (or its history rows), so a report can be redrawn
from a run folder without re-running the step. One module per step:

- `leukedge.reports.optimize`: optimize's summary.md and reliability.png.
- `leukedge.reports.train`: train's history.csv, training_curves.png, confusion_matrix.png; import's import-report.md.
- `leukedge.reports.benchmark`: the benchmark's report.md and f1_vs_latency.png, and composed-fields' Markdown.
"""

from leukedge.reports.benchmark import benchmark_markdown, composed_fields_markdown, f1_vs_latency
from leukedge.reports.optimize import optimize_reliability_plot, optimize_summary_markdown, plot_reliability
from leukedge.reports.train import import_report_markdown, train_history_csv, train_plots

__all__ = ["optimize_reliability_plot", "optimize_summary_markdown", "plot_reliability",
           "benchmark_markdown", "composed_fields_markdown", "f1_vs_latency",
           "import_report_markdown", "train_history_csv", "train_plots"]
