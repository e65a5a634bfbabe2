"""`leukedge tune`: search head hyperparameters on cached backbone features, scored by validation F1.

The backbone is run once over the training and validation images; each trial then fits
only the head (Dense + dropout + softmax) on those features, so a trial costs seconds,
not an epoch of InceptionV3. The search is a seeded random search over the space the
reference work tuned (L2, L1, dropout, dense units, activation) plus the learning rate.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from leukedge.edge.files import staged_dir, write_text_atomic
from leukedge.edge.metrics import report_at_threshold

from .config import ConfigError, TrainConfig, to_toml
from .datasets import read_dataset
from .model import build_inception_v3
from .pipeline import class_weights, decode_samples, make_dataset
from .preprocessing import resolve_preprocessing
from .splits import SPLIT_FILE, write_split
from leukedge.tfcompat import tensorflow
from .weights import load_backbone_weights, plan_weights

SPACE = {  # key: (kind, low, high) or (kind, choices); the same keys as TrainConfig
    "l2": ("log", 1e-6, 1e-2),
    "l1": ("log", 1e-7, 1e-3),
    "dropout": ("linear", 0.1, 0.7),
    "dense_units": ("choice", [64, 128, 256, 512]),
    "activation": ("choice", ["relu", "elu", "swish"]),
    "lr_head": ("log", 1e-4, 1e-2),
}


def _hp_values(hp) -> dict:
    """Declare SPACE on a KerasTuner HyperParameters object and return this trial's values."""
    out = {}
    for key, spec in SPACE.items():
        if spec[0] == "choice":
            out[key] = hp.Choice(key, spec[1])
        else:
            out[key] = hp.Float(key, spec[1], spec[2], sampling=spec[0])
    return out


def _features(data, cfg: TrainConfig):
    from .fit import split_for

    tf = tensorflow()
    ds, split = split_for(data, cfg)
    info = plan_weights(cfg.weights)
    prep = resolve_preprocessing(cfg, info)
    backbone = build_inception_v3(cfg.image_size, info.last_pool, backbone_only=True)
    load_backbone_weights(backbone, info)
    feats = {}
    for part in ("train", "validation"):
        arr = decode_samples(split.parts[part], prep, cfg.strict, what=f"{part} images")
        x = backbone.predict(make_dataset(arr, prep, cfg.batch_size, training=False), verbose=0)
        feats[part] = (x.astype(np.float32), arr.labels)
    del tf
    return ds, split, feats


def run_trial(params: dict, feats, positive: int, epochs: int, seed: int) -> float:
    """Fit the head alone on cached features; the best validation F1 over its epochs."""
    tf = tensorflow()
    tf.keras.utils.set_random_seed(seed)
    xtr, ytr = feats["train"]
    xva, yva = feats["validation"]
    L = tf.keras.layers
    reg = tf.keras.regularizers.L1L2(l1=params["l1"], l2=params["l2"])
    inp = L.Input((xtr.shape[1],))
    h = L.Dense(int(params["dense_units"]), activation=params["activation"], kernel_regularizer=reg)(inp)
    h = L.Dropout(params["dropout"])(h)
    out = L.Dense(2, activation="softmax")(h)
    model = tf.keras.Model(inp, out)
    model.compile(optimizer=tf.keras.optimizers.Adam(params["lr_head"]), loss="sparse_categorical_crossentropy")
    best = 0.0
    for _ in range(epochs):
        model.fit(xtr, ytr, batch_size=32, epochs=1, verbose=0, class_weight=class_weights(ytr))
        p = model.predict(xva, batch_size=256, verbose=0)[:, positive]
        best = max(best, report_at_threshold(yva, p, 0.5, positive=positive)["f1_positive"])
    return best


def _keras_tuner():
    try:
        import keras_tuner
    except ImportError:
        raise ConfigError("leukedge tune needs KerasTuner: pip install 'leukedge[tune]'") from None
    return keras_tuner


def tune(data, out, cfg: TrainConfig, trials: int = 12, max_seconds: int = 0, epochs: int = 20) -> dict:
    """Random search over the head's hyperparameters on cached backbone features: `leukedge tune`.

    data: dataset folder; out: folder for best.toml (a [train] config that points train at the same
    split), split.json (the split the trials used), trials.json, trials.md. trials: at most this many;
    max_seconds: time budget (0 = none); epochs: per trial. Returns {"best", "trials"}.
    Raises DatasetError, ConfigError (no trial finished in the budget).
    """
    t0 = time.perf_counter()
    ds, split, feats = _features(data, cfg)
    positive = ds.labels.index(ds.positive_label)
    kt = _keras_tuner()
    rows: list[dict] = []
    print(f"leukedge tune: up to {trials} KerasTuner trials on {len(feats['train'][1])} train / "
          f"{len(feats['validation'][1])} validation feature vectors", file=sys.stderr)

    class HeadSearch(kt.RandomSearch):
        """Each trial fits the head on cached features with tf.keras and reports validation F1."""

        def run_trial(self, trial, *args, **kwargs):
            params = _hp_values(trial.hyperparameters)
            f1 = run_trial(params, feats, positive, epochs, cfg.seed + len(rows))
            rows.append({"trial": len(rows) + 1, "val_f1": f1, **params})
            print(f"  trial {len(rows):3d}: F1={f1:.4f}  " + "  ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()), file=sys.stderr)
            if max_seconds and time.perf_counter() - t0 > max_seconds:
                print(f"leukedge tune: time budget of {max_seconds} s reached after {len(rows)} trials", file=sys.stderr)
                self.oracle.max_trials = len(self.oracle.trials)  # the oracle creates no further trial
            return {"val_f1": f1}

    with tempfile.TemporaryDirectory(prefix="leukedge-tune-") as workdir:
        tuner = HeadSearch(hypermodel=None, objective=kt.Objective("val_f1", direction="max"), max_trials=trials,
                           seed=cfg.seed, directory=workdir, project_name="head", overwrite=True)
        tuner.search_space_summary = lambda *a, **k: None
        _hp_values(tuner.oracle.hyperparameters)
        tuner.search()
    if not rows:
        raise ConfigError(f"no trial finished inside the time budget of {max_seconds} s")
    best = max(rows, key=lambda r: r["val_f1"])
    best_cfg = {**cfg.to_dict(), **{k: best[k] for k in SPACE},
                "split_file": str((Path(out) / SPLIT_FILE).resolve())}
    header = ["trial", "val_f1", *SPACE]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in sorted(rows, key=lambda r: -r["val_f1"]):
        table.append("| " + " | ".join(f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in header) + " |")
    with staged_dir(out) as stage:
        write_text_atomic(stage / "best.toml", f"# leukedge tune: best of {len(rows)} trials, validation F1 "
                                                f"{best['val_f1']:.4f}\n" + to_toml(best_cfg))
        write_text_atomic(stage / "trials.json", json.dumps(rows, indent=2) + "\n")
        write_text_atomic(stage / "trials.md", "\n".join(table) + "\n")
        write_split(split, ds, stage / SPLIT_FILE)
    print("\n".join(table))
    print(f"leukedge tune: best validation F1 {best['val_f1']:.4f}; config written to {Path(out) / 'best.toml'} "
          f"(use: leukedge train DATA --config {Path(out) / 'best.toml'})", file=sys.stderr)
    return {"best": best, "trials": rows}
