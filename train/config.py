"""Training configuration: typed keys with ranges, loadable from TOML, overridable key=value."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from leukedge.options import ConfigError, coerce, load_options, parse_overrides  # noqa: F401 - re-exported
from leukedge.options import to_toml as _to_toml
from leukedge.options import validate as _validate


@dataclass
class TrainConfig:
    image_size: int = 224
    weights: str = "imagenet"  # imagenet | keras-imagenet | none | PATH
    batch_size: int = 32
    epochs_head: int = 2  # stage 1: head only, backbone frozen
    epochs: int = 4  # stage 2: fine-tune from `fine_tune_from`
    fine_tune_from: str = "mixed9"  # block name, "all", or "none" to skip stage 2
    lr_head: float = 1e-3
    lr: float = 1e-4
    dense_units: int = 256
    activation: str = "relu"
    dropout: float = 0.5
    l1: float = 1e-5
    l2: float = 1e-4
    patience: int = 3
    seed: int = 0
    split: str = "auto"  # auto | official | subject | random
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    test_fold: str = ""
    positive: str = ""
    min_recall_all: float = 0.0  # 0 = choose the best-F1 threshold
    augment: bool = True
    class_weight: bool = True
    strategy: str = "auto"  # auto | default | mirrored | multiworker
    strict: bool = False
    max_train_images: int = 0  # 0 = all; else a stratified subsample for quick runs
    resize: str = "bilinear"
    split_file: str = ""
    strict_quality: bool = False
    bit_depth: int = 0  # significant bits of integer images when files do not say (e.g. 12 in 16-bit TIFFs); 0 = the file's  # refuse (instead of skip) training images that fail the quality gate  # a split.json (e.g. from `leukedge tune`) to train on instead of making a split

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


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """TrainConfig from a TOML file's [train] table (or top level) plus key=value overrides; raises ConfigError."""
    return load_options(TrainConfig, path, overrides, table="train")


def to_toml(values: dict[str, Any], table: str = "train") -> str:
    """The effective config as TOML (tomli-w: any string, a Windows path included, round-trips)."""
    return _to_toml(values, table)
