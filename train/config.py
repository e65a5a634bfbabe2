"""Training configuration: typed keys with ranges, loadable from TOML, overridable key=value."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints

from leukedge.edge.errors import LeukedgeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(LeukedgeError, ValueError):
    pass


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

    RANGES = {
        "image_size": (75, 1024), "batch_size": (1, 4096), "epochs_head": (0, 1000), "epochs": (0, 1000),
        "lr_head": (1e-7, 1.0), "lr": (1e-8, 1.0), "dense_units": (1, 8192), "dropout": (0.0, 0.95),
        "l1": (0.0, 1.0), "l2": (0.0, 1.0), "patience": (1, 1000), "val_fraction": (0.01, 0.9),
        "test_fraction": (0.0, 0.9), "min_recall_all": (0.0, 1.0), "max_train_images": (0, 10**8),
    }
    CHOICES = {
        "split": ("auto", "official", "subject", "random"),
        "strategy": ("auto", "default", "mirrored", "multiworker"),
        "activation": ("relu", "elu", "selu", "gelu", "swish", "tanh"),
        "resize": ("nearest", "bilinear", "bicubic", "lanczos", "area"),
    }

    def validate(self) -> "TrainConfig":
        for key, (lo, hi) in self.RANGES.items():
            v = getattr(self, key)
            if not lo <= v <= hi:
                raise ConfigError(f"config key {key}={v} out of range [{lo}, {hi}]")
        for key, options in self.CHOICES.items():
            if getattr(self, key) not in options:
                raise ConfigError(f"config key {key}={getattr(self, key)!r} not one of {', '.join(options)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        return _coerce_all(dataclasses.replace(self, **changes))

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def _coerce(key: str, value: Any) -> Any:
    hints = get_type_hints(TrainConfig)
    if key not in hints:
        raise ConfigError(f"unknown config key {key!r}; known: {', '.join(TrainConfig.keys())}")
    typ = hints[key]
    try:
        if typ is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        return typ(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key {key}: {value!r} is not a valid {typ.__name__}") from None


def _coerce_all(cfg: TrainConfig) -> TrainConfig:
    for f in fields(cfg):
        setattr(cfg, f.name, _coerce(f.name, getattr(cfg, f.name)))
    return cfg.validate()


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{p}: config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: invalid TOML: {exc}") from None
        data.update(raw.get("train", raw))
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    cfg = TrainConfig()
    for key, value in data.items():
        setattr(cfg, key, _coerce(key, value))
    return cfg.validate()


def parse_overrides(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not key=value")
        k, v = pair.split("=", 1)
        out[k.strip().replace("-", "_")] = v.strip()
    return out


def to_toml(values: dict[str, Any], table: str = "train") -> str:
    lines = [f"[{table}]"]
    for k, v in values.items():
        if isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, (int, float)):
            lines.append(f"{k} = {v!r}")
        else:
            lines.append(f'{k} = "{v}"')
    return "\n".join(lines) + "\n"
