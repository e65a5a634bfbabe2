"""The model card: the contract between train, optimize, benchmarks and the device.

A card is a JSON document beside its model (`model.tflite` + `model.json`). It says
everything needed to use the model correctly (labels, preprocessing, threshold,
quantization) and where it came from (parent, data, split, metrics).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import LeukedgeError
from .files import sha256_file, write_text_atomic
from .preprocess import Preprocessing

SCHEMA = "leukedge.model-card"
SCHEMA_VERSION = 1
MODEL_FORMATS = ("keras", "tflite", "onnx")


class CardError(LeukedgeError, ValueError):
    """A model card or model file that cannot be trusted; the message names the file."""


@dataclass
class ModelCard:
    labels: list[str]
    positive_label: str
    preprocessing: Preprocessing
    model_file: str
    model_format: str
    model_sha256: str = ""
    model_size_bytes: int = 0
    threshold: float = 0.5
    name: str = "leukedge"
    variant: str = "float"
    created: str = ""
    quantization: dict[str, Any] | None = None
    optimization: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    verdict: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def positive_index(self) -> int:
        return self.labels.index(self.positive_label)

    def validate(self, where: str = "model card") -> "ModelCard":
        if len(self.labels) != 2 or len(set(self.labels)) != 2:
            raise CardError(f"{where}: 'labels' must name two distinct classes, got {self.labels!r}")
        if self.positive_label not in self.labels:
            raise CardError(f"{where}: positive label {self.positive_label!r} is not one of {self.labels!r}")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise CardError(f"{where}: threshold {self.threshold} outside [0, 1]")
        if self.model_format not in MODEL_FORMATS:
            raise CardError(f"{where}: model format {self.model_format!r} not one of {MODEL_FORMATS}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": self.schema_version,
            "name": self.name,
            "variant": self.variant,
            "created": self.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": {
                "file": self.model_file,
                "format": self.model_format,
                "sha256": self.model_sha256,
                "size_bytes": self.model_size_bytes,
            },
            "labels": list(self.labels),
            "positive_label": self.positive_label,
            "preprocessing": self.preprocessing.to_dict(),
            "threshold": float(self.threshold),
            "quantization": self.quantization,
            "optimization": self.optimization,
            "provenance": self.provenance,
            "metrics": self.metrics,
            "verdict": self.verdict,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "model card") -> "ModelCard":
        if not isinstance(d, dict):
            raise CardError(f"{where}: not a JSON object")
        if d.get("schema") != SCHEMA:
            raise CardError(f"{where}: not a leukedge model card (schema is {d.get('schema')!r}, expected {SCHEMA!r})")
        version = d.get("schema_version")
        if not isinstance(version, int):
            raise CardError(f"{where}: missing or invalid 'schema_version'")
        if version > SCHEMA_VERSION:
            raise CardError(
                f"{where}: card schema version {version} is newer than this leukedge understands "
                f"({SCHEMA_VERSION}); upgrade leukedge to use this model"
            )
        missing = [k for k in ("model", "labels", "positive_label", "preprocessing", "threshold") if k not in d]
        if missing:
            raise CardError(f"{where}: missing required field(s): {', '.join(missing)}")
        model = d["model"]
        if not isinstance(model, dict) or not {"file", "format"} <= set(model):
            raise CardError(f"{where}: 'model' needs 'file' and 'format'")
        try:
            prep = Preprocessing.from_dict(d["preprocessing"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CardError(f"{where}: invalid 'preprocessing': {exc}") from None
        try:
            card = cls(
                labels=[str(x) for x in d["labels"]],
                positive_label=str(d["positive_label"]),
                preprocessing=prep,
                model_file=str(model["file"]),
                model_format=str(model["format"]),
                model_sha256=str(model.get("sha256", "")),
                model_size_bytes=int(model.get("size_bytes", 0)),
                threshold=float(d["threshold"]),
                name=str(d.get("name", "leukedge")),
                variant=str(d.get("variant", "float")),
                created=str(d.get("created", "")),
                quantization=d.get("quantization"),
                optimization=dict(d.get("optimization") or {}),
                provenance=dict(d.get("provenance") or {}),
                metrics=dict(d.get("metrics") or {}),
                verdict=d.get("verdict"),
                schema_version=version,
            )
        except (TypeError, ValueError) as exc:
            raise CardError(f"{where}: invalid field: {exc}") from None
        return card.validate(where)

    # -- files ---------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        self.validate(str(path))
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        return Path(path)

    def bind(self, model_path: str | os.PathLike) -> "ModelCard":
        """Point the card at a model file and record that file's SHA-256 and size."""
        p = Path(model_path)
        self.model_file = p.name
        self.model_sha256 = sha256_file(p)
        self.model_size_bytes = p.stat().st_size
        return self


def card_path_for(model_path: str | os.PathLike) -> Path:
    return Path(model_path).with_suffix(".json")


def load_card(path: str | os.PathLike) -> ModelCard:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CardError(f"{p}: model card not found (every model needs its card beside it)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CardError(f"{p}: cannot read model card: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CardError(f"{p}: model card is not valid JSON: {exc}") from None
    return ModelCard.from_dict(data, where=str(p))


def load_card_for_model(model_path: str | os.PathLike, verify: bool = True) -> ModelCard:
    """Find the card beside a model and check that it describes exactly this file."""
    mp = Path(model_path)
    if not mp.exists():
        raise CardError(f"{mp}: model file not found")
    if mp.is_dir():
        raise CardError(f"{mp}: is a directory; give the model file (e.g. {mp}/int8.tflite)")
    card = load_card(card_path_for(mp))
    if verify:
        if not card.model_sha256:
            raise CardError(f"{card_path_for(mp)}: card has no model SHA-256 to verify {mp.name} against")
        actual = sha256_file(mp)
        if actual != card.model_sha256:
            raise CardError(
                f"{mp}: SHA-256 {actual[:12]}… does not match its card ({card.model_sha256[:12]}…); "
                "the model or the card was replaced or corrupted"
            )
    return card
