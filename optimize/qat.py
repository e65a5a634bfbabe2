"""Quantization-aware fine-tuning (tensorflow-model-optimization), optionally preserving sparsity."""

from __future__ import annotations

from leukedge.train.tfcompat import tensorflow

from .prune import clone_float


def quantization_aware(model, train_ds, steps: int, lr: float = 1e-5, preserve_sparsity: bool = False,
                       progress: bool = True):
    """Fine-tune a fake-quantized copy of a flat functional model; returns the QAT model.

    preserve_sparsity: pruning-preserving QAT (collaborative optimization), for a model
    that was already pruned, so its zeros survive quantization-aware training.
    """
    import tensorflow_model_optimization as tfmot

    tf = tensorflow()
    base = clone_float(model)
    if preserve_sparsity:
        annotated = tfmot.quantization.keras.quantize_annotate_model(base)
        qat = tfmot.quantization.keras.quantize_apply(
            annotated, tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme())
    else:
        qat = tfmot.quantization.keras.quantize_model(base)
    qat.compile(optimizer=tf.keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy")
    if steps > 0:
        qat.fit(train_ds.repeat(), steps_per_epoch=int(steps), epochs=1, verbose=1 if progress else 0)
    return qat
