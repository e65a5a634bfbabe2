"""What `leukedge optimize` writes for people (summary.md, reliability.png).

Each function takes the plain dicts a step already wrote as JSON, so a report can be redrawn from a run folder
without re-running the step. (The benchmark's report and plots are in leukedge.reports.benchmark, training's in
leukedge.reports.train.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from leukedge.edge.stats import ECE_BINS, brier_score, expected_calibration_error, reliability_curve


def optimize_summary_markdown(summary: dict, min_validation: int = 50) -> str:
    """summary.md of `leukedge optimize` from its summary.json dict (min_validation: below how many validation
    images no temperature is fitted, said in the notes)."""
    pos = summary["positive_label"]
    par = summary["parent"]
    lines = [
        f"# leukedge optimize: {par['file']}",
        "",
        f"Parent (float Keras): F1({pos}) {par['f1']:.4f}, {pos} sensitivity {par['recall']:.4f} at threshold "
        f"{par['threshold']:.4f}, on {summary['validation_images']} validation images (the split part every "
        f"threshold below was chosen on). Budgets: F1 drop <= {summary['budgets']['max_f1_drop']}, sensitivity drop <= "
        f"{summary['budgets']['max_recall_drop']}.",
        *[f"\n**Warning:** {w}." for w in summary.get("warnings", [])],
        "",
        f"| variant | px | size MB | gzip MB | size vs float32 | F1({pos}) | F1 drop (95 % CI) | {pos} sensitivity | agreement | max dP | T | ECE before -> after | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    f32 = next((r["size_bytes"] for r in summary["variants"] if r["variant"] == "float32"), None)
    f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
    ci = lambda c: "" if not c or None in c else f" ({c[0]:+.3f}, {c[1]:+.3f})"  # noqa: E731
    def ece(r):
        if r.get("ece_before") is None:
            return "-"
        if r.get("calibration_status") == "not fitted":
            return f"{r['ece_before']:.3f} (T not fitted)"
        return f"{r['ece_before']:.3f} -> {r['ece_after']:.3f}"
    for r in summary["variants"]:
        ratio = f"{r['size_bytes'] / f32:.1%}" if f32 else "-"
        lines.append(f"| {r['variant']} | {r.get('input_size', '-')} | {r['size_bytes'] / 1e6:.2f} | {r['gzip_bytes'] / 1e6:.2f} | "
                     f"{ratio} | {r['f1']:.4f} | {r['f1_drop']:+.4f}{ci(r.get('f1_drop_ci'))} | {r['recall']:.4f} | "
                     f"{f(r['agreement'], '.3f')} | {f(r['max_abs_delta_p'], '.3f')} | {f(r.get('temperature'), '.2f')} | "
                     f"{ece(r)} | {r['verdict']}{' (' + '; '.join(r['reasons']) + ')' if r['reasons'] else ''} |")
    lines += [f"\nTemperature of {r['variant']} not fitted (T = 1): {r['calibration_reason']}."
              for r in summary["variants"] if r.get("calibration_status") == "not fitted"]
    lines += ["", "All figures: the validation part (where thresholds and temperatures were chosen). gzip MB: gzip "
              "level 9 of the model file. F1 drop CI: paired bootstrap (1,000 resamples, seeded; subjects when the "
              "split has them). T: the fitted temperature of a logit variant; ECE: 15 equal-width bins on P(positive), "
              "before and after temperature scaling (reliability.png); a temperature is not fitted (T = 1) below "
              f"{min_validation} validation images or where the validation scores separate the classes. Variants at another input size (px) are scored "
              "on the validation images decoded at that size; agreement and max dP (uncalibrated) compare with the "
              "parent on the same cells."]
    return "\n".join(lines) + "\n"


def optimize_reliability_plot(path: Path, results: list[dict], positive_index: int) -> None:
    """reliability.png of `leukedge optimize`: each logit variant's reliability curve on validation before and
    after temperature scaling (only before where no temperature was fitted). results: summary rows with their
    '_y', '_p_uncal', '_p_cal' arrays; positive_index: the positive label's index. No matplotlib: no plot."""
    curves = {}
    for r in results:
        if r.get("temperature") is not None:
            is_pos = r["_y"] == positive_index
            if r.get("calibration_status") == "not fitted":
                curves[f"{r['variant']} T=1 (not fitted)"] = (is_pos, r["_p_uncal"])
                continue
            curves[f"{r['variant']} T=1"] = (is_pos, r["_p_uncal"])
            curves[f"{r['variant']} T={r['temperature']:.2f}"] = (is_pos, r["_p_cal"])
    if curves:
        try:
            plot_reliability(path, curves)
        except ImportError:  # matplotlib is in the train extra; without it there is no plot, nothing else lost
            pass


def plot_reliability(path: str | os.PathLike, curves: Mapping[str, tuple], bins: int = ECE_BINS,
                     strategy: str = "uniform", title: str | None = None) -> Path:
    """Reliability diagram PNG: one small panel per model, each with its curves, the diagonal and a histogram.

    curves: {name: (y_true 0/1, p)}. Names "<model> T=<t>" share one panel per <model> (the
    optimize and benchmark steps pass "int8 T=1" and "int8 T=0.97": before and after temperature
    scaling); any other name is a panel of its own. A nested {panel: {name: (y, p)}} sets the
    panels explicitly. In a panel the first curve is drawn dashed (before), the last solid
    (what the device reports); each curve's ECE and Brier score is in the panel's legend. Below
    each panel, the number of cells per bin on a log scale whose floor is 0.5, so a bin with
    one cell still shows a bar. Written atomically; matplotlib (Agg) is imported only here.
    Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from leukedge.edge.files import atomic_path

    panels: dict[str, dict[str, tuple]] = {}
    for name, value in curves.items():
        if isinstance(value, Mapping):
            panels[name] = dict(value)
        else:
            panels.setdefault(name.split(" T=")[0], {})[name] = value
    if not panels:
        raise ValueError("no curves to plot")
    # colour-blind-safe pair (Okabe-Ito): before = orange, dashed; after = blue, solid
    styles = [{"color": "#D55E00", "linestyle": "--", "marker": "s"}, {"color": "#0072B2", "linestyle": "-", "marker": "o"}]
    n = len(panels)
    ncols = min(n, 4)
    nrows = -(-n // ncols)
    width, height = max(3.2 * ncols + 0.5, 5.0), 4.1 * nrows + 0.7
    fig = plt.figure(figsize=(width, height))
    outer = fig.add_gridspec(nrows, ncols, hspace=0.32, wspace=0.3, left=0.65 / width, right=1 - 0.15 / width,
                             bottom=0.5 / height, top=1 - 0.75 / height)
    edges = np.linspace(0, 1, (bins if strategy == "uniform" else ECE_BINS) + 1)
    for k, (panel, series) in enumerate(panels.items()):
        row, col = divmod(k, ncols)
        inner = outer[row, col].subgridspec(2, 1, height_ratios=[3, 1], hspace=0.06)
        ax = fig.add_subplot(inner[0])
        hist = fig.add_subplot(inner[1], sharex=ax)
        ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1)
        items = list(series.items())
        for i, (name, (y, p)) in enumerate(items):
            style = styles[1] if i == len(items) - 1 else styles[0]
            c = reliability_curve(y, p, bins, strategy)
            ece = expected_calibration_error(y, p, bins, strategy)
            short = name[len(panel):].strip() or name
            ax.plot(c["mean_p"], c["fraction_positive"], markersize=4, linewidth=1.5,
                    label=f"{short}: ECE {ece:.3f}, Brier {brier_score(y, p):.3f}", **style)
            counts, _ = np.histogram(np.asarray(p, dtype=np.float64), bins=edges)
            last = i == len(items) - 1
            hist.stairs(np.maximum(counts, 0.5), edges, baseline=0.5, fill=last, alpha=0.4 if last else 1.0,
                        color=style["color"], linewidth=1.3, linestyle=style["linestyle"])
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("auto")
        ax.set_title(panel, fontsize=10)
        ax.legend(fontsize=7, loc="upper left", frameon=True, framealpha=0.85)
        ax.tick_params(labelbottom=False, labelsize=8)
        ax.grid(alpha=0.25)
        if col == 0:
            ax.set_ylabel("observed fraction positive", fontsize=8)
            hist.set_ylabel("cells (log)", fontsize=8)
        hist.set_yscale("log")
        hist.set_ylim(0.5, None)
        hist.set_xlabel("predicted P(positive)", fontsize=8)
        hist.tick_params(labelsize=7)
    kind = "equal-width" if strategy == "uniform" else "equal-mass"
    fig.suptitle(title or f"Reliability per model ({bins} {kind} bins)\n"
                          "dotted: perfect; dashed: before, solid: after temperature scaling",
                 fontsize=9, y=1 - 0.08 / height)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)
