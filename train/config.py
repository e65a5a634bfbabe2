"""Training configuration: typed keys with ranges, loadable from TOML, overridable key=value."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from leukedge.options import ConfigError, coerce, load_options, option, parse_overrides  # noqa: F401 - re-exported
from leukedge.options import to_toml as _to_toml
from leukedge.options import validate as _validate


@dataclass
class TrainConfig:
    """Options of `leukedge train` (also its TOML [train] table and --set keys); each field's help is its flag's."""

    image_size: int = option(224, "Input size in px.")
    weights: str = option("imagenet", "Backbone weights: imagenet | keras-imagenet | none | PATH.")
    batch_size: int = option(32, "Global batch size.")
    epochs_head: int = option(2, "Head-only epochs (stage 1, backbone frozen).")
    epochs: int = option(4, "Fine-tuning epochs (stage 2, from --fine-tune-from).")
    fine_tune_from: str = option("mixed9", "Block to fine-tune from: mixed0..mixed10, all, none (skip stage 2).")
    lr_head: float = option(1e-3, "Learning rate of stage 1.")
    lr: float = option(1e-4, "Learning rate of stage 2.")
    dense_units: int = option(256, "Units of the head's hidden Dense layer.")
    activation: str = option("relu", "Activation of the head's hidden Dense layer.")
    dropout: float = option(0.5, "Dropout before the output layer.")
    l1: float = option(1e-5, "L1 weight penalty of the head.")
    l2: float = option(1e-4, "L2 weight penalty of the head.")
    patience: int = option(3, "Early-stopping patience in epochs (validation loss).")
    seed: int = option(0, "Seed of the split, subsample, augmentation and initialisation.")
    split: str = option("auto", "Split rule (auto: official for C-NMC, else subject or random).")
    val_fraction: float = option(0.2, "Validation fraction (subject or random split).")
    test_fraction: float = option(0.0, "Held-out test fraction.")
    test_fold: str = option("", "C-NMC official split: hold this fold out as the test part.")
    positive: str = option("", "Positive class (plain class-folder layout).")
    min_recall_all: float = option(0.0, "Choose the threshold that keeps positive-class sensitivity >= R "
                                        "(0: the best-F1 threshold).")
    augment: bool = option(True, "Random flips and rotations of training images.")
    class_weight: bool = option(True, "Weight the loss by inverse class frequency.")
    strategy: str = option("auto", "tf.distribute strategy.")
    strict: bool = option(False, "Fail on the first unreadable image instead of skipping it.")
    max_train_images: int = option(0, "Stratified subsample of the training split (quick runs; 0 = all).")
    resize: str = option("bilinear", "Resize filter of every image (the device uses the same).")
    split_file: str = option("", "Train on this split.json (e.g. tune's) instead of making a split.")
    strict_quality: bool = option(False, "Refuse training images that fail the quality gate instead of skipping "
                                         "them (with a count).")
    bit_depth: int = option(0, "Significant bits of integer images (e.g. 12 for 12-bit camera data in 16-bit "
                               "TIFFs); 0 = as the file says.")

    RANGES = {
        "image_size": (75, 1024), "batch_size": (1, 4096), "epochs_head": (0, 1000), "epochs": (0, 1000),
        "lr_head": (1e-7, 1.0), "lr": (1e-8, 1.0), "dense_units": (1, 8192), "dropout": (0.0, 0.95),
        "l1": (0.0, 1.0), "l2": (0.0, 1.0), "patience": (1, 1000), "val_fraction": (0.01, 0.9),
        "test_fraction": (0.0, 0.9), "min_recall_all": (0.0, 1.0), "max_train_images": (0, 10**8),
        "bit_depth": (0, 32),
    }
    CHOICES = {
        "split": ("auto", "official", "subject", "random"),
        "strategy": ("auto", "default", "mirrored", "multiworker"),
        "activation": ("relu", "elu", "selu", "gelu", "swish", "tanh"),
        "resize": ("nearest", "bilinear", "bicubic", "lanczos", "area"),
    }

    def validate(self) -> "TrainConfig":
        """Check every key against RANGES and CHOICES; returns self; raises ConfigError naming the key."""
        return _validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        return _coerce_all(dataclasses.replace(self, **changes))

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def _coerce_all(cfg: TrainConfig) -> TrainConfig:
    for f in fields(cfg):
        setattr(cfg, f.name, coerce(TrainConfig, f.name, getattr(cfg, f.name)))
    return cfg.validate()


@dataclass
class TuneOptions:
    """Options of `leukedge tune` beyond the training config it searches around; each field's help is its flag's."""

    trials: int = option(12, "Trials of the random search.")
    max_seconds: int = option(0, "Time budget in seconds (0 = none).")
    # --trial-epochs: `--epochs` means stage-2 fine-tuning epochs in `train`; kept here as an alias
    trial_epochs: int = option(20, "Epochs per trial (the head on cached features).", flags=("--trial-epochs", "--epochs"))

    RANGES = {"trials": (1, 10000), "max_seconds": (0, 10**8), "trial_epochs": (1, 10000)}


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """TrainConfig from a TOML file's [train] table (or top level) plus key=value overrides; raises ConfigError."""
    return load_options(TrainConfig, path, overrides, table="train")


def to_toml(values: dict[str, Any], table: str = "train") -> str:
    """The effective config as TOML (tomli-w: any string, a Windows path included, round-trips)."""
    return _to_toml(values, table)
