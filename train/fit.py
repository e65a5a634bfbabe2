"""`leukedge train`: fine-tune InceptionV3 in two stages and export model.keras with its card."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from leukedge import __version__
from leukedge.edge.card import ModelCard
from leukedge.edge.files import staged_dir, write_text_atomic
from leukedge.edge.card import card_path_for
from leukedge.evaluation import EvaluationError, ImageArrays, KerasScorer, decode_samples, evaluate
from leukedge.edge.metrics import choose_threshold
from leukedge.edge.preprocess import Preprocessing
from leukedge.reports.train import train_history_csv, train_plots

from .cells import measure_training_cells
from .config import TrainConfig, to_toml
from .datasets import Dataset, DatasetError, read_dataset
from .model import HeadConfig, build_inception_v3, set_trainable_from
from .pipeline import class_weights, make_dataset
from .preprocessing import resolve_preprocessing
from .splits import SPLIT_FILE, Split, make_split, read_split, subsample, write_split
from leukedge.tfcompat import tensorflow
from .weights import WeightsInfo, load_backbone_weights, plan_weights

RESUME_DIR = ".leukedge-resume"


def get_strategy(name: str):
    """The tf.distribute strategy named by --strategy: default, mirrored (all local GPUs), multiworker (needs
    TF_CONFIG; DatasetError without it), or auto (mirrored with more than one GPU, else default)."""
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


@dataclass
class TrainingRun:
    """One `leukedge train` run as it goes through its stages (see train): the plan (config, data, split,
    weights, preprocessing), the decoded parts, and the validation callback's state (stage, history rows,
    best F1, epoch and weights); `done` counts the epochs already run per stage (from resume state)."""

    cfg: TrainConfig
    out: Path
    ds: Dataset
    split: Split
    weights: WeightsInfo
    prep: Preprocessing
    positive: int  # index of the positive label in ds.labels
    train_samples: list  # split.parts["train"], subsampled to cfg.max_train_images
    t_start: float  # time.perf_counter() at the start
    arrays: dict[str, ImageArrays] = field(default_factory=dict)
    input_statistics: dict | None = None
    quality_skipped: list = field(default_factory=list)
    state: dict = field(default_factory=dict)
    done: dict = field(default_factory=lambda: {"head": 0, "finetune": 0})
    replicas: int = 1
    fit_seconds: float = 0.0

    @property
    def resume_dir(self) -> Path:
        return self.out / RESUME_DIR

    @property
    def head(self) -> HeadConfig:
        c = self.cfg
        return HeadConfig(c.dense_units, c.activation, c.dropout, c.l1, c.l2)


def _plan(data: str | Path, out: str | Path, cfg: TrainConfig, t_start: float) -> TrainingRun:
    """The run's plan: dataset and split (split_for), weights, preprocessing, the train samples used."""
    ds, split = split_for(data, cfg)
    info = plan_weights(cfg.weights)
    prep = resolve_preprocessing(cfg, info)
    return TrainingRun(cfg, Path(out), ds, split, info, prep, ds.labels.index(ds.positive_label),
                       subsample(split.parts["train"], cfg.max_train_images, cfg.seed), t_start)


def _announce(run: TrainingRun) -> None:
    """One line on stderr saying what is trained on, then the dataset's first problems as warnings."""
    ds, split, cfg = run.ds, run.split, run.cfg
    print(f"leukedge train: {ds.layout} data at {ds.root}; split '{split.rule}' "
          + ", ".join(f"{p}={len(v)}" for p, v in split.parts.items())
          + (f" (train subsampled to {len(run.train_samples)})"
             if len(run.train_samples) != len(split.parts["train"]) else "")
          + f"; weights: {run.weights.source}; {cfg.image_size}px", file=sys.stderr)
    for where, problem in ds.problems[:5]:  # e.g. images not used, or a `data crop` set nobody reviewed
        print(f"leukedge train: warning: {where}: {problem}", file=sys.stderr)
    if len(ds.problems) > 5:
        print(f"leukedge train: warning: {len(ds.problems) - 5} more dataset problems (leukedge data inspect)",
              file=sys.stderr)


def _decode_parts(run: TrainingRun) -> None:
    """Decode every part (train: the subsampled samples) into run.arrays and screen them
    (_screen_training_images: run.input_statistics, run.quality_skipped). Raises DatasetError for an
    unreadable image with cfg.strict, or a part left with one class."""
    cfg = run.cfg
    try:
        arrays = {"train": decode_samples(run.train_samples, run.prep, cfg.strict, what="train images")}
        for part in run.split.parts:
            if part != "train":
                arrays[part] = decode_samples(run.split.parts[part], run.prep, cfg.strict, what=f"{part} images")
    except EvaluationError as exc:  # --strict: an unreadable image is a dataset problem here
        raise DatasetError(str(exc)) from None
    run.input_statistics, run.quality_skipped = _screen_training_images(arrays, cfg)
    for part, arr in arrays.items():
        arr.part = part
        if len(np.unique(arr.labels)) < 2:
            raise DatasetError(f"{run.ds.root}: after skipping unreadable images, '{part}' has only one class")
    run.arrays = arrays


def _build_model(run: TrainingRun, strategy):
    """InceptionV3 with the configured head, built under the strategy, backbone weights loaded (run.weights
    becomes the loaded WeightsInfo)."""
    with strategy.scope():
        model = build_inception_v3(run.cfg.image_size, run.weights.last_pool, run.head, n_classes=len(run.ds.labels))
        run.weights = load_backbone_weights(model, run.weights)
    return model


def _resume_state(run: TrainingRun, resume: bool) -> None:
    """A fresh callback state in run.state, or with `resume` the one saved in out/.leukedge-resume (history,
    best F1, epoch and weights; run.done). Raises DatasetError when the saved state is for another split."""
    state = {"stage": "head", "history": [], "best_f1": -1.0, "best_epoch": 0, "best_weights": None,
             "positive_label": run.ds.positive_label, "split_sha256": run.split.file_list_sha256(run.ds)}
    run.state, run.done = state, {"head": 0, "finetune": 0}
    resume_dir = run.resume_dir
    if not (resume and (resume_dir / "state.json").exists()):
        return
    saved = json.loads((resume_dir / "state.json").read_text())
    if saved.get("split_sha256") != state["split_sha256"]:
        raise DatasetError(f"{resume_dir}: resume state is for a different data split; remove it to start over")
    state.update({k: saved[k] for k in ("history", "best_f1", "best_epoch")})
    run.done["head"] = sum(1 for h in saved["history"] if h["stage"] == "head")
    run.done["finetune"] = sum(1 for h in saved["history"] if h["stage"] == "finetune")
    with np.load(resume_dir / "best_weights.npz") as z:
        state["best_weights"] = [z[f"arr_{i}"] for i in range(len(z.files))]
    print(f"leukedge train: resuming after {len(saved['history'])} epochs", file=sys.stderr)


def _fit(run: TrainingRun, model, strategy, train_ds) -> None:
    """Stage 1 trains the head (cfg.epochs_head at cfg.lr_head), stage 2 fine-tunes from cfg.fine_tune_from
    (cfg.epochs, cosine decay from cfg.lr), each only past the epochs resume state already ran. Leaves the best
    weights (validation F1) in the model and the fitting time in run.fit_seconds (s)."""
    tf = tensorflow()
    cfg, state, done, resume_dir = run.cfg, run.state, run.done, run.resume_dir
    cw = class_weights(run.arrays["train"].labels) if cfg.class_weight else None
    verbose = 1 if sys.stdout.isatty() else 2
    callback = validation_f1_callback(run.arrays["validation"], run.prep, run.positive, cfg.batch_size, cfg.patience,
                                      state, resume_dir, run.ds.labels)

    def run_stage(stage: str, block: str | None, epochs: int, lr):
        if epochs <= done[stage]:
            return
        state["stage"] = stage
        with strategy.scope():
            set_trainable_from(model, block, train_batchnorm=run.weights.source == "none")
            model.compile(optimizer=tf.keras.optimizers.Adam(lr),
                          loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        if done[stage] and (resume_dir / "last.weights.h5").exists():
            model.load_weights(str(resume_dir / "last.weights.h5"))
        callback.wait = 0
        model.fit(train_ds, epochs=epochs, initial_epoch=done[stage], class_weight=cw,
                  callbacks=[callback], verbose=verbose)

    n_batches = int(np.ceil(len(run.arrays["train"].labels) / cfg.batch_size))
    t_fit = time.perf_counter()
    if done["finetune"] == 0:
        run_stage("head", None, cfg.epochs_head, cfg.lr_head)
    if cfg.fine_tune_from != "none" and cfg.epochs > 0:
        if state["best_weights"] is not None and done["finetune"] == 0:
            model.set_weights(state["best_weights"])
        schedule = tf.keras.optimizers.schedules.CosineDecay(cfg.lr, decay_steps=max(1, cfg.epochs * n_batches),
                                                             alpha=0.05)
        run_stage("finetune", cfg.fine_tune_from, cfg.epochs, schedule)
    run.fit_seconds = time.perf_counter() - t_fit
    if state["best_weights"] is not None:
        model.set_weights(state["best_weights"])


def _evaluate(run: TrainingRun, model) -> tuple[float, dict]:
    """The threshold chosen on validation (best F1, or subject to cfg.min_recall_all) and the metrics per part
    (binary reports at it, with 95 % intervals; test when the split has one)."""
    cfg, arrays, positive, labels = run.cfg, run.arrays, run.positive, run.ds.labels
    scorer = KerasScorer(model, run.prep, positive, batch_size=cfg.batch_size)
    p_val = scorer.p_positive(arrays["validation"].images)
    threshold = choose_threshold(arrays["validation"].labels, p_val, positive,
                                 min_recall=cfg.min_recall_all or None)
    metrics = {"validation": evaluate(p_val, arrays["validation"], threshold, labels, positive).report}
    metrics["validation"]["threshold_chosen_here"] = True
    metrics["validation_intervals"] = _intervals(arrays["validation"], p_val, threshold, positive, cfg.seed)
    if "test" in arrays:
        test_ev = evaluate(scorer, arrays["test"], threshold, labels, positive)
        metrics["test"] = test_ev.report
        metrics["test_intervals"] = _intervals(arrays["test"], test_ev.p, threshold, positive, cfg.seed)
    return threshold, metrics


def _timing(run: TrainingRun) -> dict:
    """The card's timing: wall and fitting seconds, epochs run, training images per second, replicas, best epoch."""
    epochs_run = len(run.state["history"])
    images_seen = epochs_run * len(run.arrays["train"].labels)
    fit_seconds = run.fit_seconds
    return {"wall_seconds": round(time.perf_counter() - run.t_start, 1), "fit_seconds": round(fit_seconds, 1),
            "epochs_run": epochs_run,
            "train_images_per_second": round(images_seen / fit_seconds, 2) if fit_seconds else None,
            "replicas": run.replicas, "best_epoch": run.state["best_epoch"]}


def _card(run: TrainingRun, threshold: float, metrics: dict, timing: dict) -> ModelCard:
    """model.keras's card: labels, preprocessing, threshold, provenance (versions, data, split, weights,
    architecture, config, threshold rule, timing), metrics, input statistics and the training cells' look."""
    tf = tensorflow()
    cfg, ds, info = run.cfg, run.ds, run.weights
    return ModelCard(
        labels=ds.labels, positive_label=ds.positive_label, preprocessing=run.prep,
        model_file="model.keras", model_format="keras", threshold=threshold,
        name=f"leukedge-inceptionv3-{cfg.image_size}", variant="float",
        provenance={
            "leukedge_version": __version__,
            "tensorflow_version": tf.__version__,
            "keras": {"flavour": "tf-keras", "version": _tf_keras_version(),
                      "opens_with": "tf-keras 2 with TF_USE_LEGACY_KERAS=1 (not Keras 3)"},
            "data": {"root": str(Path(ds.root).resolve()), "layout": ds.layout,
                     "skipped_images": [list(x) for a in run.arrays.values() for x in a.skipped],
                     "skipped_for_quality": run.quality_skipped},
            "split": run.split.describe(ds),
            "weights": info.to_dict(),
            "architecture": {"backbone": "InceptionV3", "last_block_pool": info.last_pool,
                             "head": run.head.to_dict()},
            "config": cfg.to_dict(),
            "threshold_rule": (f"best F1 subject to {ds.positive_label} recall >= {cfg.min_recall_all}"
                               if cfg.min_recall_all else f"best F1 for {ds.positive_label} on validation"),
            "timing": timing,
        },
        metrics=metrics,
        input_statistics=run.input_statistics,
        cells=measure_training_cells([s.path for s in run.split.parts["train"]], root=ds.root, seed=cfg.seed),
    )


def _write(run: TrainingRun, model, card: ModelCard, metrics: dict) -> None:
    """Everything into run.out, all or nothing (staged_dir): model.keras and its card, split.json, history.csv,
    config.toml and the plots (leukedge.reports.train)."""
    with staged_dir(run.out) as stage:
        export_model(model, stage / "model.keras")
        card.bind(stage / "model.keras")
        card.save(card_path_for(stage / "model.keras"))
        write_split(run.split, run.ds, stage / SPLIT_FILE)
        write_text_atomic(stage / "history.csv", train_history_csv(run.state["history"]))
        write_text_atomic(stage / "config.toml", to_toml(run.cfg.to_dict()))
        train_plots(stage, run.state["history"], metrics["validation"], run.ds.labels)


def _print_result(run: TrainingRun, threshold: float, metrics: dict, timing: dict) -> None:
    """The validation (and held-out test) figures on stderr, two lines."""
    pos, v = run.ds.positive_label, metrics["validation"]
    print(f"leukedge train: wrote {run.out}/model.keras (card model.keras.json, split.json); validation F1({pos})="
          f"{v['f1_positive']:.4f} sensitivity={v['sensitivity']:.4f} weighted F1={v['weighted_f1']:.4f} at threshold "
          f"{threshold:.4f} (chosen on these validation images: optimistic) ({timing['wall_seconds']} s)", file=sys.stderr)
    if "test" in metrics:
        t, ti = metrics["test"], metrics["test_intervals"]
        print(f"leukedge train: held-out test F1({pos})={t['f1_positive']:.4f} "
              f"[{ti['f1_positive']['low']:.3f}, {ti['f1_positive']['high']:.3f}] sensitivity={t['sensitivity']:.4f} "
              f"[{ti['sensitivity']['low']:.3f}, {ti['sensitivity']['high']:.3f}] (95 % CI)", file=sys.stderr)


def train(data: str | Path, out: str | Path, cfg: TrainConfig, resume: bool = False) -> dict:
    """Fine-tune InceptionV3 on a dataset: the `leukedge train` step.

    data: a dataset folder (C-NMC release layout or root/<class>/<images>). out: the run folder.
    cfg: validated TrainConfig (image size in px, epochs, learning rates, split rule...).
    Writes into `out` (all or nothing): model.keras, its card model.keras.json, split.json (the split
    every later step reads), history.csv, config.toml, training_curves.png, confusion_matrix.png.
    Returns {"out", "metrics" (per part: binary report at the chosen threshold), "threshold", "timing", "card"}.
    Raises DatasetError (unusable data or split), ConfigError, EvaluationError (no readable images).

    Stages (a TrainingRun carries the state): plan, decode and screen the parts, build the model, resume
    state, fit (head, then fine-tuning), evaluate (threshold on validation), card, write.
    """
    t_start = time.perf_counter()
    tf = tensorflow()
    tf.keras.utils.set_random_seed(cfg.seed)
    run = _plan(data, out, cfg, t_start)
    _announce(run)
    _decode_parts(run)
    strategy = get_strategy(cfg.strategy)
    run.replicas = strategy.num_replicas_in_sync
    model = _build_model(run, strategy)
    train_ds = make_dataset(run.arrays["train"], run.prep, cfg.batch_size, training=True, augment=cfg.augment,
                            seed=cfg.seed)
    _resume_state(run, resume)
    _fit(run, model, strategy, train_ds)
    threshold, metrics = _evaluate(run, model)
    timing = _timing(run)
    card = _card(run, threshold, metrics, timing)
    _write(run, model, card, metrics)
    shutil.rmtree(run.resume_dir, ignore_errors=True)
    _print_result(run, threshold, metrics, timing)
    return {"out": str(run.out), "metrics": metrics, "threshold": threshold, "timing": timing, "card": card.to_dict()}
