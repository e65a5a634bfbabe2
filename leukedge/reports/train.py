"""What `leukedge train` and `leukedge import` write for people (history.csv, training_curves.png,
confusion_matrix.png, import-report.md).

Each function takes plain data (history rows, the report dicts a step already wrote as JSON), so a report can be
redrawn from a run folder without re-running the step; nothing here imports TensorFlow, and matplotlib (Agg) is
imported only when a plot is drawn.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

TRAINING_IMAGES_UNKNOWN = ("training images unknown: the model may have been trained on some of these images, "
                           "so figures measured on them may be optimistic")


def train_history_csv(history: list[dict]) -> str:
    """history.csv of `leukedge train`: one row per epoch (history rows: {"stage", "epoch", "loss", ...,
    "val_f1_pos", "val_recall_pos"}); the columns are every key in order of first appearance."""
    keys: list[str] = []
    for h in history:
        keys.extend(k for k in h if k not in keys)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    return buf.getvalue()


def _pyplot():
    """matplotlib.pyplot on the Agg backend, or None without matplotlib (it is in the train extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def train_curves_plot(path: str | Path, history: list[dict]) -> None:
    """training_curves.png: loss (training and validation) and validation F1 / recall of the positive class
    per epoch (history rows as in train_history_csv), a dotted line where fine-tuning starts. Needs matplotlib
    (ImportError without it)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ep = [h["epoch"] for h in history]
    for key, label, style in (("loss", "training loss", "-o"), ("val_loss", "validation loss", "--s")):
        if key in history[0]:
            axes[0].plot(ep, [h.get(key, np.nan) for h in history], style, label=label)
    axes[1].plot(ep, [h.get("val_f1_pos", np.nan) for h in history], "-o", label="validation F1 (positive)")
    axes[1].plot(ep, [h.get("val_recall_pos", np.nan) for h in history], "--s",
                 label="validation recall (positive)")
    axes[0].set_title("loss")
    axes[1].set_title("validation")
    axes[1].set_ylim(0, 1.0)
    stage2 = [h["epoch"] for h in history if h.get("stage") == "finetune"]
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if stage2 and stage2[0] > 1:
            ax.axvline(stage2[0] - 0.5, color="grey", linestyle=":", label="fine-tuning starts")
        ax.legend(fontsize=8)  # after every line, so each one is in it
    fig.tight_layout(); fig.savefig(path, dpi=110); plt.close(fig)


def train_confusion_plot(path: str | Path, report: dict, labels: list[str]) -> None:
    """confusion_matrix.png: the 2x2 validation confusion matrix (report: {"confusion_matrix": [[int]] with true
    rows and predicted columns in `labels` order, "threshold": float}), each cell with its count and its share of
    its true class. Needs matplotlib (ImportError without it)."""
    import matplotlib.pyplot as plt

    cm = np.array(report["confusion_matrix"])
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(1, cm.max()))
    rows = cm.sum(axis=1, keepdims=True)
    for i in range(2):
        for j in range(2):
            dark = cm[i, j] > 0.5 * max(1, cm.max())  # white on the dark half of the colour map, black on the light
            share = f"\n{100 * cm[i, j] / rows[i, 0]:.0f} %" if rows[i, 0] else ""
            ax.text(j, i, f"{cm[i, j]}{share}", ha="center", va="center", fontsize=12, fontweight="bold",
                    color="white" if dark else "black")
    ax.set_xticks([0, 1], labels); ax.set_yticks([0, 1], labels)
    ax.set_xlabel("predicted  (count; % of its true class)", fontsize=9); ax.set_ylabel("true")
    ax.set_title(f"validation, threshold {report['threshold']:.3f}", fontsize=10)
    fig.tight_layout(); fig.savefig(path, dpi=110); plt.close(fig)


def train_plots(out: str | Path, history: list[dict], report: dict, labels: list[str]) -> list[str]:
    """The plots of `leukedge train` into the folder `out`: training_curves.png (when there is a history) and
    confusion_matrix.png (train_curves_plot, train_confusion_plot). Returns the file names written, [] without
    matplotlib."""
    if _pyplot() is None:
        return []
    out = Path(out)
    written = []
    if history:
        train_curves_plot(out / "training_curves.png", history)
        written.append("training_curves.png")
    train_confusion_plot(out / "confusion_matrix.png", report, labels)
    written.append("confusion_matrix.png")
    return written


def import_report_markdown(report: dict, labels: list[str], positive: int) -> str:
    """import-report.md of `leukedge import`: the preprocessing check table and the validation figures.

    report: the import-report.json dict ({"source": {"file"}, "check": check_preprocessing's dict, "validation":
    a binary report with "images" or None}); labels: the model's labels in output order; positive: the positive
    label's index."""
    c = report["check"]
    lines = [f"# leukedge import: {report['source']['file']}", "",
             f"Preprocessing check on {c['images']} labelled images: {'verified' if c['verified'] else 'NOT verified'} "
             f"({c['reason']}). Rule: {c['rule']}.", "",
             f"| scaling | resize | label order | AUROC | balanced accuracy | P({labels[positive]}) spread | |",
             "|---|---|---|---:|---:|---:|---|"]
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for k in c["candidates"]:
        order = ", ".join(reversed(labels) if k["reversed_labels"] else labels)
        lines.append(f"| {k['scaling']} | {k['resize']} | [{order}] | {f(k['auroc'])} | {f(k['balanced_accuracy'])} | "
                     f"{f(k['p_positive_spread'])} | {'declared' if k['declared'] else ''} |")
    v = report.get("validation")
    if v:
        lines += ["", f"Validation part ({v['images']} images): F1({labels[positive]}) {v['f1_positive']:.4f}, "
                      f"sensitivity {v['sensitivity']:.4f}, specificity {v['specificity']:.4f}, "
                      f"AUROC {f(v.get('auroc'))} at threshold {v['threshold']:.4f}.", "",
                  f"**Note:** {TRAINING_IMAGES_UNKNOWN}."]
    return "\n".join(lines) + "\n"
