"""The device library: everything that runs on the device (numpy, Pillow, an inference engine; never TensorFlow).

Its public face, loaded on first use so that importing a light module (`leukedge.edge.errors`, which every
`leukedge` command imports) loads neither NumPy nor Pillow:

- Classifier, Prediction                   one model + its card: decode, check, run, decide   (edge.classifier)
- ModelCard, load_card_for_model,          the model card, the contract between steps          (edge.card)
  inherit_card
- Preprocessing, DecodeOptions, load_rgb   the one decoder and preprocessing                   (edge.preprocess)
- decide, label_for                        `p >= threshold`, written once                      (edge.decision)
- ModelError                               the runtime interface                             (edge.runtime)
- open_backend, engines_for               the backends (LiteRT, ONNX Runtime, OpenVINO)      (edge.engines)
- load_classifier                          a model on a named engine                           (edge.load_engine)
- self_test                                the golden-set self-test                            (edge.selftest)
- LeukedgeError                            the one error base class                            (edge.errors)

Frames (white cells in a microscope field) are `leukedge.edge.fields`; the device app (`edge-classify`:
options, batch, watch, journal, rows) is `leukedge.edge.app`, built on this library.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Classifier": "classifier", "Prediction": "classifier",
    "ModelCard": "card", "load_card_for_model": "card", "inherit_card": "card",
    "Preprocessing": "preprocess", "DecodeOptions": "preprocess", "load_rgb": "preprocess",
    "decide": "decision", "label_for": "decision",
    "ModelError": "runtime", "open_backend": "engines", "engines_for": "engines",
    "load_classifier": "load_engine",
    "self_test": "selftest",
    "LeukedgeError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
