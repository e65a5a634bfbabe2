"""The model card: the contract between train, optimize, benchmarks and the device.

A card is a JSON document beside its model, named after the model's full file name
(`int8.tflite` + `int8.tflite.json`, `model.keras` + `model.keras.json`), so two model files in
one folder never claim the same card; a schema-1 card named `<stem>.json` is still read when it
names the model file. It says everything needed to use the model correctly (labels,
preprocessing, threshold, quantization, output activation and temperature) and where it came
from (parent, data, split, metrics).

Schema 2 (this version) adds `requires`: the features a device must understand to use the
model correctly. A device that meets a feature it does not know refuses the card in one line
instead of silently ignoring it. Values are validated, never coerced: a NaN, a boolean where a
number belongs or a string where a list belongs is refused, naming the field.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import LeukedgeError
from .files import loads_bounded, sha256_file, write_text_atomic
from .preprocess_spec import Preprocessing

SCHEMA = "leukedge.model-card"
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
MODEL_FORMATS = ("keras", "tflite", "onnx", "saved_model")
OUTPUT_KINDS = ("probabilities", "logits")
# Features a card may require of a device; this device understands all of them.
#   logits      - the model outputs logits; the device applies softmax (with the temperature)
#   temperature - P(positive) is calibrated by temperature scaling (calibration.temperature)
#   bit_depth   - integer images hold preprocessing.bit_depth significant bits (e.g. 12 in 16)
KNOWN_FEATURES = ("logits", "temperature", "bit_depth")


class CardError(LeukedgeError, ValueError):
    """A model card or model file that cannot be trusted; the message names the file."""


@dataclass
class ModelCard:
    """One model's card (see the module docstring): read with `load_card` / `from_dict`, checked by
    `validate`, written by `save` (`bind` first records the model file's SHA-256 and size)."""

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
    output: str = "probabilities"
    calibration: dict[str, Any] | None = None
    input_statistics: dict[str, Any] | None = None
    golden: dict[str, Any] | None = None
    onnx: dict[str, Any] | None = None
    cells: dict[str, Any] | None = None  # how the training cells look (frame input: style, canvas, scale)
    schema_version: int = SCHEMA_VERSION

    @property
    def requires(self) -> list[str]:
        """The features a device must understand to use this model correctly (see KNOWN_FEATURES)."""
        req = []
        if self.output == "logits":
            req.append("logits")
        if self.calibration and float(self.calibration.get("temperature", 1.0)) != 1.0:
            req.append("temperature")
        if self.preprocessing.bit_depth:
            req.append("bit_depth")
        return req

    _bound_to = None  # the model file bind() last pointed the card at (not serialised)

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
        if self.output not in OUTPUT_KINDS:
            raise CardError(f"{where}: 'output' must be one of {OUTPUT_KINDS}, got {self.output!r}")
        if self.calibration is not None:
            t = self.calibration.get("temperature", 1.0)
            if not _is_number(t) or not 0.01 <= t <= 100:
                raise CardError(f"{where}: calibration.temperature must be a number in [0.01, 100], got {t!r}")
        if self.cells is not None:
            _validate_cells(self.cells, where)
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
            "output": self.output,
            "calibration": self.calibration,
            "input_statistics": self.input_statistics,
            "golden": self.golden,
            "onnx": self.onnx,
            "cells": self.cells,
            "requires": self.requires,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "model card") -> "ModelCard":
        """Validate a card's JSON object and build the card; raises CardError naming `where` and the field."""
        if not isinstance(d, dict):
            raise CardError(f"{where}: not a JSON object")
        if d.get("schema") != SCHEMA:
            raise CardError(f"{where}: not a leukedge model card (schema is {d.get('schema')!r}, expected {SCHEMA!r})")
        version = d.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise CardError(f"{where}: missing or invalid 'schema_version'")
        if version > SCHEMA_VERSION:
            raise CardError(
                f"{where}: card schema version {version} is newer than this leukedge understands "
                f"({SCHEMA_VERSION}); upgrade leukedge to use this model"
            )
        if version not in READABLE_VERSIONS:
            raise CardError(f"{where}: card schema version {version} is not one of {READABLE_VERSIONS}")
        missing = [k for k in ("model", "labels", "positive_label", "preprocessing", "threshold") if k not in d]
        if missing:
            raise CardError(f"{where}: missing required field(s): {', '.join(missing)}")
        unknown = [f for f in _field(d, "requires", list, where, default=[]) if f not in KNOWN_FEATURES]
        if unknown:
            raise CardError(f"{where}: the model requires {', '.join(map(str, unknown))}, which this leukedge "
                            f"does not understand (it knows {', '.join(KNOWN_FEATURES)}); upgrade leukedge on this device")
        model = _field(d, "model", dict, where)
        for key in ("file", "format"):
            _field(model, key, str, where, prefix="model.")
        sha = _field(model, "sha256", str, where, prefix="model.", default="")
        if sha and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
            raise CardError(f"{where}: 'model.sha256' is not a SHA-256 hex digest")
        size_bytes = _field(model, "size_bytes", int, where, prefix="model.", default=0)
        if size_bytes < 0:
            raise CardError(f"{where}: 'model.size_bytes' must be >= 0")
        labels = _field(d, "labels", list, where)
        if not all(isinstance(x, str) for x in labels):
            raise CardError(f"{where}: 'labels' must be a list of strings, got {labels!r}")
        threshold = _field(d, "threshold", float, where)
        prep_raw = _field(d, "preprocessing", dict, where)
        try:
            prep = Preprocessing.from_dict(prep_raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise CardError(f"{where}: invalid 'preprocessing': {exc}") from None
        card = cls(
            labels=list(labels),
            positive_label=_field(d, "positive_label", str, where),
            preprocessing=prep,
            model_file=model["file"],
            model_format=model["format"],
            model_sha256=sha,
            model_size_bytes=size_bytes,
            threshold=threshold,
            name=_field(d, "name", str, where, default="leukedge"),
            variant=_field(d, "variant", str, where, default="float"),
            created=_field(d, "created", str, where, default=""),
            quantization=_field(d, "quantization", dict, where, default=None),
            optimization=_field(d, "optimization", dict, where, default=None) or {},
            provenance=_field(d, "provenance", dict, where, default=None) or {},
            metrics=_field(d, "metrics", dict, where, default=None) or {},
            verdict=_field(d, "verdict", dict, where, default=None),
            output=_field(d, "output", str, where, default="probabilities"),
            calibration=_field(d, "calibration", dict, where, default=None),
            input_statistics=_field(d, "input_statistics", dict, where, default=None),
            golden=_field(d, "golden", dict, where, default=None),
            onnx=_field(d, "onnx", dict, where, default=None),
            cells=_field(d, "cells", dict, where, default=None),
            schema_version=version,
        )
        return card.validate(where)

    # -- files ---------------------------------------------------------------

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the card atomically; default path: beside the bound model (card_path_for)."""
        if path is None:
            if not self._bound_to:
                raise CardError("card.save() needs a path, or bind() the card to its model file first")
            path = card_path_for(self._bound_to)
        self.validate(str(path))
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        return Path(path)

    def bind(self, model_path: str | os.PathLike) -> "ModelCard":
        """Point the card at a model file and record that file's SHA-256 and size."""
        p = Path(model_path)
        self._bound_to = p
        self.model_file = p.name
        self.model_sha256 = sha256_file(p)
        self.model_size_bytes = p.stat().st_size
        return self


# -- what a variant's card takes from its parent's card (issue 18) ---------------------------------------
#
# Every ModelCard field is in exactly one of these two tuples (tests/test_card_inheritance.py walks the
# dataclass), so a field added later must be sorted into one before any test passes: a variant can never
# silently fall back to a default for something its parent declared (a logits head written down as
# `probabilities` put raw logits into P(ALL) once).
INHERITED_FIELDS = ("labels", "positive_label", "preprocessing", "name", "output", "input_statistics", "cells")
VARIANT_FIELDS = ("model_file", "model_format", "model_sha256", "model_size_bytes", "threshold", "variant", "created",
                  "quantization", "optimization", "provenance", "metrics", "verdict", "calibration", "golden", "onnx",
                  "schema_version")


def inherit_card(parent: ModelCard, *, model_file: str, model_format: str, variant: str,
                 size: int | None = None, output: str | None = None, **variant_fields: Any) -> ModelCard:
    """The card of a variant built from `parent`: every INHERITED_FIELDS value copied from the parent,
    the variant's own fields from the arguments (threshold defaults to the parent's, the rest to empty).

    A variant may change what it inherits only in the ways it really changes the model:
    - size: another input size in pixels (the input-size family `name@PX`): preprocessing.size changes,
      and input_statistics (measured on images at the parent's size) is dropped;
    - output: 'logits' where the builder removed the parent's final softmax (the device then applies
      softmax with the card's temperature). A parent's logits never become probabilities.
    Raises CardError for any other change (e.g. output 'probabilities' under a logits parent), or a
    variant field name that is not one of VARIANT_FIELDS.
    """
    import dataclasses

    unknown = [k for k in variant_fields if k not in VARIANT_FIELDS]
    if unknown:
        raise CardError(f"variant {variant}: {', '.join(unknown)} is not a field a variant sets itself "
                        f"(inherited from the parent: {', '.join(INHERITED_FIELDS)})")
    kind = parent.output if output is None else output
    if kind != parent.output and not (parent.output == "probabilities" and kind == "logits"):
        raise CardError(f"variant {variant}: output {kind!r} under a parent whose card says {parent.output!r}; "
                        "a variant may only remove a final softmax (probabilities -> logits)")
    inherited = {name: copy.deepcopy(getattr(parent, name)) for name in INHERITED_FIELDS}
    inherited["output"] = kind
    if size is not None and size != parent.preprocessing.size:
        inherited["preprocessing"] = dataclasses.replace(parent.preprocessing, size=int(size))
        inherited["input_statistics"] = None  # measured on the parent's input size
    own = {"threshold": parent.threshold, **variant_fields}
    card = ModelCard(model_file=model_file, model_format=model_format, variant=variant, **inherited, **own)
    return card.validate(f"variant {variant}")


CELL_STYLES = ("masked", "crop")


def _validate_cells(cells: dict, where: str) -> None:
    """The optional `cells` field: {"style": "masked"|"crop", "canvas_px": int > 0, "diameter_px": number > 0,
    "um_per_px": number > 0 or null}; masked = one cell on black (C-NMC), crop = a square crop with
    background (PBC). Raises CardError naming the key."""
    if cells.get("style") not in CELL_STYLES:
        raise CardError(f"{where}: 'cells.style' must be one of {CELL_STYLES}, got {cells.get('style')!r}")
    canvas = cells.get("canvas_px")
    if not isinstance(canvas, int) or isinstance(canvas, bool) or canvas <= 0:
        raise CardError(f"{where}: 'cells.canvas_px' must be a whole number of pixels > 0, got {canvas!r}")
    for key, optional in (("diameter_px", False), ("um_per_px", True)):
        v = cells.get(key)
        if v is None and optional:
            continue
        if not _is_number(v) or v <= 0:
            raise CardError(f"{where}: 'cells.{key}' must be a number > 0, got {v!r}")


_MISSING = object()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _field(d: dict, key: str, typ: type, where: str, prefix: str = "", default: Any = _MISSING) -> Any:
    """d[key] checked against `typ` (float accepts finite ints and floats, never bools); a missing
    or null key gives `default` when one is given. Raises CardError naming the field."""
    v = d.get(key, None)
    if v is None:
        if default is _MISSING:
            raise CardError(f"{where}: missing required field '{prefix}{key}'")
        return default
    if typ is float:
        if not _is_number(v):
            raise CardError(f"{where}: '{prefix}{key}' must be a finite number, got {v!r}")
        return float(v)
    if typ is int:
        if not isinstance(v, int) or isinstance(v, bool):
            raise CardError(f"{where}: '{prefix}{key}' must be an integer, got {v!r}")
        return v
    if not isinstance(v, typ):
        raise CardError(f"{where}: '{prefix}{key}' must be a {typ.__name__}, got {type(v).__name__} {v!r}"[:300])
    return v


def card_path_for(model_path: str | os.PathLike) -> Path:
    """Where a model's card is written: beside it, named after the full file name (`int8.tflite.json`)."""
    p = Path(model_path)
    return p.with_name(p.name + ".json")


def find_card_for(model_path: str | os.PathLike) -> Path:
    """The card that describes `model_path`: `<file name>.json`, else a `<stem>.json` (the schema-1 name)
    that names this model file or records its SHA-256. Raises CardError when neither exists."""
    p = Path(model_path)
    new = card_path_for(p)
    if new.exists():
        return new
    legacy = p.with_suffix(".json")
    if legacy.exists() and legacy != p:
        try:
            model = json.loads(legacy.read_text(encoding="utf-8")).get("model", {})
            named, sha = model.get("file"), model.get("sha256")
        except (OSError, ValueError, AttributeError):
            named, sha = None, None
        # it claims this model when it names it, or (a renamed copy) when it records this file's hash
        if named in (None, p.name) or (isinstance(sha, str) and sha == verified_sha256(p)):
            return legacy
    raise CardError(f"{new}: model card not found (every model needs its card beside it, named {new.name})")


def load_card(path: str | os.PathLike) -> ModelCard:
    """Read and validate one card file; raises CardError (one line naming the file) on any problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CardError(f"{p}: model card not found (every model needs its card beside it)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CardError(f"{p}: cannot read model card: {exc}") from None
    try:
        data = loads_bounded(text)  # bounded depth: a hostile card is one line, not a RecursionError
    except json.JSONDecodeError as exc:
        raise CardError(f"{p}: model card is not valid JSON: {exc}") from None
    return ModelCard.from_dict(data, where=str(p))


def load_card_for_model(model_path: str | os.PathLike, verify: bool = True) -> ModelCard:
    """Find the card beside a model file and check that it describes exactly this file.

    model_path: a .keras/.tflite/.onnx file. verify: compare the file's SHA-256 with the card's.
    Returns the validated ModelCard. Raises CardError (one line naming the file) when the model or
    card is missing or invalid, or the hash differs.
    """
    mp = Path(model_path)
    if not mp.exists():
        raise CardError(f"{mp}: model file not found")
    if mp.is_dir():
        raise CardError(f"{mp}: is a directory; give the model file (e.g. {mp}/int8.tflite)")
    cp = find_card_for(mp)
    card = load_card(cp)  # a renamed copy keeps its identity through the SHA-256, not the name
    if verify:
        if not card.model_sha256:
            raise CardError(f"{cp}: card has no model SHA-256 to verify {mp.name} against")
        actual = verified_sha256(mp)
        if actual != card.model_sha256:
            raise CardError(
                f"{mp}: SHA-256 {actual[:12]}… does not match its card ({card.model_sha256[:12]}…); "
                "the model or the card was replaced or corrupted"
            )
    return card


# -- a verified-hash cache (cold start) ------------------------------------------------------------------
#
# Hashing a 23 MB model costs ~15 ms here and ~0.1 s on a Raspberry Pi 4 (no SHA instructions) at every
# start. The cache remembers a file's SHA-256 under its identity (device, inode, size, mtime_ns,
# ctime_ns): mtime alone can be forged (`cp -p`, `touch -d`), but ctime is set by the kernel on every
# write, rename or metadata change and cannot be set by a user, so any change to the file re-hashes it.
# LEUKEDGE_HASH_CACHE=0 turns the cache off; LEUKEDGE_CACHE moves it (default ~/.cache/leukedge).


def _hash_cache_path() -> Path | None:
    if os.environ.get("LEUKEDGE_HASH_CACHE", "1") == "0":
        return None
    base = os.environ.get("LEUKEDGE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "leukedge")
    return Path(base) / "verified-sha256.json"


def _identity(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def verified_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file, from the verified-hash cache when the file's identity (device, inode,
    size, mtime_ns, ctime_ns) is unchanged since it was last hashed, else hashed and remembered.
    A cache that cannot be read or written is ignored (the file is simply hashed)."""
    p = Path(path)
    cache_file = _hash_cache_path()
    before = p.stat()
    key = f"{p.resolve()}|{_identity(before)}"
    entries: dict = {}
    if cache_file is not None:
        try:
            entries = json.loads(cache_file.read_text(encoding="utf-8"))
            if not isinstance(entries, dict):
                entries = {}
        except (OSError, ValueError):
            entries = {}
        hit = entries.get(key)
        if isinstance(hit, str) and len(hit) == 64:
            return hit
    digest = sha256_file(p)
    if cache_file is not None and _identity(p.stat()) == _identity(before):  # unchanged while hashing
        prefix = f"{p.resolve()}|"
        entries = {k: v for k, v in entries.items() if not k.startswith(prefix)}  # one entry per path
        entries[key] = digest
        if len(entries) > 256:  # bounded: keep the newest
            entries = dict(list(entries.items())[-256:])
        try:
            write_text_atomic(cache_file, json.dumps(entries))
        except OSError:
            pass
    return digest
