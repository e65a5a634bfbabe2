"""Keras model -> ONNX (tf2onnx), and float ONNX -> QDQ int8 that TensorRT builds explicit int8 from.

Two steps, each returning the dict its model card records:
- `export_onnx`: the float tf-keras parent through tf2onnx, input kept NHWC (tf2onnx's default for
  Keras), so the device's preprocessing and lookup table are the same as for TFLite; batch fixed
  to 1, so TensorRT builds one static-shape engine when the session opens.
- `quantize_qdq`: static post-training quantization with ONNX Runtime's quantizer in QDQ format
  (QuantizeLinear/DequantizeLinear pairs), placed the way TensorRT's explicit int8 wants it
  (TensorRT developer guide, "Q/DQ placement recommendations"; NVIDIA ModelOpt's TensorRT-guided
  options for `quantize_static`; the comments in ONNX Runtime's qdq_quantizer.py):
  * int8 activations and weights, both symmetric: every zero point is 0 (TensorRT's only int8 mode;
    the `quantize_static` docstring: "symmetric QInt8 for both ... when targeting GPU/TRT");
  * Q/DQ on the inputs of the weighted ops only (Conv, MatMul, Gemm), never on their outputs, so
    TensorRT fuses Conv+BN+ReLU and chooses where to requantize;
  * weights stay float behind a Q/DQ pair, per output channel (TensorRT quantizes them when it
    builds the engine; accepted by TensorRT 8.6 and 10); biases stay float (TensorRT wants float bias);
  * one dedicated Q/DQ pair per consumer (TensorRT cannot use a pair shared between nodes);
  * MinMax calibration (as the TFLite converter's int8 calibration), no reduced range.
  The model keeps float32 input and output. On ONNX Runtime's CPU provider this model runs as
  simulated int8 (float kernels with quantize/dequantize steps): right for checking agreement,
  not faster than float there. The fast CPU path stays LiteRT int8.

The calibration inputs are float32 model inputs (N, H, W, 3) made by the caller with the same
decode and normalization as the TFLite int8 calibration (`optimize.run` passes `calib_x`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from leukedge.edge.errors import LeukedgeError

DEFAULT_OPSET = 17
# Ops whose inputs get Q/DQ (TensorRT's recommendation: quantize the inputs of weighted ops).
QUANTIZED_OP_TYPES = ("Conv", "MatMul", "Gemm")
# ONNX Runtime's quantize_static options for TensorRT's explicit int8 (see the module docstring).
TENSORRT_EXTRA_OPTIONS = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OP_TYPES),
    "AddQDQPairToWeight": True,
    "QuantizeBias": False,
    "DedicatedQDQPair": True,
    "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "MatMul": 1, "Gemm": 0},
}


class OnnxExportError(LeukedgeError, ValueError):
    """An ONNX export or quantization that cannot be done as asked; the message says why."""


def _require(module: str, extra: str = "train"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise OnnxExportError(f"ONNX export needs {module} ({exc}); install the workstation extra: "
                              f"pip install 'leukedge[{extra}]'") from None


def export_onnx(keras_model, path: str | os.PathLike, opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Convert a float tf-keras model to ONNX with tf2onnx and write it to `path`.

    keras_model: one image input (None, H, W, 3) float32, one output (None, n_labels).
    path: the .onnx file to write (parent folders are created). opset: the ONNX opset (17 by
    default: supported by tf2onnx 1.17, by ONNX Runtime >= 1.14 and by TensorRT 8.6 and 10).
    The input keeps NHWC layout (tf2onnx inserts the transpose to the NCHW convolutions inside
    the graph) and a batch of 1.
    Returns the card's "onnx" description: {"opset", "input_name", "output_name", "layout": "NHWC",
    "input_shape": [1, H, W, 3], "output_shape": [1, n], "converter": "tf2onnx <version>",
    "onnx_version": <onnx package version>, "ir_version"}.
    Raises OnnxExportError for a model that is not one NHWC image in, one vector out, or when
    tf2onnx/onnx are not installed.
    """
    from leukedge.tfcompat import tensorflow

    tf = tensorflow()
    tf2onnx = _require("tf2onnx")
    onnx = _require("onnx")
    if len(keras_model.inputs) != 1 or len(keras_model.outputs) != 1:
        raise OnnxExportError(f"ONNX export expects one input and one output, the model has "
                              f"{len(keras_model.inputs)} and {len(keras_model.outputs)}")
    in_shape = tuple(keras_model.inputs[0].shape)
    if len(in_shape) != 4 or in_shape[3] != 3 or None in in_shape[1:]:
        raise OnnxExportError(f"ONNX export expects an NHWC image input (None, H, W, 3), the model has {in_shape}")
    names = getattr(keras_model, "input_names", None) or ["image"]
    spec = (tf.TensorSpec((1, int(in_shape[1]), int(in_shape[2]), 3), tf.float32, name=str(names[0])),)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        proto, _ = tf2onnx.convert.from_keras(keras_model, input_signature=spec, opset=int(opset))
    except Exception as exc:  # tf2onnx raises plain Exceptions/ValueErrors from deep inside
        text = str(exc).strip().splitlines()
        raise OnnxExportError(f"tf2onnx {tf2onnx.__version__} could not convert the model at opset {opset}: "
                              f"{text[0] if text else type(exc).__name__}") from None
    onnx.save(proto, str(out))
    graph = proto.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]

    def dims(value_info) -> list:
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in value_info.type.tensor_type.shape.dim]

    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), int(opset))
    return {
        "opset": int(opset_used),
        "input_name": inputs[0].name,
        "output_name": graph.output[0].name,
        "layout": "NHWC",
        "input_shape": dims(inputs[0]),
        "output_shape": dims(graph.output[0]),
        "converter": f"tf2onnx {tf2onnx.__version__}",
        "onnx_version": onnx.__version__,
        "ir_version": int(proto.ir_version),
    }


class _Calibration:
    """onnxruntime CalibrationDataReader over float32 inputs (N, H, W, 3), one image per call."""

    def __init__(self, input_name: str, inputs: np.ndarray):
        self.input_name = input_name
        self.inputs = inputs
        self.i = 0

    def get_next(self):
        if self.i >= len(self.inputs):
            return None
        x = self.inputs[self.i:self.i + 1]
        self.i += 1
        return {self.input_name: x}

    def rewind(self):
        self.i = 0


def quantize_qdq(float_onnx_path: str | os.PathLike, out_path: str | os.PathLike, calibration_inputs: np.ndarray,
                 per_channel: bool = True) -> dict[str, Any]:
    """Static QDQ int8 quantization of a float ONNX model, ready for TensorRT's explicit int8.

    float_onnx_path: a model from export_onnx (batch 1, NHWC). out_path: the QDQ .onnx to write.
    calibration_inputs: float32 (N, H, W, 3), N >= 1, normalized exactly as the device normalizes
    (the same images and preprocessing as the TFLite int8 calibration). per_channel: one weight
    scale per output channel (True, as TensorRT and the TFLite int8 converter do) or per tensor.
    The model is first pre-processed (`quant_pre_process`: graph optimization and ONNX shape
    inference; the symbolic shape inference, which needs sympy, is skipped: every shape is static).
    Inputs, outputs, biases and the final Softmax stay float32.
    Returns the recipe for the card: {"format": "QDQ", "tool", "activations", "weights",
    "quantized_op_types", "calibration_method", "calibration_images", "reduce_range", "options",
    "pre_process", "target"}.
    Raises OnnxExportError for calibration inputs of the wrong shape or dtype, or when onnxruntime
    or onnx is missing.
    """
    ort = _require("onnxruntime")
    onnx = _require("onnx")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src = Path(float_onnx_path)
    x = _checked_calibration(onnx, src, calibration_inputs)
    inp_name = _input_name(onnx, src)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="leukedge-qdq-") as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(out), _Calibration(inp_name, np.ascontiguousarray(x)),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=bool(per_channel),
            reduce_range=False,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=list(QUANTIZED_OP_TYPES),
            extra_options=TENSORRT_EXTRA_OPTIONS,
        )
    return {
        "format": "QDQ",
        "tool": f"onnxruntime.quantization {ort.__version__}",
        "activations": {"type": "int8", "symmetric": True, "granularity": "per-tensor"},
        "weights": {"type": "int8", "symmetric": True, "granularity": "per-channel" if per_channel else "per-tensor",
                    "stored": "float with a Q/DQ pair"},
        "quantized_op_types": list(QUANTIZED_OP_TYPES),
        "calibration_method": "MinMax",
        "calibration_images": int(len(x)),
        "reduce_range": False,
        "options": {k: v for k, v in TENSORRT_EXTRA_OPTIONS.items()},
        "pre_process": "quant_pre_process (optimization + ONNX shape inference, no symbolic shape inference)",
        "target": "TensorRT explicit int8 (Q/DQ on weighted-op inputs, zero points 0); "
                  "simulated int8 on ONNX Runtime's CPU provider",
    }


# -- CPU int8: one QDQ .onnx that ONNX Runtime's CPU provider and OpenVINO both run as int8 --------------------
#
# Unlike the TensorRT recipe above, this is ONNX Runtime's own CPU layout (its quantization guide: QDQ format,
# uint8 activations with a zero point, int8 per-channel weights stored as int8 behind a DequantizeLinear,
# Q/DQ around every op it can quantize, so Conv -> Relu -> MaxPool -> Concat stay in int8 and ONNX Runtime
# fuses them into QLinearConv/QLinear* kernels, and OpenVINO's low-precision transformations do the same).
# The activation/weight types were chosen by measurement on InceptionV3 at 224 px
# (benchmarks/results/engines-224.json, "types" section): see CPU_TYPES.
#
# reduce_range (7-bit weights): without VNNI, x86 int8 convolutions multiply u8 x s8 pairs with VPMADDUBSW,
# whose 16-bit sums of two products can saturate (ONNX Runtime's quantization guide, "When and why do I need
# to try U8U8?"; oneDNN halves the weights internally for the same reason). Lab PCs beside microscopes are
# mostly AVX2 without VNNI, so the variant is safe there by construction.

CPU_TYPES = {"activations": "uint8", "weights": "int8", "reduce_range": True}
_QUANT_TYPES = {"uint8": "QUInt8", "int8": "QInt8"}


def quantize_qdq_cpu(float_onnx_path: str | os.PathLike, out_path: str | os.PathLike, calibration_inputs: np.ndarray,
                     activations: str = CPU_TYPES["activations"], weights: str = CPU_TYPES["weights"],
                     reduce_range: bool = CPU_TYPES["reduce_range"]) -> dict[str, Any]:
    """Static QDQ int8 quantization of a float ONNX model for CPU engines (ONNX Runtime's CPU provider, OpenVINO).

    float_onnx_path: a model from export_onnx (batch 1, NHWC). out_path: the QDQ .onnx to write.
    calibration_inputs: float32 (N, H, W, 3), N >= 1, normalized as the device normalizes (the same images
    and preprocessing as the TFLite int8 calibration). activations: "uint8" (asymmetric, zero point from
    the calibrated range) or "int8"; weights: "int8" (symmetric, per output channel) or "uint8".
    reduce_range: 7-bit weights (see the comment above CPU_TYPES).
    Every op ONNX Runtime can quantize gets Q/DQ (Conv, MatMul, Gemm, pooling, Concat, ...; cpu_op_types)
    except the classifier head (head_nodes: the last matrix product, its bias and a final Softmax stay
    float32, so the output keeps float resolution); weights are stored as integers, biases as int32;
    inputs and outputs are float32.
    MinMax calibration, as the TFLite int8 converter.
    Returns the recipe for the card: {"format": "QDQ", "tool", "activations", "weights", "quantized_op_types",
    "calibration_method", "calibration_images", "reduce_range", "float_head", "pre_process", "target", "engines"}.
    Raises OnnxExportError for calibration inputs of the wrong shape or dtype, an unknown type, or when
    onnxruntime or onnx is missing.
    """
    ort = _require("onnxruntime")
    onnx = _require("onnx")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    for what, t in (("activations", activations), ("weights", weights)):
        if t not in _QUANT_TYPES:
            raise OnnxExportError(f"{what} type {t!r}: choose uint8 or int8")
    src = Path(float_onnx_path)
    x = _checked_calibration(onnx, src, calibration_inputs)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    inp_name = _input_name(onnx, src)
    with tempfile.TemporaryDirectory(prefix="leukedge-qdq-cpu-") as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        head = head_nodes(onnx.load(str(pre), load_external_data=False))
        quantize_static(
            str(pre), str(out), _Calibration(inp_name, np.ascontiguousarray(x)),
            quant_format=QuantFormat.QDQ,
            activation_type=getattr(QuantType, _QUANT_TYPES[activations]),
            weight_type=getattr(QuantType, _QUANT_TYPES[weights]),
            per_channel=True,
            reduce_range=bool(reduce_range),
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=cpu_op_types(),
            nodes_to_exclude=head,
        )
    quantized = sorted({n.op_type for n in onnx.load(str(out), load_external_data=False).graph.node
                        if any(i.endswith("_DequantizeLinear_Output") for i in n.input)})
    return {
        "format": "QDQ",
        "tool": f"onnxruntime.quantization {ort.__version__}",
        "activations": {"type": activations, "symmetric": False, "granularity": "per-tensor"},
        "weights": {"type": weights, "symmetric": True, "granularity": "per-channel", "stored": weights,
                    "bits": 7 if reduce_range else 8},
        "quantized_op_types": quantized,
        "calibration_method": "MinMax",
        "calibration_images": int(len(x)),
        "reduce_range": bool(reduce_range),
        "float_head": head,
        "pre_process": "quant_pre_process (optimization + ONNX shape inference, no symbolic shape inference)",
        "target": "CPU int8: ONNX Runtime's CPU provider (QLinear kernels) and OpenVINO's CPU plugin",
        "engines": ["onnxruntime", "openvino"],
    }


# Ops whose output is a probability or a decision: never quantized (a uint8 softmax output has 1/256 steps
# and rows that do not sum to 1).
_NEVER_QUANTIZED = ("Softmax", "Sigmoid", "ArgMax")
# Ops between the last weighted op and the model output (tf2onnx writes a Dense as MatMul + Add).
_HEAD_OPS = ("Softmax", "Sigmoid", "Add", "Identity", "Reshape", "Squeeze", "Flatten")


def cpu_op_types() -> list[str]:
    """The op types quantize_qdq_cpu quantizes: every type ONNX Runtime's QDQ and QLinear registries know
    (what quantize_static quantizes by default), less _NEVER_QUANTIZED."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted((set(QDQRegistry) | set(QLinearOpsRegistry)) - set(_NEVER_QUANTIZED))


def head_nodes(model) -> list[str]:
    """Names of the nodes from the last weighted op (MatMul/Gemm) to each graph output, left in float.

    So the model's output (logits for optimize's variants; probabilities for a softmax model) keeps float
    resolution: the temperature fit, P and the golden set see the network's own values, not 8-bit steps.
    The classifier head is one small matrix product (2048 x 2 for InceptionV3): its cost is nil.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    names: list[str] = []
    for out in model.graph.output:
        node = producer.get(out.name)
        while node is not None:
            names.append(node.name)
            if node.op_type in ("MatMul", "Gemm") or node.op_type not in _HEAD_OPS:
                break
            node = next((producer[i] for i in node.input if i in producer), None)
    return [n for n in dict.fromkeys(names) if n]


def _input_name(onnx, src: Path) -> str:
    model = onnx.load(str(src), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits][0].name


def _checked_calibration(onnx, src: Path, calibration_inputs: np.ndarray) -> np.ndarray:
    """calibration_inputs as float32 (N, H, W, 3) matching src's input; raises OnnxExportError otherwise."""
    model = onnx.load(str(src), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inp = [i for i in model.graph.input if i.name not in inits][0]
    shape = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    x = np.asarray(calibration_inputs)
    if x.dtype != np.float32:
        raise OnnxExportError(f"calibration inputs must be float32 model inputs, got {x.dtype}")
    if x.ndim != 4 or len(x) < 1 or list(x.shape[1:]) != shape[1:]:
        raise OnnxExportError(f"calibration inputs must be (N>=1, {', '.join(map(str, shape[1:]))}) for {src.name}, "
                              f"got {x.shape}")
    if not np.isfinite(x).all():
        raise OnnxExportError("calibration inputs hold NaN or infinite values")
    return x
