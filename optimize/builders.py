"""How each optimized variant is built: the BuildContext the builders share and one builder per registry
`builder` key (convert, prune, qat, prune+qat, onnx), registered in optimize.variants.BUILDERS.

A builder takes (context, variant row, output path), writes the model file and returns its `optimization`
entry for the card, with "output": "logits" when it removed the parent's final softmax.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leukedge.edge.card import ModelCard
from leukedge.edge.preprocess import normalize
from leukedge.evaluation import decode_samples
from leukedge.tfcompat import tensorflow

from .convert import representative_from, to_tflite
from .variants import BUILDERS, Variant


@dataclass
class BuildContext:
    """What builders share: the parent, data loaders, options, and models built once for several variants."""

    model: object
    card: ModelCard
    opts: object  # optimize.run.OptimizeOptions
    split: object
    ds_labels: list[str]
    calib_samples: list
    cache: dict

    def prep(self, size: int | None = None):
        return dataclasses.replace(self.card.preprocessing, size=size or self.card.preprocessing.size)

    def calibration_inputs(self, size: int | None = None) -> np.ndarray:
        """float32 model inputs (N, S, S, 3) of the calibration set at `size`, decoded once per size."""
        key = ("calib", size)
        if key not in self.cache:
            prep = self.prep(size)
            self.cache[key] = normalize(decode_samples(self.calib_samples, prep, what="calibration images").images, prep)
        return self.cache[key]

    def finetune_data(self, size: int | None = None):
        """A shuffled, augmented tf.data pipeline over the training part at `size` (decoded once per size)."""
        key = ("train", size)
        if key not in self.cache:
            from leukedge.train.pipeline import make_dataset

            prep = self.prep(size)
            arrays = decode_samples(self.split.parts["train"], prep, what="fine-tune images")
            arrays = arrays.in_label_order(self.ds_labels, self.card.labels)
            self.cache[key] = make_dataset(arrays, prep, self.opts.finetune_batch, training=True, seed=self.opts.seed)
        return self.cache[key]

    def logits(self, model):
        """`model` with its final softmax removed (a clone sharing no variables), so exported variants
        output logits and the device applies softmax with the card's temperature. Returns (model, output kind):
        'logits' for the clone; a model whose last layer is not a softmax Dense is returned as it is, with
        the output kind its parent's card declares (a logits head stays 'logits': issue 18)."""
        tf = tensorflow()
        last = model.layers[-1]
        if not isinstance(last, tf.keras.layers.Dense) or last.get_config().get("activation") != "softmax":
            return model, self.card.output
        key = ("logits", id(model))
        if key not in self.cache:
            def clone(layer):
                cfg = layer.get_config()
                if layer is last:
                    cfg["activation"] = "linear"
                return layer.__class__.from_config(cfg)

            copy = tf.keras.models.clone_model(model, clone_function=clone)
            copy.set_weights(model.get_weights())
            self.cache[key] = (copy, model)  # keep `model` alive so its id stays unique
        return self.cache[key][0], "logits"

    def pruned(self):
        if "pruned" not in self.cache:
            from .prune import prune, sparsity_report

            pruned = prune(self.model, self.finetune_data(), self.opts.sparsity, self.opts.prune_steps,
                           self.opts.prune_lr, progress=sys.stderr.isatty())
            self.cache["pruned"] = (pruned, {**sparsity_report(pruned, self.opts.sparsity),
                                             "schedule": "polynomial decay 0 -> target over 70% of steps",
                                             "finetune_steps": self.opts.prune_steps,
                                             "finetune_lr": self.opts.prune_lr})
        return self.cache["pruned"]


def _model_at_size(ctx: BuildContext, size: int):
    """The parent's weights at another input size, recovered there (optimize.recover: BatchNorm
    re-estimation, then up to resize_steps of distillation from the parent, early-stopped on validation)."""
    key = ("resized", size)
    if key not in ctx.cache:
        from .channels import at_size, count_macs, count_params
        from .recover import recover_in_context

        resized, recovery = recover_in_context(ctx, at_size(ctx.model, size), size, ctx.opts.resize_steps,
                                               ctx.opts.resize_lr)
        info = {"input_size": size, "from_size": ctx.card.preprocessing.size, "finetune_steps": ctx.opts.resize_steps,
                "finetune_lr": ctx.opts.resize_lr, "macs": count_macs(resized), "params": count_params(resized),
                "recovery": recovery}
        ctx.cache[key] = (resized, info)
    return ctx.cache[key]


def _depthwise_pools(ctx: BuildContext) -> bool:
    """--int8-pools depthwise: full-integer models run their average pools as depthwise convolutions."""
    return ctx.opts.int8_pools == "depthwise"


def _build_convert(ctx: BuildContext, v: Variant, path: Path) -> dict:
    model, info = ctx.model, {}
    if v.input_size and v.input_size != ctx.card.preprocessing.size:
        model, resized = _model_at_size(ctx, v.input_size)
        info["resized"] = resized
    model, info["output"] = ctx.logits(model)
    rep = representative_from(ctx.calibration_inputs(v.input_size)) if v.needs_calibration else None
    path.write_bytes(to_tflite(model, v.conversion, rep, io=ctx.opts.io, pools_as_depthwise=_depthwise_pools(ctx)))
    return info


def _build_prune(ctx: BuildContext, v: Variant, path: Path) -> dict:
    pruned, report = ctx.pruned()
    model, output = ctx.logits(pruned)
    path.write_bytes(to_tflite(model, v.conversion, representative_from(ctx.calibration_inputs()), io=ctx.opts.io,
                               pools_as_depthwise=_depthwise_pools(ctx)))
    return {"pruning": report, "output": output}


def _build_qat(ctx: BuildContext, v: Variant, path: Path) -> dict:
    from .qat import quantization_aware

    info = {"output": ctx.card.output}  # QAT keeps the parent's head: its card's output kind, whatever it is
    base = ctx.model
    if v.prunes:
        base, info["pruning"] = ctx.pruned()
    qat = quantization_aware(base, ctx.finetune_data(), ctx.opts.qat_steps, ctx.opts.qat_lr,
                             preserve_sparsity=v.prunes, progress=sys.stderr.isatty(),
                             calibration=ctx.calibration_inputs())
    from .prune import surgery_steps

    info["qat"] = {"steps": ctx.opts.qat_steps, "lr": ctx.opts.qat_lr,
                   "scheme": "Default8BitPrunePreserveQuantizeScheme" if v.prunes else "Default8BitQuantizeScheme",
                   "surgery": surgery_steps(qat)}
    path.write_bytes(to_tflite(qat, "qat", representative_from(ctx.calibration_inputs()), io=ctx.opts.io))
    return info


def _build_onnx(ctx: BuildContext, v: Variant, path: Path) -> dict:
    """ONNX rows: float32 as exported, or QDQ int8 from a temporary float export, quantized for TensorRT
    (builder 'onnx': onnx_export.quantize_qdq) or for CPU engines (builder 'onnx-cpu': quantize_qdq_cpu)."""
    from .onnx_export import export_onnx, quantize_qdq, quantize_qdq_cpu

    model, output = ctx.logits(ctx.model)
    if v.conversion == "onnx-float32":
        return {"onnx": export_onnx(model, path), "output": output}
    quantize = quantize_qdq_cpu if v.builder == "onnx-cpu" else quantize_qdq
    float_path = path.with_name(path.stem + ".float-tmp.onnx")
    try:
        desc = export_onnx(model, float_path)
        recipe = quantize(float_path, path, ctx.calibration_inputs())
    finally:
        float_path.unlink(missing_ok=True)
    return {"onnx": {**desc, "quantization": recipe}, "output": output}


BUILDERS.update({"convert": _build_convert, "prune": _build_prune, "qat": _build_qat, "prune+qat": _build_qat,
                 "onnx": _build_onnx, "onnx-cpu": _build_onnx,
                 "slim": lambda ctx, v, path: __import__(
                     "leukedge.optimize.channels", fromlist=["build_slim"]).build_slim(ctx, v, path)})
