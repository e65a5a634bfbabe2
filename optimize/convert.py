"""Keras model -> TFLite bytes, in every quantization mode leukedge ships."""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from leukedge.tfcompat import tensorflow

IO_TYPES = ("int8", "uint8", "float32")
# What to_tflite(pools_as_depthwise=True) changes in a model's graph before full-integer conversion (recorded in
# the int8 card's provenance): stride-1 'same' average pools become depthwise convolutions, after the 1x1
# convolution they fed (optimize.pooling).
INT8_REWRITES = ("average_pool_as_depthwise_conv", "pointwise_conv_before_average_pool")


def to_tflite(model, mode: str, representative: Callable[[], Iterable[list[np.ndarray]]] | None = None,
              io: str = "int8", pools_as_depthwise: bool = False) -> bytes:
    """The TFLite flatbuffer of the tf-keras `model`, as bytes.

    mode: float32 | float16 | dynamic | int8 (full-integer; needs `representative`, a generator of [(1, H, W, 3)
    float32] model inputs) | qat (a quantization-aware model; `representative` optional). io: the int8/qat
    model's input and output type (int8 | uint8 | float32). pools_as_depthwise: in int8 mode, convert the
    model's stride-1 'same' average pools as depthwise convolutions (optimize.pooling: float-exact; XNNPACK
    has no int8 average pool, so this makes the int8 model 1.5-2x faster, but its int8 outputs are then no
    longer bit-identical between x86 and aarch64: off by default, optimize's --int8-pools). Raises ValueError for an unknown mode
    or io, or int8 without `representative`."""
    tf = tensorflow()
    if mode == "int8" and pools_as_depthwise:
        from .pooling import pools_as_depthwise as rewrite

        model = rewrite(model)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode == "float32":
        pass
    elif mode == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode == "int8":
        if representative is None:
            raise ValueError("full-integer quantization needs a representative dataset")
        if io not in IO_TYPES:
            raise ValueError(f"--io must be one of {IO_TYPES}")
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_dtype = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}[io]
        conv.inference_input_type = io_dtype
        conv.inference_output_type = io_dtype
    elif mode == "qat":
        # A quantization-aware model carries its own ranges; only IO types are chosen here.
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if representative is not None:
            conv.representative_dataset = representative
        io_dtype = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}[io]
        conv.inference_input_type = io_dtype
        conv.inference_output_type = io_dtype
    else:
        raise ValueError(f"unknown conversion mode {mode!r}")
    if mode not in ("int8", "qat"):
        return conv.convert()
    import warnings

    with warnings.catch_warnings():
        # TensorFlow's converter checks for fixed input statistics (mean/std) before calibrating, finds an
        # int8/uint8 input type, and warns "Statistics for quantized inputs were expected, but not specified;
        # continuing anyway." Those statistics belong to the old TOCO path; here the calibrator sets the
        # input's scale and zero point from the representative images (the card records them), so the
        # line is noise on every int8 conversion. Only that message is silenced.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected", category=UserWarning)
        return conv.convert()


def representative_from(inputs: np.ndarray) -> Callable[[], Iterable[list[np.ndarray]]]:
    """Calibration generator over float32 model inputs (N, H, W, 3), one image per step."""

    def gen():
        for x in inputs:
            yield [x[None].astype(np.float32)]

    return gen
