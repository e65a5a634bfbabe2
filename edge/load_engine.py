"""`Classifier.load` with a named engine (edge-classify --engine, edge-choose, the engine benchmarks).

Apart from edge.engines because it builds a Classifier, and the Classifier opens its backend through
edge.engines: kept in one module the two would import each other.
"""

from __future__ import annotations

import os

from .engines import open_with_engine


def load_classifier(model_path: str | os.PathLike, engine: str | None = None, threads: int | None = None,
                    verify: bool = True, threshold: float | None = None, decode=None):
    """`Classifier.load` with a named engine: read the card beside the model (verifying its SHA-256 unless
    verify=False), open the model with `engine` (None: the card format's default) and build the Classifier.

    Raises CardError (missing/invalid card, hash mismatch) or ModelError (unknown engine, one that does
    not run the card's format, not installed, or cannot load the file), each one line.
    """
    from .card import load_card_for_model
    from .classifier import Classifier

    card = load_card_for_model(model_path, verify=verify)
    backend = open_with_engine(model_path, card.model_format, engine, threads)
    return Classifier(model_path, card, threads=threads, threshold=threshold, decode=decode, backend=backend)
