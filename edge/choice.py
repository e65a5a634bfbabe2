"""Using an engine choice on the device: read `choice.json` (written by `edge-choose`, edge.choose) and say
which engine, or which (model, engine), it names, re-checked now.

A choice belongs to one machine and to the exact model files (SHA-256): `engine_for` and `pick_from`
ignore or refuse a choice whose machine or model changed. `edge-classify` reads a choice through this
module at start-up; the measuring (`edge.choose`) is never imported on that path. The file's content is
described in edge.choose's module docstring.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import LeukedgeError

CHOICE_SCHEMA = "leukedge.engine-choice"
CHOICE_VERSION = 1
CHOICE_FILE = "choice.json"
LAYOUTS = ("single", "folder")


class ChoiceError(LeukedgeError, ValueError):
    """A choice that cannot be made or used (no usable model, stale or unreadable choice file); one line."""


def signature_ok(model: Path, public_key: str | None) -> tuple[bool | None, str | None]:
    """(True, None) when the signature verifies with public_key, (False, reason) when not; (None, None) without a key."""
    if not public_key:
        return None, None
    from .signature import verify_model_signature

    try:
        verify_model_signature(model, None, public_key)
    except LeukedgeError as exc:
        return False, str(exc)
    return True, None


def read_choice(path: str | os.PathLike) -> dict:
    """The choice file's content; raises ChoiceError (one line) for a missing, unreadable or foreign file."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ChoiceError(f"{p}: no such choice file (run edge-choose on this device first)") from None
    except (OSError, ValueError) as exc:
        raise ChoiceError(f"{p}: unreadable choice file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("schema") != CHOICE_SCHEMA:
        raise ChoiceError(f"{p}: not a leukedge engine choice file")
    if int(doc.get("schema_version", 0)) > CHOICE_VERSION:
        raise ChoiceError(f"{p}: choice file version {doc.get('schema_version')} is newer than this leukedge")
    return doc


def _same_machine(doc: dict) -> str | None:
    """None when the choice was measured on this machine (processor, ISA features, ISA caps, usable cores),
    else one line saying what differs."""
    from .machine import machine_record

    then, now = doc.get("machine") or {}, machine_record()
    for key in ("cpu", "machine", "isa", "isa_caps", "usable_cores"):
        if then.get(key) != now.get(key):
            return f"measured on another machine ({key}: {then.get(key)!r}, here {now.get(key)!r})"
    return None


def engine_for(model_path: str | os.PathLike, layout: str = "single",
               choice_path: str | os.PathLike | None = None) -> tuple[str | None, str | None]:
    """The engine the choice file names for this model and layout, for `edge-classify -m MODEL`.

    choice_path: default `choice.json` beside the model. layout: "single" (latency layout) or "folder"
    (throughput layout). Returns (engine, None) when the file names one for this exact model (same SHA-256)
    on this machine; (None, note) otherwise: no file (note None), another machine, a changed model, or no
    entry: the caller then uses the card format's default engine and may print the note. Never raises.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    mp = Path(model_path)
    cp = Path(choice_path) if choice_path else mp.with_name(CHOICE_FILE)
    if not cp.is_file():
        return None, None
    try:
        doc = read_choice(cp)
    except ChoiceError as exc:
        return None, f"{exc}; using the default engine"
    entry = (doc.get("engines") or {}).get(mp.name)
    if not entry or layout not in entry:
        return None, None
    other = _same_machine(doc)
    if other:
        return None, f"{cp}: {other}; using the default engine (re-run edge-choose here)"
    from .card import load_card_for_model

    try:
        sha = load_card_for_model(mp).model_sha256
    except LeukedgeError:
        return None, None  # the caller's own load will report the card
    if (doc.get("model_sha256") or {}).get(mp.name) != sha:
        return None, f"{cp}: {mp.name} changed since it was measured; using the default engine (re-run edge-choose)"
    return str(entry[layout]), None


@dataclass(frozen=True)
class Pick:
    """What a choice file picks for a layout: the model file and the engine to run it with."""

    model: Path
    engine: str
    ms: float


def pick_from(choice_path: str | os.PathLike, layout: str = "single", require_signature: str | None = None) -> Pick:
    """The (model, engine) a choice file picks for a layout, checked again now.

    choice_path: a choice file, or a folder holding choice.json. The picked model must still be the file that
    was measured (SHA-256 through its card, which must still say verdict "pass"), the machine the same, and
    under require_signature (a public key file) its signature must verify now, whatever the file says.
    Returns a Pick. Raises ChoiceError (one line) for a missing/foreign file, no pick for the layout,
    another machine, a changed or failing model, or a choice made without --require-signature when a key is
    given now and the pick's signature does not verify.
    """
    cp = Path(choice_path)
    if cp.is_dir():
        cp = cp / CHOICE_FILE
    doc = read_choice(cp)
    if layout not in LAYOUTS:
        raise ChoiceError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    p = (doc.get("pick") or {}).get(layout)
    if not p:
        raise ChoiceError(f"{cp}: no model passed its gate{' and signature check' if doc.get('require_signature') else ''}"
                          f" there; nothing to pick for the {layout} layout")
    other = _same_machine(doc)
    if other:
        raise ChoiceError(f"{cp}: {other}; re-run edge-choose on this device")
    model = cp.parent / p["model"]
    from .card import load_card_for_model

    try:
        card = load_card_for_model(model)
    except LeukedgeError as exc:
        raise ChoiceError(f"{cp}: the picked model cannot be used: {exc}") from None
    if (doc.get("model_sha256") or {}).get(model.name) != card.model_sha256:
        raise ChoiceError(f"{cp}: {model.name} changed since it was measured; re-run edge-choose")
    if (card.verdict or {}).get("status") != "pass":
        raise ChoiceError(f"{cp}: {model.name} no longer passes its gate (card verdict "
                          f"{(card.verdict or {}).get('status')!r}); re-run edge-choose")
    ok, why = signature_ok(model, require_signature)
    if ok is False:
        raise ChoiceError(why)
    return Pick(model, str(p["engine"]), float(p["ms"]))
