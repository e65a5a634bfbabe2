"""`leukedge train`: fine-tune InceptionV3 in two stages and export model.keras with its card."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from leukedge import __version__
from leukedge.edge.card import ModelCard
from leukedge.edge.files import staged_dir, write_text_atomic
from leukedge.edge.card import card_path_for
from leukedge.evaluation import EvaluationError, ImageArrays, KerasScorer, decode_samples, evaluate
from leukedge.edge.metrics import choose_threshold

from .cells import measure_training_cells
from .config import TrainConfig, to_toml
from .datasets import Dataset, DatasetError, read_dataset
from .model import HeadConfig, build_inception_v3, set_trainable_from
from .pipeline import class_weights, make_dataset
from .preprocessing import resolve_preprocessing
from .splits import SPLIT_FILE, Split, make_split, read_split, subsample, write_split
from leukedge.tfcompat import tensorflow
from .weights import load_backbone_weights, plan_weights

RESUME_DIR = ".leukedge-resume"


def get_strategy(name: str):
    tf = tensorflow()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise DatasetError("--strategy multiworker needs TF_CONFIG describing the cluster (see README)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


def validation_f1_callback(*args, **kwargs):
    """Keras callback: F1 of the positive class on the validation split after every epoch;
    keeps the best weights, stops after `patience` epochs without improvement, and saves
    resume state. (Defined inside a function so importing this module needs no TensorFlow.)"""
    tf = tensorflow()

    class _Callback(tf.keras.callbacks.Callback):
        def __init__(self, val: ImageArrays, prep, positive, batch_size, patience, state, resume_dir, labels):
            super().__init__()
            self.val, self.prep, self.positive, self.batch_size = val, prep, positive, batch_size
            self.labels = labels
            self.patience, self.state, self.resume_dir = patience, state, resume_dir
            self.wait = 0

        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            ev = evaluate(KerasScorer(self.model, self.prep, self.positive, batch_size=self.batch_size), self.val,
                          0.5, self.labels, self.positive)
            rep = ev.report
            logs["val_f1_pos"] = rep["f1_positive"]
            logs["val_recall_pos"] = rep["sensitivity"]
            st = self.state
            row = {"stage": st["stage"], "epoch": len(st["history"]) + 1,
                   **{k: float(v) for k, v in logs.items()}}
            st["history"].append(row)
            print(f"  validation: F1({st['positive_label']})={rep['f1_positive']:.4f} "
                  f"recall={rep['sensitivity']:.4f}", file=sys.stderr, flush=True)
            if rep["f1_positive"] > st["best_f1"] + 1e-6 or st["best_weights"] is None:
                st["best_f1"] = rep["f1_positive"]
                st["best_weights"] = self.model.get_weights()
                st["best_epoch"] = row["epoch"]
                self.wait = 0
            else:
                self.wait += 1
                if self.wait >= self.patience:
                    print(f"  early stop: no F1 gain in {self.patience} epochs", file=sys.stderr)
                    self.model.stop_training = True
            if self.resume_dir is not None:
                self.resume_dir.mkdir(parents=True, exist_ok=True)
                self.model.save_weights(str(self.resume_dir / "last.weights.h5"))
                np.savez(self.resume_dir / "best_weights.npz", *st["best_weights"])
                write_text_atomic(self.resume_dir / "state.json", json.dumps(
                    {k: v for k, v in st.items() if k != "best_weights"} | {"stage_epoch": epoch + 1}))

    return _Callback(*args, **kwargs)


def export_model(model, path: Path) -> None:
    """Save weights and architecture only: an uncompiled copy carries no optimizer state (half the size)."""
    tf = tensorflow()
    clean = tf.keras.models.clone_model(model)
    clean.set_weights(model.get_weights())
    clean.save(path)


def _write_plots(out: Path, history: list[dict], report: dict, labels: list[str]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    if history:
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
        fig.tight_layout(); fig.savefig(out / "training_curves.png", dpi=110); plt.close(fig)
        written.append("training_curves.png")
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
    fig.tight_layout(); fig.savefig(out / "confusion_matrix.png", dpi=110); plt.close(fig)
    written.append("confusion_matrix.png")
    return written


def _history_csv(history: list[dict]) -> str:
    keys: list[str] = []
    for h in history:
        keys.extend(k for k in h if k not in keys)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    return buf.getvalue()


def _screen_training_images(arrays: dict, cfg: TrainConfig) -> tuple[dict | None, list]:
    """Reference statistics of the training images (the card's `input_statistics`, which the device's
    quality and out-of-distribution checks compare against) and the quality gate on every part
    (edge.quality.screen_training_images: each image judged against the others that pass, so a few
    broken images cannot widen the range they are judged by). Quality-flagged images (constant, far
    darker/brighter than the rest, mostly saturated) are dropped with a count, or refused with
    `strict_quality`; out-of-distribution flags drop nothing (about 1 % of any training set sits at the
    edge of its own range). Returns (statistics or None when fewer than 20 images, [[path, reason], ...] dropped).
    """
    from leukedge.edge.quality import screen_training_images

    ref = None
    dropped = []
    for part, arr in list(arrays.items()):
        if len(arr.labels) < 20:
            continue
        keep, flags, part_ref = screen_training_images(arr.images)
        if part == "train":
            ref = part_ref
        bad = {i: next(f.message for f in fl if f.kind == "quality") for i, fl in enumerate(flags) if not keep[i]}
        if not bad:
            continue
        if cfg.strict_quality:
            i, why = next(iter(bad.items()))
            raise DatasetError(f"{arr.paths[i]}: {why} (--strict-quality; {len(bad)} such image(s) in '{part}')")
        dropped += [[arr.paths[i], why] for i, why in bad.items()]
        arrays[part] = dataclasses.replace(arr, images=arr.images[keep], labels=arr.labels[keep],
                                           paths=[p for p, k in zip(arr.paths, keep) if k],
                                           subjects=[s for s, k in zip(arr.subjects, keep) if k])
        print(f"leukedge train: skipped {len(bad)} {part} image(s) that fail the quality gate "
              f"(e.g. {arr.paths[next(iter(bad))]}: {next(iter(bad.values()))})", file=sys.stderr)
    return ref, dropped


def _tf_keras_version() -> str:
    try:
        from importlib.metadata import version

        return version("tf-keras")
    except Exception:  # noqa: BLE001 - metadata missing: say unknown, do not fail a finished training
        return "unknown"


def _intervals(arrays: ImageArrays, p: np.ndarray, threshold: float, positive: int, seed: int) -> dict:
    """95 % intervals of one part's figures (leukedge.edge.bootstrap.screening_intervals; subjects resampled when known)."""
    from leukedge.edge import bootstrap

    groups = arrays.subjects if arrays.subjects and all(arrays.subjects) else None
    return bootstrap.screening_intervals(arrays.labels, p, threshold, groups=groups, positive=positive, seed=seed)


def split_for(data: str | Path, cfg: TrainConfig) -> tuple[Dataset, Split]:
    """The dataset and its split for a training config: `cfg.split_file` (e.g. tune's split.json) when set,
    else a new split by `cfg.split`. Raises DatasetError for unusable data."""
    if cfg.split_file:
        ds, split, _ = read_split(cfg.split_file, data)
        return ds, split
    ds = read_dataset(data, positive=cfg.positive or None)
    split = make_split(ds, None if cfg.split == "auto" else cfg.split, seed=cfg.seed,
                       val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                       test_fold=cfg.test_fold or None)
    return ds, split


def train(data: str | Path, out: str | Path, cfg: TrainConfig, resume: bool = False) -> dict:
    """Fine-tune InceptionV3 on a dataset: the `leukedge train` step.

    data: a dataset folder (C-NMC release layout or root/<class>/<images>). out: the run folder.
    cfg: validated TrainConfig (image size in px, epochs, learning rates, split rule...).
    Writes into `out` (all or nothing): model.keras, its card model.keras.json, split.json (the split
    every later step reads), history.csv, config.toml, training_curves.png, confusion_matrix.png.
    Returns {"out", "metrics" (per part: binary report at the chosen threshold), "threshold", "timing", "card"}.
    Raises DatasetError (unusable data or split), ConfigError, EvaluationError (no readable images).
    """
    t_start = time.perf_counter()
    tf = tensorflow()
    out = Path(out)
    tf.keras.utils.set_random_seed(cfg.seed)
    ds, split = split_for(data, cfg)
    info = plan_weights(cfg.weights)
    prep = resolve_preprocessing(cfg, info)
    positive = ds.labels.index(ds.positive_label)
    train_samples = subsample(split.parts["train"], cfg.max_train_images, cfg.seed)

    print(f"leukedge train: {ds.layout} data at {ds.root}; split '{split.rule}' "
          + ", ".join(f"{p}={len(v)}" for p, v in split.parts.items())
          + (f" (train subsampled to {len(train_samples)})" if len(train_samples) != len(split.parts["train"]) else "")
          + f"; weights: {info.source}; {cfg.image_size}px", file=sys.stderr)
    for where, problem in ds.problems[:5]:  # e.g. images not used, or a `data crop` set nobody reviewed
        print(f"leukedge train: warning: {where}: {problem}", file=sys.stderr)
    if len(ds.problems) > 5:
        print(f"leukedge train: warning: {len(ds.problems) - 5} more dataset problems (leukedge data inspect)",
              file=sys.stderr)
    try:
        arrays = {"train": decode_samples(train_samples, prep, cfg.strict, what="train images")}
        for part in split.parts:
            if part != "train":
                arrays[part] = decode_samples(split.parts[part], prep, cfg.strict, what=f"{part} images")
    except EvaluationError as exc:  # --strict: an unreadable image is a dataset problem here
        raise DatasetError(str(exc)) from None
    input_statistics, quality_skipped = _screen_training_images(arrays, cfg)
    for part, arr in arrays.items():
        arr.part = part
        if len(np.unique(arr.labels)) < 2:
            raise DatasetError(f"{ds.root}: after skipping unreadable images, '{part}' has only one class")

    strategy = get_strategy(cfg.strategy)
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        model = build_inception_v3(cfg.image_size, info.last_pool,
                                   HeadConfig(cfg.dense_units, cfg.activation, cfg.dropout, cfg.l1, cfg.l2),
                                   n_classes=len(ds.labels))
        info = load_backbone_weights(model, info)

    train_ds = make_dataset(arrays["train"], prep, cfg.batch_size, training=True, augment=cfg.augment, seed=cfg.seed)
    cw = class_weights(arrays["train"].labels) if cfg.class_weight else None
    resume_dir = out / RESUME_DIR
    state = {"stage": "head", "history": [], "best_f1": -1.0, "best_epoch": 0, "best_weights": None,
             "positive_label": ds.positive_label, "split_sha256": split.file_list_sha256(ds)}
    done = {"head": 0, "finetune": 0}
    if resume and (resume_dir / "state.json").exists():
        saved = json.loads((resume_dir / "state.json").read_text())
        if saved.get("split_sha256") != state["split_sha256"]:
            raise DatasetError(f"{resume_dir}: resume state is for a different data split; remove it to start over")
        state.update({k: saved[k] for k in ("history", "best_f1", "best_epoch")})
        done["head"] = sum(1 for h in saved["history"] if h["stage"] == "head")
        done["finetune"] = sum(1 for h in saved["history"] if h["stage"] == "finetune")
        with np.load(resume_dir / "best_weights.npz") as z:
            state["best_weights"] = [z[f"arr_{i}"] for i in range(len(z.files))]
        print(f"leukedge train: resuming after {len(saved['history'])} epochs", file=sys.stderr)
    verbose = 1 if sys.stdout.isatty() else 2
    callback = validation_f1_callback(arrays["validation"], prep, positive, cfg.batch_size, cfg.patience, state, resume_dir,
                                      ds.labels)

    def run_stage(stage: str, block: str | None, epochs: int, lr):
        if epochs <= done[stage]:
            return
        state["stage"] = stage
        with strategy.scope():
            set_trainable_from(model, block, train_batchnorm=info.source == "none")
            model.compile(optimizer=tf.keras.optimizers.Adam(lr),
                          loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        if done[stage] and (resume_dir / "last.weights.h5").exists():
            model.load_weights(str(resume_dir / "last.weights.h5"))
        callback.wait = 0
        model.fit(train_ds, epochs=epochs, initial_epoch=done[stage], class_weight=cw,
                  callbacks=[callback], verbose=verbose)

    n_batches = int(np.ceil(len(arrays["train"].labels) / cfg.batch_size))
    t_fit = time.perf_counter()
    if done["finetune"] == 0:
        run_stage("head", None, cfg.epochs_head, cfg.lr_head)
    if cfg.fine_tune_from != "none" and cfg.epochs > 0:
        if state["best_weights"] is not None and done["finetune"] == 0:
            model.set_weights(state["best_weights"])
        schedule = tf.keras.optimizers.schedules.CosineDecay(cfg.lr, decay_steps=max(1, cfg.epochs * n_batches),
                                                             alpha=0.05)
        run_stage("finetune", cfg.fine_tune_from, cfg.epochs, schedule)
    fit_seconds = time.perf_counter() - t_fit
    if state["best_weights"] is not None:
        model.set_weights(state["best_weights"])

    scorer = KerasScorer(model, prep, positive, batch_size=cfg.batch_size)
    p_val = scorer.p_positive(arrays["validation"].images)
    threshold = choose_threshold(arrays["validation"].labels, p_val, positive,
                                 min_recall=cfg.min_recall_all or None)
    metrics = {"validation": evaluate(p_val, arrays["validation"], threshold, ds.labels, positive).report}
    metrics["validation"]["threshold_chosen_here"] = True
    metrics["validation_intervals"] = _intervals(arrays["validation"], p_val, threshold, positive, cfg.seed)
    if "test" in arrays:
        test_ev = evaluate(scorer, arrays["test"], threshold, ds.labels, positive)
        metrics["test"] = test_ev.report
        metrics["test_intervals"] = _intervals(arrays["test"], test_ev.p, threshold, positive, cfg.seed)
    epochs_run = len(state["history"])
    images_seen = epochs_run * len(arrays["train"].labels)
    timing = {"wall_seconds": round(time.perf_counter() - t_start, 1), "fit_seconds": round(fit_seconds, 1),
              "epochs_run": epochs_run, "train_images_per_second": round(images_seen / fit_seconds, 2) if fit_seconds else None,
              "replicas": replicas, "best_epoch": state["best_epoch"]}

    card = ModelCard(
        labels=ds.labels, positive_label=ds.positive_label, preprocessing=prep,
        model_file="model.keras", model_format="keras", threshold=threshold,
        name=f"leukedge-inceptionv3-{cfg.image_size}", variant="float",
        provenance={
            "leukedge_version": __version__,
            "tensorflow_version": tf.__version__,
            "keras": {"flavour": "tf-keras", "version": _tf_keras_version(),
                      "opens_with": "tf-keras 2 with TF_USE_LEGACY_KERAS=1 (not Keras 3)"},
            "data": {"root": str(Path(ds.root).resolve()), "layout": ds.layout,
                     "skipped_images": [list(x) for a in arrays.values() for x in a.skipped],
                     "skipped_for_quality": quality_skipped},
            "split": split.describe(ds),
            "weights": info.to_dict(),
            "architecture": {"backbone": "InceptionV3", "last_block_pool": info.last_pool,
                             "head": HeadConfig(cfg.dense_units, cfg.activation, cfg.dropout, cfg.l1, cfg.l2).to_dict()},
            "config": cfg.to_dict(),
            "threshold_rule": (f"best F1 subject to {ds.positive_label} recall >= {cfg.min_recall_all}"
                               if cfg.min_recall_all else f"best F1 for {ds.positive_label} on validation"),
            "timing": timing,
        },
        metrics=metrics,
        input_statistics=input_statistics,
        cells=measure_training_cells([s.path for s in split.parts["train"]], root=ds.root, seed=cfg.seed),
    )
    with staged_dir(out) as stage:
        export_model(model, stage / "model.keras")
        card.bind(stage / "model.keras")
        card.save(card_path_for(stage / "model.keras"))
        write_split(split, ds, stage / SPLIT_FILE)
        write_text_atomic(stage / "history.csv", _history_csv(state["history"]))
        write_text_atomic(stage / "config.toml", to_toml(cfg.to_dict()))
        _write_plots(stage, state["history"], metrics["validation"], ds.labels)
    import shutil

    shutil.rmtree(resume_dir, ignore_errors=True)
    v = metrics["validation"]
    print(f"leukedge train: wrote {out}/model.keras (card model.keras.json, split.json); validation F1({ds.positive_label})="
          f"{v['f1_positive']:.4f} sensitivity={v['sensitivity']:.4f} weighted F1={v['weighted_f1']:.4f} at threshold "
          f"{threshold:.4f} (chosen on these validation images: optimistic) ({timing['wall_seconds']} s)", file=sys.stderr)
    if "test" in metrics:
        t, ti = metrics["test"], metrics["test_intervals"]
        print(f"leukedge train: held-out test F1({ds.positive_label})={t['f1_positive']:.4f} "
              f"[{ti['f1_positive']['low']:.3f}, {ti['f1_positive']['high']:.3f}] sensitivity={t['sensitivity']:.4f} "
              f"[{ti['sensitivity']['low']:.3f}, {ti['sensitivity']['high']:.3f}] (95 % CI)", file=sys.stderr)
    return {"out": str(out), "metrics": metrics, "threshold": threshold, "timing": timing, "card": card.to_dict()}
