"""Structured (channel) pruning: remove whole filters, so the dense int8 kernels do less work.

`pruned-int8` (optimize/prune.py) zeroes half of every kernel; its file gzips smaller, but LiteRT's
and ONNX Runtime's int8 kernels are dense and run it no faster. Here a convolution's least important
filters are removed, together with everything that carried their channels: the BatchNorm entries
that follow, and the matching input slices of every layer that consumes them, through pooling, the
Inception blocks' concatenations, global pooling and the head's Dense. The result is an ordinary,
thinner Keras model (same layer names, same graph) that every converter handles as it handles the
parent.

Steps, each a function:

1. `channel_graph(model)`: which Conv2D filters can be removed, and which input channels of each
   layer they become. A tensor's channels are described as segments `(source layer, count)`;
   channel-wise layers pass segments through, a channel concatenation joins them, a Conv2D or Dense
   starts a new one. A source is *frozen* (never pruned) when its channels reach something that
   mixes or reshapes channels in a way slicing cannot follow: element-wise Add/Multiply between
   branches, Flatten/Reshape of a spatial tensor, a softmax over channels, a grouped convolution, a
   layer this module does not know, or a model output.
2. `importance(...)`: one score per filter, by a named criterion (CRITERIA).
3. `plan(...)`: how many filters each prunable convolution keeps so that the model keeps a given
   share of its multiply-accumulates, and which ones (the highest-scoring).
4. `apply_plan(model, keep)`: the thinner model with its weights sliced.

The steps live in their own modules: optimize.channel_graph (step 1 and the MAC count),
optimize.channel_importance (steps 2 and 3), optimize.channel_surgery (step 4); their public names
are re-exported here. `slim(...)` does all four. `build_slim` is the optimize step's builder for the
`slimNN-...` rows of the variant registry (optimize.variants), recovery fine-tune included
(optimize.recover).

Multiply-accumulates (MACs) are counted per inference of one image (batch 1) at the model's input
size: Conv2D out_h*out_w*kh*kw*in/groups*out, DepthwiseConv2D out_h*out_w*kh*kw*channels*multiplier,
Dense (leading dims)*in*out. BatchNorm is not counted (converters fold it into the convolution) and
neither are pooling, activations or concatenation (memory-bound, no multiplies to speak of).
"""

from __future__ import annotations

import time

import numpy as np

from leukedge.tfcompat import tensorflow

from .channel_graph import (  # noqa: F401 - re-exported: leukedge.optimize.channels is the public face
    ChannelError,
    ChannelGraph,
    Segments,
    channel_graph,
    count_macs,
    count_params,
    layer_class,
)
from .channel_importance import ALIGN, CRITERIA, DEFAULT_CRITERION, ChannelPlan, importance, plan  # noqa: F401
from .channel_surgery import apply_plan  # noqa: F401

__all__ = ["ALIGN", "CHANNEL_TILES", "CRITERIA", "DEFAULT_CRITERION", "ChannelError", "ChannelGraph", "ChannelPlan",
           "Segments", "apply_plan", "at_size", "build_slim", "channel_graph", "channel_tile_for", "count_macs",
           "count_params", "importance", "plan", "slim", "slim_model"]


# -- all steps ----------------------------------------------------------------------------------------

def slim(model, macs_kept: float, criterion: str = DEFAULT_CRITERION, images: np.ndarray | None = None,
         labels: np.ndarray | None = None, output: str = "probabilities", align: int = ALIGN,
         scores: dict[str, np.ndarray] | None = None, tile: int = 0):
    """A thinner copy of `model` keeping at most `macs_kept` of its multiply-accumulates, and a report.

    model: a tf-keras model (a nested one is flattened first: leukedge.graph.flatten).
    macs_kept: share in (0, 1]; criterion, images, labels, output: see importance(); scores: reuse
    scores computed before for the same model (then criterion is only recorded). align, tile: how kept
    filter counts are rounded (plan(); tile: the target processor's int8 channel tile, 0 for none; the
    report's "align" is None when a tile replaces it).
    Returns (model, report) with report = {"criterion", "allocation", "align", "tile", "width", "macs_kept_target",
    "macs_kept", "macs_before", "macs", "params_before", "params", "convolutions_pruned",
    "convolutions_frozen", "filters_before", "filters", "seconds"}; MACs at the model's input size.
    Raises ChannelError (see channel_graph, importance, plan).
    """
    from leukedge.graph import flatten

    t0 = time.perf_counter()
    flat, _ = flatten(model)
    graph = channel_graph(flat)
    if scores is None:
        scores = importance(graph, criterion, images, labels, output)
    p = plan(graph, macs_kept, scores, align, tile)
    thin = apply_plan(graph, p.keep)
    report = {
        "criterion": criterion, "allocation": p.allocation, "align": None if p.tile else p.align, "tile": p.tile,
        "width": round(p.width, 4),
        "macs_kept_target": macs_kept, "macs_kept": round(p.macs_kept, 4), "macs_before": p.macs_before,
        "macs": count_macs(thin), "params_before": count_params(flat), "params": count_params(thin),
        "convolutions_pruned": sum(1 for c in graph.prunable if len(p.keep[c]) < graph.filters[c]),
        "convolutions_frozen": sorted(s for s in graph.frozen if s in graph.filters and
                                      layer_class(flat.get_layer(s)) == "Conv2D"),
        "filters_before": int(sum(graph.filters[c] for c in graph.prunable)),
        "filters": int(sum(len(p.keep[c]) for c in graph.prunable)), "seconds": round(time.perf_counter() - t0, 1),
    }
    return thin, report


def at_size(model, size: int):
    """`model`'s graph and weights at another square input size (fully convolutional + global pooling).

    Returns a new tf-keras model with its own variables. Raises ChannelError when the graph needs a
    fixed size (e.g. a Flatten before the head).
    """
    tf = tensorflow()
    if tuple(model.input_shape[1:3]) == (size, size):
        return model
    try:
        resized = tf.keras.models.clone_model(model, input_tensors=tf.keras.layers.Input((size, size, 3)))
        resized.set_weights(model.get_weights())
    except (ValueError, TypeError) as exc:
        raise ChannelError(f"model {model.name!r} cannot run at {size} px: {(str(exc).splitlines() or [''])[0]}") \
            from None
    return resized


# -- the optimize step's builder ------------------------------------------------------------------------

CHANNEL_TILES = ("none", "auto", "8", "16", "32", "64")


def channel_tile_for(option: str) -> int:
    """The channel tile optimize's `--channel-tile` option names, as plan()'s `tile` argument.

    option: "none" (0: the portable rounding, ALIGN), "auto" (this machine's processor:
    leukedge.edge.machine.int8_channel_tile - right when the model will run on the same class of
    processor that optimizes it), or a tile in channels ("8", "16", "32", "64").
    Raises ChannelError for any other value.
    """
    if option == "none":
        return 0
    if option == "auto":
        from leukedge.edge.machine import int8_channel_tile

        return int8_channel_tile()
    if option in CHANNEL_TILES:
        return int(option)
    raise ChannelError(f"channel tile {option!r}: choose from {', '.join(CHANNEL_TILES)}")


def _calibration_labels(ctx) -> np.ndarray:
    """Class indices, in the parent's output order, of ctx's calibration samples (dataset order -> card order)."""
    remap = [list(ctx.card.labels).index(name) for name in ctx.ds_labels]
    return np.asarray([remap[s.label] for s in ctx.calib_samples], np.int64)


def slim_model(ctx, macs_kept: float, size: int | None = None, criterion: str = DEFAULT_CRITERION):
    """The parent thinned to `macs_kept` of its MACs, at `size` px, recovered (optimize.recover); cached in ctx.

    Filters are chosen once per share at the parent's size (scores on the calibration images, once per
    criterion); the thin model is then moved to `size` and recovered there against the parent at its
    own size. ctx: optimize.builders.BuildContext; its options' prune_steps / prune_lr set the recovery's
    steps and peak learning rate, channel_tile the processor tile the counts are rounded to
    (channel_tile_for). Returns (tf-keras model, info dict for the card).
    """
    parent_size = ctx.card.preprocessing.size
    size = size or parent_size
    tile = channel_tile_for(getattr(ctx.opts, "channel_tile", "none"))
    key = ("slim", macs_kept, size, criterion, tile)
    if key in ctx.cache:
        return ctx.cache[key]
    from .recover import recover_in_context

    skey = ("slim-scores", criterion)
    if skey not in ctx.cache:
        from leukedge.graph import flatten

        t0 = time.perf_counter()
        graph = channel_graph(flatten(ctx.model)[0])
        scores = importance(graph, criterion, ctx.calibration_inputs() if criterion == "taylor" else None,
                            _calibration_labels(ctx) if criterion == "taylor" else None, output=ctx.card.output)
        ctx.cache[skey] = (scores, round(time.perf_counter() - t0, 1))
    scores, score_s = ctx.cache[skey]
    thin, report = slim(ctx.model, macs_kept, criterion, scores=scores, tile=tile)
    report["importance"] = {"criterion": criterion, "images": len(ctx.calib_samples) if criterion == "taylor" else 0,
                            "source": "the calibration set" if criterion == "taylor" else "weights only",
                            "seconds": score_s}
    student = at_size(thin, size)
    student, recovery = recover_in_context(ctx, student, size, ctx.opts.prune_steps, ctx.opts.prune_lr)
    info = {"channels": report, "recovery": recovery, "input_size": size,
            "macs": count_macs(student), "params": count_params(student),
            "parent_macs": count_macs(at_size(ctx.model, size)) if size != parent_size else report["macs_before"],
            "parent_params": report["params_before"]}
    ctx.cache[key] = (student, info)
    return ctx.cache[key]


def build_slim(ctx, v, path) -> dict:
    """The optimize step's builder for `slimNN-<integer row>[@PX]` variants (optimize.variants.resolve).

    The parent is thinned and recovered (slim_model), then converted by the builder of the integer row
    named after `slimNN-` (`int8`: LiteRT full-integer; `onnx-int8`, `onnx-cpu-int8`: ONNX QDQ), so a
    slim variant goes through every int8 path the registry has, each with its own recipe. That
    builder sees a context whose parent is the thin model at the variant's size and whose calibration
    images are decoded at that size.
    ctx: optimize.builders.BuildContext; v: the Variant (v.macs_kept, v.input_size); path: the model file.
    Returns the card's `optimization` dict: the inner builder's entries ("output", "onnx", ...) plus
    {"slim": channels report (criterion, width, filters, MACs), "recovery": the recovery report,
    "macs", "params": the variant's (batch 1 at its input size), "parent_macs", "parent_params":
    the parent's at that size, "input_size"}.
    Raises ChannelError for a row without a share or an inner row that is not an integer conversion.
    """
    import dataclasses

    from .variants import BUILDERS, VARIANTS

    inner = VARIANTS.get(v.base.split("-", 1)[1]) if "-" in v.base else None
    if not v.macs_kept or inner is None or not inner.integer:
        raise ChannelError(f"variant {v.name!r}: expected slimNN-<integer variant>, e.g. slim60-int8")
    model, info = slim_model(ctx, v.macs_kept, v.input_size)
    size = info["input_size"]
    prep = ctx.prep(size)
    child = dataclasses.replace(ctx, model=model, card=dataclasses.replace(ctx.card, preprocessing=prep),
                                cache={("calib", None): ctx.calibration_inputs(size)})
    out = BUILDERS[inner.builder](child, dataclasses.replace(inner, name=v.name, input_size=None), path)
    return {**out, "slim": info["channels"], **{k: val for k, val in info.items() if k != "channels"}}
