"""The model of one edge-classify run: decode options, the engine (--engine, --choice, choice.json), the
signature check, the load and the golden-set self-test. A model that cannot be used is one line, exit 2."""

from __future__ import annotations

import re
from pathlib import Path

from .console import log
from .errors import ModelUnusable, UsageError


def decode_options(bit_depth, page, max_pixels, value_range=None):
    if bit_depth is None and page is None and max_pixels is None and value_range is None:
        return None
    from ..preprocess_spec import DecodeOptions

    kw = {"bit_depth": bit_depth, "page": page, "value_range": value_range}
    if max_pixels is not None:
        kw["max_pixels"] = max_pixels
    try:
        return DecodeOptions(**kw)
    except ValueError as exc:  # the message names the field; the user typed the option
        msg = re.sub(r"'(bit_depth|page|max_pixels|value_range)(\[\d\])?'",
                     lambda m: "--" + m.group(1).replace("_", "-") + (" " + ("LOW" if m.group(2) == "[0]" else "HIGH")
                                                                       if m.group(2) else ""), str(exc))
        raise UsageError(msg)


def pick_engine(model: str | None, engine: str, choice: str | None, layout: str, require_signature: str | None,
                quiet: bool) -> tuple[str, str]:
    """(model, engine) for this run: --choice picks both (edge.choose.pick_from, re-checked now); with
    --engine auto the choice.json beside --model names the engine measured fastest here (edge.choose.engine_for);
    otherwise the engine asked for. Only a model with a choice.json beside it pays for reading it. Exit 2 on error."""
    from ..errors import LeukedgeError

    try:
        if choice:
            from ..choice import pick_from

            pick = pick_from(choice, layout, require_signature)
            return str(pick.model), pick.engine or "auto"
        if engine == "auto" and (Path(model).parent / "choice.json").is_file():
            from ..choice import engine_for

            chosen, note = engine_for(model, layout)
            if note and not quiet:
                log(note)
            return model, chosen or "auto"
    except LeukedgeError as exc:
        raise UsageError(str(exc))
    return model, engine


def load(model: str, threads: int | None, threshold: float | None, decode, require_signature: str | None,
          quiet: bool, engine: str | None = None):
    """Check the signature (if asked), load the classifier on `engine` (None: the card format's default);
    every failure is one line and exit 2."""
    from ..errors import LeukedgeError

    try:
        if require_signature:
            from ..signature import verify_model_signature

            verify_model_signature(model, None, require_signature)  # None: the card beside the model
        if engine is None:
            from ..classifier import Classifier

            clf = Classifier.load(model, threads=threads, threshold=threshold, decode=decode)
        else:
            from ..load_engine import load_classifier

            clf = load_classifier(model, engine=engine, threads=threads, threshold=threshold, decode=decode)
    except LeukedgeError as exc:
        raise ModelUnusable(str(exc))  # a model that cannot be used: this one line is all (nothing said before it)
    except MemoryError:
        raise ModelUnusable(f"{model}: not enough memory to load the model (the README names the memory each model needs)")
    except RuntimeError as exc:  # "can't start new thread" from the runtime's thread pool
        raise ModelUnusable(f"{model}: the runtime could not start: {' '.join(str(exc).split())[:300]}")
    if not require_signature and not quiet:
        try:
            from ..signature import signature_status
        except ImportError:  # the cryptography package is missing: signing is unavailable, not an error
            signature_status = None
        if signature_status is not None:
            log(signature_status(model))
    return clf


def self_test_passes(clf, required: bool) -> bool:
    """Run the golden-set self-test; returns ok. Not required (watch start) and no golden set: a note, ok."""
    from ..selftest import self_test

    if not required and not getattr(clf.card, "golden", None):
        log("self-test skipped: the model's card has no golden set")
        return True
    report = self_test(clf)
    log(("self-test passed: " if report.ok else "self-test FAILED: ") + report.message)
    return bool(report.ok)
