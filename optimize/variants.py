"""The variant registry: one row per optimized variant, driving optimize, the CLI, cards and tests.

A row says what a variant does (prunes? quantization-aware? how it converts, which format and
runtime it ends in, what the card calls its quantization, whether it needs fine-tune data or a
calibration set) and names its builder. Adding a variant is one `register(Variant(...))` plus its
builder. Families: a row whose `sizes` is True also exists at other input sizes as
`<name>@<px>` (e.g. `int8@160`): same recipe, the parent's weights run at that input size
(InceptionV3 is fully convolutional with global pooling) after a short fine-tune at that size.
Channel-pruned rows are named, not registered: `slimNN-<integer row>` (slim_row) keeps NN % of the
parent's multiply-accumulates and converts through that row's builder; they come in sizes too
(`slim60-int8@160`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from leukedge.edge.errors import LeukedgeError


class VariantError(LeukedgeError, ValueError):
    """An unknown variant name or an impossible family member; the message lists what exists."""


@dataclass(frozen=True)
class Variant:
    name: str
    builder: str  # key into BUILDERS (optimize.builders registers them)
    conversion: str  # TFLite converter mode (float32|float16|dynamic|int8|qat) or onnx-float32|onnx-qdq
    format: str = "tflite"  # tflite | onnx
    runtime: str = "LiteRT"  # what runs it on the device
    quantization: str = "none"  # the card's wording
    prunes: bool = False
    quantization_aware: bool = False
    needs_finetune_data: bool = False
    needs_calibration: bool = False
    sizes: bool = False  # may be asked for at another input size as name@PX
    input_size: int | None = None  # None: the parent's
    macs_kept: float | None = None  # slimNN rows: share of the parent's multiply-accumulates kept (NN %)

    @property
    def base(self) -> str:
        return self.name.split("@")[0]

    @property
    def extension(self) -> str:
        return {"tflite": ".tflite", "onnx": ".onnx"}[self.format]

    @property
    def integer(self) -> bool:
        """Full-integer arithmetic (needs a calibration set or QAT ranges; integer IO for TFLite)."""
        return self.conversion in ("int8", "qat", "onnx-qdq")


VARIANTS: dict[str, Variant] = {}
BUILDERS: dict[str, Callable] = {}


def register(variant: Variant) -> Variant:
    """Add a row (replacing one of the same name); returns it."""
    VARIANTS[variant.name] = variant
    return variant


def unregister(name: str) -> None:
    VARIANTS.pop(name, None)


register(Variant("float32", "convert", "float32"))
register(Variant("float16", "convert", "float16", quantization="float16 weights"))
register(Variant("dynamic", "convert", "dynamic", quantization="dynamic-range int8 weights"))
register(Variant("int8", "convert", "int8", quantization="full-integer int8 (post-training)",
                 needs_calibration=True, sizes=True))
register(Variant("pruned-int8", "prune", "int8", quantization="full-integer int8 (post-training)", prunes=True,
                 needs_finetune_data=True, needs_calibration=True))
register(Variant("qat-int8", "qat", "qat", quantization="full-integer int8 (quantization-aware)",
                 quantization_aware=True, needs_finetune_data=True, needs_calibration=True))
register(Variant("pruned-qat-int8", "prune+qat", "qat", quantization="full-integer int8 (quantization-aware)",
                 prunes=True, quantization_aware=True, needs_finetune_data=True, needs_calibration=True))
register(Variant("onnx-float32", "onnx", "onnx-float32", format="onnx", runtime="ONNX Runtime"))
register(Variant("onnx-int8", "onnx", "onnx-qdq", format="onnx", runtime="ONNX Runtime",
                 quantization="int8 QDQ (static, per-channel weights)", needs_calibration=True))
# CPU int8 (issue 22): one QDQ .onnx that ONNX Runtime's CPU provider and OpenVINO both run as int8; the
# device picks the engine by measurement (edge.choose). uint8 activations, 7-bit int8 per-channel weights.
register(Variant("onnx-cpu-int8", "onnx-cpu", "onnx-qdq", format="onnx", runtime="ONNX Runtime or OpenVINO (CPU)",
                 quantization="int8 QDQ for CPU engines (static, uint8 activations, per-channel weights)",
                 needs_calibration=True))

DEFAULT_VARIANTS = ("float32", "float16", "dynamic", "int8", "pruned-int8", "qat-int8", "pruned-qat-int8")
QUICK_VARIANTS = ("float32", "int8", "pruned-int8")


def choices() -> tuple[str, ...]:
    """Every name the CLI accepts, families shown as name@SIZE."""
    return (tuple(VARIANTS) + tuple(f"{v.name}@SIZE" for v in VARIANTS.values() if v.sizes)
            + (SLIM_PATTERN, f"{SLIM_PATTERN}@SIZE"))


SLIM_PATTERN = "slimNN-<integer variant>"  # e.g. slim60-int8, slim60-int8@160 (optimize.channels)


def slim_row(name: str) -> Variant | None:
    """The row of a channel-pruned variant `slimNN-<row>`, or None when `name` is not of that form.

    NN (10..95): the percentage of the parent's multiply-accumulates kept, at the same input size;
    <row>: a registered integer (int8) variant that is neither pruned nor quantization-aware, whose
    builder converts the thinned model (int8: LiteRT; onnx-int8, onnx-cpu-int8: ONNX). A slim row comes
    in other input sizes like int8 (`slim60-int8@160`: 60 % of the channels' work, at 160 px).
    Raises VariantError for a slim name with another share or row.
    """
    head, dash, rest = name.partition("-")
    if not (head.startswith("slim") and dash and head[4:].isdigit()):
        return None
    pct, inner = int(head[4:]), VARIANTS.get(rest)
    if not 10 <= pct <= 95:
        raise VariantError(f"variant {name!r}: slimNN keeps NN % of the multiply-accumulates, NN in 10..95")
    if inner is None or not inner.integer or inner.prunes or inner.quantization_aware:
        ok = [v.name for v in VARIANTS.values() if v.integer and not v.prunes and not v.quantization_aware]
        raise VariantError(f"variant {name!r}: slimNN- goes before one of {', '.join(ok)} (e.g. slim60-int8)")
    return Variant(f"slim{pct}-{inner.name}", "slim", inner.conversion, format=inner.format, runtime=inner.runtime,
                   quantization=inner.quantization, prunes=True, needs_finetune_data=True, needs_calibration=True,
                   sizes=True, macs_kept=pct / 100)


def resolve(name: str) -> Variant:
    """The registry row for `name`, a slim row `slimNN-<row>` (slim_row), or a family member `base@px`
    (px in 75..1024). Raises VariantError."""
    name = name.strip()
    if name in VARIANTS:
        return VARIANTS[name]
    if "@" not in name and slim_row(name):
        return slim_row(name)
    if "@" in name:
        base, _, px = name.partition("@")
        row = VARIANTS.get(base) or slim_row(base)
        if row is None or not row.sizes:
            sized = [v.name for v in VARIANTS.values() if v.sizes] + [SLIM_PATTERN]
            raise VariantError(f"variant {name!r}: only {', '.join(sized)} come in other input sizes (e.g. int8@160)")
        if not px.isdigit() or not 75 <= int(px) <= 1024:
            raise VariantError(f"variant {name!r}: input size must be a whole number of pixels in 75..1024")
        return dataclasses.replace(row, name=f"{base}@{int(px)}", input_size=int(px))
    raise VariantError(f"unknown variant {name!r}; choose from {', '.join(choices())}")
