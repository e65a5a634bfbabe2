"""Quantization-aware fine-tuning (tensorflow-model-optimization), optionally preserving sparsity."""

from __future__ import annotations

import numpy as np

from leukedge.tfcompat import tensorflow

from .prune import _remember_surgery, clone_float

_EMA = {}


def _settable_ema_decay():
    """Make tfmot's activation-range EMA decay a variable we can set (it is the literal 0.999 in 0.8.1).

    With 0.999, activation ranges start at +-6 and need thousands of steps to reach the
    real ones; a short CPU fine-tune never gets there and the int8 model is poor. The
    ranges are first warmed up on calibration images with a fast decay instead.
    """
    tf = tensorflow()
    if "var" in _EMA:
        return _EMA["var"]
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops, quantizers

    ema = tf.Variable(0.999, trainable=False, dtype=tf.float32, name="leukedge_qat_ema_decay")

    def call(self, inputs, training, weights, **kwargs):
        return quant_ops.MovingAvgQuantize(
            inputs, weights["min_var"], weights["max_var"], ema_decay=ema, is_training=training,
            num_bits=self.num_bits, per_channel=self.per_axis, symmetric=self.symmetric,
            narrow_range=self.narrow_range)

    quantizers.MovingAverageQuantizer.__call__ = call
    _EMA["var"] = ema
    return ema


def _schemes():
    """tfmot's 8-bit schemes without its Concatenate layout transforms.

    Those transforms reorder the inputs of a Concatenate whose branches end in different
    layer types (tensorflow/model-optimization#1061, open): in InceptionV3 the mixed3 and
    mixed8 blocks (conv, conv, max-pool) come out with permuted channels and the QAT model
    is garbage. Without them each branch keeps its own output range and the concat is
    requantized, which TFLite supports.
    """
    from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
        default_8bit_prune_preserve_quantize_scheme as pp,
    )
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_layout_transform as layout,
        default_8bit_quantize_scheme as d8,
        default_8bit_transforms as t,
    )
    from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations import model_transformer

    class LayoutWithoutConcat(layout.Default8BitQuantizeLayoutTransform):
        def apply(self, model, layer_quantize_map):
            transforms = [
                t.InputLayerQuantize(), t.SeparableConv1DQuantize(), t.SeparableConvQuantize(),
                t.Conv2DReshapeBatchNormReLUQuantize(), t.Conv2DReshapeBatchNormActivationQuantize(),
                t.Conv2DBatchNormReLUQuantize(), t.Conv2DBatchNormActivationQuantize(),
                t.Conv2DReshapeBatchNormQuantize(), t.Conv2DBatchNormQuantize(),
                t.DenseBatchNormQuantize(), t.DenseBatchNormReLUQuantize(), t.DenseBatchNormActivationQuantize(),
                t.LayerReLUQuantize(), t.LayerReluActivationQuantize(),
            ]
            return model_transformer.ModelTransformer(
                model, transforms, set(layer_quantize_map.keys()), layer_quantize_map).transform()

    class Scheme(d8.Default8BitQuantizeScheme):
        def get_layout_transformer(self):
            return LayoutWithoutConcat()

    class PrunePreserveScheme(pp.Default8BitPrunePreserveQuantizeScheme):
        def get_layout_transformer(self):
            return LayoutWithoutConcat()

    return Scheme(), PrunePreserveScheme()


def quantization_aware(model, train_ds, steps: int, lr: float = 1e-5, preserve_sparsity: bool = False,
                       progress: bool = True, calibration: np.ndarray | None = None):
    """Fine-tune a fake-quantized copy of a flat functional model; returns the QAT model.

    preserve_sparsity: pruning-preserving QAT (collaborative optimization), for a model
    that was already pruned, so its zeros survive quantization-aware training.
    calibration: float model inputs used to set activation ranges before fine-tuning.
    A nested model, activity regularizers and standalone BatchNorms are first rewritten by
    optimize.surgery.prepare (steps readable with prune.surgery_steps(result), so the card can list
    them); a layer tfmot cannot quantize raises SurgeryError naming it, before any fine-tune.
    """
    import tensorflow_model_optimization as tfmot

    from .surgery import prepare

    tf = tensorflow()
    prepared, surgery = prepare(model, "qat")
    ema = _settable_ema_decay()
    base = clone_float(prepared)
    scheme, prune_preserve = _schemes()
    annotated = tfmot.quantization.keras.quantize_annotate_model(base)
    qat = tfmot.quantization.keras.quantize_apply(annotated, prune_preserve if preserve_sparsity else scheme)
    for layer in qat.layers:  # BatchNorm statistics stay the parent's (inference mode)
        inner = getattr(layer, "layer", layer)
        if isinstance(inner, tf.keras.layers.BatchNormalization):
            inner.trainable = False
    if calibration is not None and len(calibration):
        ema.assign(0.5)
        for _ in range(2):
            for i in range(0, len(calibration), 16):
                qat(calibration[i:i + 16], training=True)
    ema.assign(0.999)  # warmed-up ranges now only drift slowly during the fine-tune
    qat.compile(optimizer=tf.keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy")
    if steps > 0:
        qat.fit(train_ds.repeat(), steps_per_epoch=int(steps), epochs=1, verbose=1 if progress else 0)
    return _remember_surgery(qat, surgery)
