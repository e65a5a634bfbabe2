"""Device self-test: run the model's golden set and compare with what the workstation measured.

Every optimized model ships `<model file>.golden.npz` (written by
`leukedge.optimize.golden.make_golden`), named and hashed by its card's `golden` entry:
a few input tensors exactly as the model takes them and the outputs the workstation
measured. Integer kernels differ between CPU architectures (x86 vs the Pi's aarch64), so
this is how a device proves that it computes what was validated. Rule (issue 14): the
same decisions at the card's threshold, and every model output within 2 output quantization
steps for integer outputs, within 1e-4 for float outputs (for a probability-output model the
output is P itself; for a logit model the rule applies to the logits, and P is reported).

Runs on the device: numpy and the classifier only, never TensorFlow.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .decision import decide

GOLDEN_SCHEMA = "leukedge.golden"
GOLDEN_SCHEMA_VERSION = 1
OUTPUT_STEPS = 2  # integer outputs: allowed |dP| in output quantization steps (issue 14)
FLOAT_TOLERANCE = 1e-4  # float outputs: allowed |dP| (issue 14)


def golden_path_for(model_path: str | os.PathLike) -> Path:
    """Where a model's golden set lives: `<model file name>.golden.npz` beside it."""
    p = Path(model_path)
    return p.with_name(p.name + ".golden.npz")


def output_quantization(clf) -> tuple[str, float]:
    """("integer", scale) for a model with a quantized output tensor, else ("float", 0.0).

    Read from the classifier's runtime backend (`clf.backend.output_dtype/output_quantization`),
    so it holds for every runtime the classifier can use.
    """
    dtype, q = np.dtype(clf.backend.output_dtype), tuple(clf.backend.output_quantization)
    if np.issubdtype(dtype, np.integer) and q and float(q[0]) > 0:
        return "integer", float(q[0])
    return "float", 0.0


def tolerance_for(output_kind: str, output_scale: float) -> dict[str, Any]:
    """The allowed difference of each model output (dequantized), rule of issue 14:
    {"max_abs_delta": 2 * scale for integer outputs, 1e-4 for float; "output_steps": 2 or None}."""
    if output_kind == "integer":
        return {"max_abs_delta": OUTPUT_STEPS * float(output_scale), "output_steps": OUTPUT_STEPS}
    return {"max_abs_delta": FLOAT_TOLERANCE, "output_steps": None}


def raw_outputs(clf, x: np.ndarray) -> np.ndarray:
    """The model's own output for one prepared tensor (dequantized; logits for a logit model), (labels,)."""
    fn = getattr(clf, "raw_output", None) or clf.probabilities
    return np.asarray(fn(x), dtype=np.float32)


@dataclass
class SelfTestReport:
    """Outcome of `self_test`. agreement: share of golden inputs whose decision matches (0..1);
    max_abs_delta_p: largest |P_device - P_workstation| of the positive class; max_abs_delta_output:
    largest difference of any model output (dequantized; = |dP| for a probability-output model);
    tolerance: the allowed output difference; max_delta_steps: max_abs_delta_output in output
    quantization steps (integer outputs only); message: one line for a person, without a
    "passed"/"FAILED" prefix (the caller adds it from `ok`)."""

    ok: bool
    n: int = 0
    agreement: float | None = None
    max_abs_delta_p: float | None = None
    tolerance: float | None = None
    message: str = ""
    max_abs_delta_output: float | None = None
    max_delta_steps: float | None = None
    golden_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _golden_entry(card) -> dict | None:
    g = getattr(card, "golden", None)
    return g if isinstance(g, dict) and g.get("file") else None


def load_golden(path: str | os.PathLike, sha256: str | None = None) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Read a golden file; returns (meta, inputs (n,H,W,3), outputs (n,labels) float32, p_positive (n,) float32).

    Checks the file's SHA-256 against `sha256` when given. Raises ValueError with a one-line
    reason (missing file, hash mismatch, not a golden set).
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"golden set {p} not found beside the model") from None
    except OSError as exc:
        raise ValueError(f"golden set {p} unreadable: {exc.strerror or exc}") from None
    if sha256:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ValueError(f"golden set {p} SHA-256 {actual[:12]}… does not match the card's ({sha256[:12]}…); "
                             "replaced or corrupted")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"][()]))
            inputs, outputs = z["inputs"], z["outputs"].astype(np.float32)
            p_pos = z["p_positive"].astype(np.float32)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise ValueError(f"golden set {p} is not a leukedge golden file: {exc}") from None
    if meta.get("schema") != GOLDEN_SCHEMA or not isinstance(meta.get("schema_version"), int):
        raise ValueError(f"golden set {p}: schema {meta.get('schema')!r} is not {GOLDEN_SCHEMA!r}")
    if meta["schema_version"] > GOLDEN_SCHEMA_VERSION:
        raise ValueError(f"golden set {p}: version {meta['schema_version']} is newer than this leukedge understands")
    if inputs.ndim != 4 or not len(inputs) == len(outputs) == len(p_pos) or len(inputs) == 0:
        raise ValueError(f"golden set {p}: inputs {inputs.shape} and outputs {outputs.shape} do not match")
    return meta, inputs, outputs, p_pos


def self_test(clf, golden: dict | None = None) -> SelfTestReport:
    """Run the golden set beside `clf`'s model and compare with the workstation's outputs.

    clf: a loaded `Classifier` (its card already verified against the model file).
    golden: the card's `golden` entry ({"file", "sha256", ...}); default `clf.card.golden`. The file
    is the one the card names, beside the model, else `<model file>.golden.npz` (a renamed copy);
    either way its SHA-256 must be the card's.
    The decisions are taken at the threshold the golden set was measured at (the card's).
    Never raises for a bad or missing golden set: returns a report with ok=False and a
    one-line message naming the file and the problem.
    """
    model_path = Path(getattr(clf, "model_path", "."))
    entry = golden if golden is not None else _golden_entry(clf.card)
    if not entry or not entry.get("file"):
        return SelfTestReport(False, message=f"{model_path}: no golden set in its card; "
                                             "re-run leukedge optimize to make one (self-test not possible)")
    path = model_path.parent / entry["file"]
    renamed = golden_path_for(model_path)  # a model copied under another name, its golden set beside it likewise
    if not path.is_file() and renamed.is_file():
        path = renamed  # still checked against the card's SHA-256 below
    if not entry.get("sha256"):
        return SelfTestReport(False, golden_file=str(path), message=f"{path}: the card gives no SHA-256 for the golden set")
    try:
        meta, inputs, ref_out, p_ref = load_golden(path, entry["sha256"])
    except ValueError as exc:
        return SelfTestReport(False, golden_file=str(path), message=str(exc))

    def refuse(problem: str) -> SelfTestReport:
        return SelfTestReport(False, n=len(inputs), golden_file=str(path), message=f"{path}: {problem}")

    card = clf.card
    if meta.get("model_sha256") and card.model_sha256 and meta["model_sha256"] != card.model_sha256:
        return refuse(f"measured on a different model (SHA-256 {meta['model_sha256'][:12]}…, "
                      f"card says {card.model_sha256[:12]}…)")
    kind, scale = output_quantization(clf)
    if kind != meta.get("output_kind"):
        return refuse(f"made for {meta.get('output_kind')} outputs, the model has {kind} outputs")
    temperature = float(getattr(clf, "temperature", 1.0))
    if card.output == "logits" and abs(float(meta.get("temperature", 1.0)) - temperature) > 1e-9:
        return refuse(f"made with temperature {meta.get('temperature')}, the card says {temperature}; "
                      "make the golden set after calibration")
    tol = tolerance_for(kind, scale)["max_abs_delta"]
    threshold = float(meta.get("threshold", card.threshold))
    pos = card.positive_index
    n = len(inputs)
    out = np.empty(ref_out.shape, dtype=np.float32)
    p_dev = np.empty(n, dtype=np.float32)
    try:
        for i in range(n):
            out[i] = raw_outputs(clf, inputs[i:i + 1])
            p_dev[i] = clf.probabilities(inputs[i:i + 1])[pos]
    except (ValueError, RuntimeError, TypeError) as exc:
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return refuse(f"the model cannot run the golden inputs ({inputs.dtype} {inputs.shape[1:]}): {line}")
    max_out = float(np.abs(out.astype(np.float64) - ref_out).max())
    max_dp = float(np.abs(p_dev.astype(np.float64) - p_ref).max())
    same = np.asarray(decide(p_dev, threshold)) == np.asarray(decide(p_ref, threshold))
    agreement = float(same.mean())
    steps = max_out / scale if kind == "integer" else None
    # 1e-9: outputs are float32 multiples of the output scale; their difference can round past 2 steps
    ok = bool(max_out <= tol + 1e-9 and same.all())
    if steps is not None:
        size = f"max output delta {steps:.1f} quantization steps (tolerance {OUTPUT_STEPS})"
    else:
        size = f"max output delta {max_out:.2g} (tolerance {tol:g})"
    message = (f"{int(same.sum())}/{n} decisions agree, "
               f"max |dP| {max_dp:.6f}, {size}, golden set {path.name}")
    return SelfTestReport(ok, n=n, agreement=agreement, max_abs_delta_p=max_dp, tolerance=tol, message=message,
                          max_abs_delta_output=max_out, max_delta_steps=steps, golden_file=str(path))
