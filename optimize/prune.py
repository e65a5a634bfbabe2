"""Magnitude pruning with a polynomial sparsity schedule during a short fine-tune, then stripped."""

from __future__ import annotations

import numpy as np

from leukedge.graph import clone_float  # noqa: F401 (re-exported: optimize.run, qat, channels)
from leukedge.tfcompat import tensorflow


def surgery_steps(model) -> list[str]:
    """The graph-surgery steps (optimize.surgery.prepare) that made a pruned or QAT model; [] if none."""
    return list(getattr(model, "_leukedge_surgery", []))


def _remember_surgery(model, steps: list[str]):
    object.__setattr__(model, "_leukedge_surgery", list(steps))  # untracked: not a Keras attribute
    return model


def prune(model, train_ds, sparsity: float, steps: int, lr: float = 1e-5, progress: bool = True):
    """Prune every Conv2D and Dense kernel of a copy of `model` to `sparsity`; returns the stripped model.

    model: a tf-keras model, nested or flat; optimize.surgery.prepare first flattens it, drops activity
    regularizers and folds standalone BatchNorms (steps readable with `surgery_steps(result)`), and
    refuses (SurgeryError, one line naming the layer) what tfmot cannot prune — before any fine-tune.
    train_ds: a batched tf.data pipeline of (float inputs, class index). sparsity: target share of
    zeros per kernel in (0, 1); steps: fine-tune steps (the schedule reaches the target at 70 %).
    """
    import tensorflow_model_optimization as tfmot

    from .surgery import prepare

    tf = tensorflow()
    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity must lie in (0, 1), got {sparsity}")
    prepared, surgery = prepare(model, "prune")
    steps = max(2, int(steps))
    frequency = max(1, steps // 20)
    end_step = max(frequency, (int(steps * 0.7) // frequency) * frequency)
    schedule = tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.0, final_sparsity=sparsity,
                                                    begin_step=0, end_step=end_step, frequency=frequency)
    base = clone_float(prepared)
    for layer in base.layers:  # fine-tune everything but BatchNorm statistics
        layer.trainable = not isinstance(layer, tf.keras.layers.BatchNormalization)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(base, pruning_schedule=schedule)
    pruned.compile(optimizer=tf.keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy")
    # UpdatePruningStep only: no PruningSummaries (needs TensorBoard).
    pruned.fit(train_ds.repeat(), steps_per_epoch=steps, epochs=1, verbose=1 if progress else 0,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    return _remember_surgery(tfmot.sparsity.keras.strip_pruning(pruned), surgery)


def _kernel_layers(model):
    """Every Conv2D / Dense layer, nested models included (a Sequential holding a backbone Model)."""
    tf = tensorflow()
    for layer in model.layers:
        if isinstance(layer, tf.keras.Model):
            yield from _kernel_layers(layer)
        elif isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.Dense)):
            yield layer


def kernel_sparsity(model) -> dict[str, float]:
    """Share of exact zeros in every Conv2D / Dense kernel, nested layers included: {layer name: share}."""
    return {layer.name: float(np.mean(layer.kernel.numpy() == 0)) for layer in _kernel_layers(model)}


def overall_sparsity(model) -> float:
    """Share of exact zeros over all Conv2D / Dense kernel weights together (nested layers included)."""
    zeros = total = 0
    for layer in _kernel_layers(model):
        k = layer.kernel.numpy()
        zeros += int((k == 0).sum())
        total += k.size
    return zeros / total if total else 0.0


def sparsity_report(model, target: float) -> dict:
    """{"target", "overall", "min_kernel", "max_kernel", "kernels", "surgery"} for a pruned model's card
    (kernels counted over nested layers too; surgery: the graph-surgery steps, [] when none)."""
    per_kernel = kernel_sparsity(model)
    return {"target": target, "overall": overall_sparsity(model), "min_kernel": min(per_kernel.values()),
            "max_kernel": max(per_kernel.values()), "kernels": len(per_kernel), "surgery": surgery_steps(model)}
