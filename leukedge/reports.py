"""The steps' reports in one place: what `leukedge optimize` writes for people (summary.md, reliability.png).

Each function takes the plain dicts a step already wrote as JSON, so a report can be redrawn from a run folder
without re-running the step. (The benchmark's report and plots are in leukedge.benchmarks.run and
leukedge.benchmarks.plots; training's curves in leukedge.train.fit.)
"""

from __future__ import annotations

from pathlib import Path


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
    from leukedge import stats

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
            stats.plot_reliability(path, curves)
        except ImportError:  # matplotlib is in the train extra; without it there is no plot, nothing else lost
            pass
