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

`slim(...)` does all four. `build_slim` is the optimize step's builder for the `slimNN-...` rows of
the variant registry (optimize.variants), recovery fine-tune included (optimize.recover).

Multiply-accumulates (MACs) are counted per inference of one image (batch 1) at the model's input
size: Conv2D out_h*out_w*kh*kw*in/groups*out, DepthwiseConv2D out_h*out_w*kh*kw*channels*multiplier,
Dense (leading dims)*in*out. BatchNorm is not counted (converters fold it into the convolution) and
neither are pooling, activations or concatenation (memory-bound, no multiplies to speak of).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from leukedge.edge.errors import LeukedgeError
from leukedge.tfcompat import tensorflow

CRITERIA = ("taylor", "l1")
DEFAULT_CRITERION = "taylor"
# Kept filter counts are rounded to a multiple of ALIGN (for convolutions with at least 4*ALIGN
# filters): XNNPACK's int8 GEMM/convolution micro-kernels compute output channels in tiles of 8 or 16
# (e.g. qs8-qc8w-gemm 4x8c8 on AVX2 and NEON, 16-wide on AVX512), so a count just past a multiple
# of 8 pays for a mostly empty tile. Smaller convolutions keep any count.
ALIGN = 8

# Layers that act on each channel on its own (outputs channel c from input channel c only): pruning
# passes through them. BatchNormalization and DepthwiseConv2D hold per-channel weights (sliced).
_CHANNELWISE = {"Activation", "ReLU", "LeakyReLU", "ELU", "ThresholdedReLU", "Dropout", "SpatialDropout2D",
                "GaussianNoise", "GaussianDropout", "AlphaDropout", "MaxPooling2D", "AveragePooling2D",
                "GlobalAveragePooling2D", "GlobalMaxPooling2D", "ZeroPadding2D", "Cropping2D", "UpSampling2D",
                "Identity", "ActivityRegularization"}
# Element-wise layers: a channel of the output is the same channel of every input.
_ELEMENTWISE = {"BatchNormalization", "Activation", "ReLU", "LeakyReLU", "ELU", "ThresholdedReLU", "Dropout",
                "GaussianNoise", "GaussianDropout", "AlphaDropout", "Identity", "ActivityRegularization"}


class ChannelError(LeukedgeError, ValueError):
    """A model or request channel pruning cannot handle; the message names the layer or the value."""


Segments = list  # [(source layer name, channel count), ...] in channel order


@dataclass
class ChannelGraph:
    """How channels flow through a flat functional model (see the module docstring, step 1).

    inputs: layer name -> names of the layers feeding it, in call order.
    consumers: layer name -> names of the layers taking its output.
    out_segments / in_segments: layer name -> the segments of its output / its (joined) input.
    filters: every source -> its channel count (Conv2D filters, Dense units, input channels).
    prunable: Conv2D layers whose filters may be removed, in graph order.
    frozen: source -> why it is never pruned.
    chain_end: prunable conv -> the last layer of the channel-wise chain after it (conv -> BN -> ReLU),
      whose output is the tensor the consumers see: removing a filter sets that tensor's channel to 0.
    order: layer names in topological order.
    """

    model: object
    inputs: dict[str, list[str]]
    consumers: dict[str, list[str]]
    out_segments: dict[str, Segments]
    in_segments: dict[str, Segments]
    filters: dict[str, int]
    prunable: list[str]
    frozen: dict[str, str]
    chain_end: dict[str, str]
    order: list[str]


def _class(layer) -> str:
    return type(layer).__name__


def _last_axis(axis, rank: int) -> bool:
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    return isinstance(axis, int) and axis in (-1, rank - 1)


def channel_graph(model) -> ChannelGraph:
    """Trace which Conv2D filters can be removed and where their channels go.

    model: a flat functional tf-keras model, channels last (leukedge.graph.flatten makes a nested
    one flat), every layer called once. Returns a ChannelGraph. Raises ChannelError for a nested
    model, a layer called more than once, or a model without a graph (subclassed).
    """
    tf = tensorflow()
    config = model.get_config()
    if "layers" not in config:
        raise ChannelError(f"model {model.name!r} has no functional graph (subclassed?); channel pruning needs one")
    layers = {layer.name: layer for layer in model.layers}
    inputs: dict[str, list[str]] = {}
    for lc in config["layers"]:
        name = lc["name"]
        if isinstance(layers.get(name), tf.keras.Model):
            raise ChannelError(f"layer {name!r} is a nested model; flatten it first (leukedge.graph.flatten)")
        nodes = lc.get("inbound_nodes", [])
        if len(nodes) > 1:
            raise ChannelError(f"layer {name!r} is called {len(nodes)} times; channel pruning needs each layer once")
        refs = []
        for node in nodes:
            if not isinstance(node, (list, tuple)):
                raise ChannelError(f"layer {name!r}: unsupported inbound-node format {type(node).__name__}")
            for ref in node:
                if ref[2] != 0:
                    raise ChannelError(f"layer {name!r} takes output {ref[2]} of layer {ref[0]!r}; "
                                       "multi-output layers are not supported")
                refs.append(ref[0])
        inputs[name] = refs
    consumers: dict[str, list[str]] = {n: [] for n in inputs}
    for name, srcs in inputs.items():
        for s in srcs:
            consumers[s].append(name)
    order = _topological(inputs)

    out_seg: dict[str, Segments] = {}
    in_seg: dict[str, Segments] = {}
    filters: dict[str, int] = {}
    frozen: dict[str, str] = {}

    def freeze(segs: Segments, why: str) -> None:
        for src, _ in segs:
            frozen.setdefault(src, why)

    def fresh(name: str, channels: int, why: str | None = None) -> Segments:
        filters[name] = int(channels)
        if why:
            frozen.setdefault(name, why)
        return [(name, int(channels))]

    for name in order:
        layer = layers[name]
        kind = _class(layer)
        srcs = inputs[name]
        joined: Segments = [seg for s in srcs for seg in out_seg[s]]
        in_seg[name] = joined
        out_shape = layer.output_shape if not isinstance(layer, tf.keras.layers.InputLayer) else layer.output_shape[0]
        rank = len(out_shape)
        if isinstance(layer, tf.keras.layers.InputLayer):
            out_seg[name] = fresh(name, out_shape[-1], "a model input")
        elif kind in ("Conv2D", "Conv1D", "Conv3D"):
            groups = getattr(layer, "groups", 1)
            if layer.data_format != "channels_last" or groups != 1 or kind != "Conv2D":
                freeze(joined, f"feeds {kind} {name!r} (grouped, channels-first or not 2-D)")
                out_seg[name] = fresh(name, layer.filters, f"{kind} {name!r} is grouped, channels-first or not 2-D")
            else:
                out_seg[name] = fresh(name, layer.filters)
        elif kind == "Dense":
            out_seg[name] = fresh(name, layer.units, "a Dense layer's units (the head is kept whole)")
        elif kind == "DepthwiseConv2D" and layer.depth_multiplier == 1 and layer.data_format == "channels_last":
            out_seg[name] = list(joined)
        elif kind == "BatchNormalization" and _last_axis(layer.axis, rank):
            out_seg[name] = list(joined)
        elif kind in _CHANNELWISE and len(srcs) == 1 and not (
                kind == "Activation" and layer.get_config().get("activation") == "softmax"):
            out_seg[name] = list(joined)
        elif kind == "Flatten" and rank == 2 and len(layer.input_shape) == 2:
            out_seg[name] = list(joined)
        elif kind == "Concatenate" and _last_axis(layer.axis, rank):
            out_seg[name] = list(joined)
        else:
            freeze(joined, f"feeds {kind} {name!r}, which mixes or reshapes channels")
            out_seg[name] = fresh(name, out_shape[-1] if out_shape and out_shape[-1] else 0,
                                  f"{kind} {name!r} is not a layer channel pruning follows")
    for out in config.get("output_layers", []):
        freeze(out_seg[out[0]], f"reaches the model output {out[0]!r}")

    prunable = [n for n in order if _class(layers[n]) == "Conv2D" and n in filters and n not in frozen
                and filters[n] >= 2]
    chain_end = {}
    for conv in prunable:
        end = conv
        while len(consumers[end]) == 1:
            nxt = consumers[end][0]
            if _class(layers[nxt]) not in _ELEMENTWISE or len(inputs[nxt]) != 1:
                break
            if _class(layers[nxt]) == "Activation" and layers[nxt].get_config().get("activation") == "softmax":
                break
            end = nxt
        chain_end[conv] = end
    return ChannelGraph(model, inputs, consumers, out_seg, in_seg, filters, prunable, frozen, chain_end, order)


def _topological(inputs: dict[str, list[str]]) -> list[str]:
    order, seen = [], set()
    pending = list(inputs)
    while pending:
        progressed = []
        for name in pending:
            if all(s in seen for s in inputs[name]):
                order.append(name)
                seen.add(name)
                progressed.append(name)
        if not progressed:
            raise ChannelError(f"the graph has a cycle or a missing layer near {pending[0]!r}")
        pending = [n for n in pending if n not in seen]
    return order


# -- multiply-accumulates ------------------------------------------------------------------------------

def _spatial(shape) -> int:
    """Product of the dims between batch and channels (1 for a vector); raises ChannelError for None."""
    dims = shape[1:-1]
    if any(d is None for d in dims):
        raise ChannelError(f"cannot count multiply-accumulates at an unknown size {tuple(shape)}; "
                           "give the model a fixed input size")
    return int(np.prod(dims)) if dims else 1


def count_macs(model) -> int:
    """Multiply-accumulates of one inference (batch 1) at the model's input size (rule: module docstring).

    Nested models are counted through. Raises ChannelError when a spatial size is unknown.
    """
    tf = tensorflow()
    total = 0
    for layer in model.layers:
        if isinstance(layer, tf.keras.Model):
            total += count_macs(layer)
            continue
        kind = _class(layer)
        if kind == "Conv2D":
            kh, kw = layer.kernel_size
            cin = int(layer.input_shape[-1])
            total += _spatial(layer.output_shape) * kh * kw * cin // layer.groups * layer.filters
        elif kind == "DepthwiseConv2D":
            kh, kw = layer.kernel_size
            total += _spatial(layer.output_shape) * kh * kw * int(layer.input_shape[-1]) * layer.depth_multiplier
        elif kind == "Dense":
            total += _spatial(layer.output_shape) * int(layer.input_shape[-1]) * layer.units
    return int(total)


def count_params(model) -> int:
    """Every weight of the model, trainable or not (BatchNorm statistics included), as Keras counts them."""
    return int(model.count_params())


def _macs_with(graph: ChannelGraph, counts: dict[str, int]) -> int:
    """MACs of `graph.model` if each source kept counts[source] channels (others: all). Same rule as count_macs."""
    model = graph.model

    def kept(segs: Segments) -> int:
        return sum(counts.get(src, n) for src, n in segs)

    total = 0
    for name in graph.order:
        layer = model.get_layer(name)
        kind = _class(layer)
        if kind == "Conv2D":
            kh, kw = layer.kernel_size
            total += (_spatial(layer.output_shape) * kh * kw * kept(graph.in_segments[name]) // layer.groups
                      * counts.get(name, layer.filters))
        elif kind == "DepthwiseConv2D":
            kh, kw = layer.kernel_size
            total += _spatial(layer.output_shape) * kh * kw * kept(graph.in_segments[name]) * layer.depth_multiplier
        elif kind == "Dense":
            total += _spatial(layer.output_shape) * kept(graph.in_segments[name]) * layer.units
    return int(total)


# -- importance ---------------------------------------------------------------------------------------

def importance(graph: ChannelGraph, criterion: str = DEFAULT_CRITERION, images: np.ndarray | None = None,
               labels: np.ndarray | None = None, output: str = "probabilities", batch: int = 8) -> dict[str, np.ndarray]:
    """One score per filter of every prunable convolution; higher means keep.

    criterion:
      "taylor" (default) - first-order Taylor estimate of the loss change when the filter is removed
        (Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR 2019): with a the
        filter's channel of the tensor its consumers see (graph.chain_end: after BatchNorm and ReLU,
        which is what removal sets to 0) and g = dLoss/da, the score is the mean over images of
        (sum over positions of a * g)^2. Loss: cross-entropy against the images' labels, BatchNorm in
        inference mode. Needs `images` and `labels`.
      "l1" - L1 norm of the filter as the converted model runs it, i.e. with the following
        BatchNorm's per-channel scale gamma/sqrt(var + eps) folded in (Li et al., "Pruning Filters for
        Efficient ConvNets", ICLR 2017, use the raw norm; under a BatchNorm the raw norm says little,
        as BatchNorm rescales every channel). Data-free.
    images: float32 model inputs (N, H, W, 3) (e.g. the calibration set); labels: (N,) class indices
      in the model's output order. output: what the model outputs, "probabilities" or "logits".
    Returns {conv name: float64 (filters,)}. Raises ChannelError for an unknown criterion or missing data.
    """
    if criterion not in CRITERIA:
        raise ChannelError(f"unknown importance criterion {criterion!r}; choose from {', '.join(CRITERIA)}")
    if criterion == "l1":
        return _l1_scores(graph)
    if images is None or labels is None or len(images) == 0:
        raise ChannelError("the 'taylor' criterion needs calibration images with labels")
    if len(images) != len(labels):
        raise ChannelError(f"{len(images)} images but {len(labels)} labels")
    return _taylor_scores(graph, np.asarray(images, np.float32), np.asarray(labels, np.int64), output, batch)


def _following_batchnorm(graph: ChannelGraph, conv: str):
    """The BatchNormalization directly after `conv` (its only consumer), or None."""
    users = graph.consumers[conv]
    if len(users) == 1 and _class(graph.model.get_layer(users[0])) == "BatchNormalization":
        return graph.model.get_layer(users[0])
    return None


def _bn_scale(bn) -> np.ndarray:
    """Inference-mode BatchNorm's per-channel multiplier gamma / sqrt(moving_variance + epsilon)."""
    w = {v.name.split("/")[-1].split(":")[0]: v.numpy().astype(np.float64) for v in bn.weights}
    gamma = w.get("gamma", np.ones_like(w["moving_variance"]))
    return gamma / np.sqrt(w["moving_variance"] + bn.epsilon)


def _l1_scores(graph: ChannelGraph) -> dict[str, np.ndarray]:
    scores = {}
    for conv in graph.prunable:
        kernel = graph.model.get_layer(conv).kernel.numpy().astype(np.float64)  # (kh, kw, in, out)
        norm = np.abs(kernel).sum(axis=(0, 1, 2))
        bn = _following_batchnorm(graph, conv)
        scores[conv] = norm * np.abs(_bn_scale(bn)) if bn is not None else norm
    return scores


def _taylor_scores(graph: ChannelGraph, images: np.ndarray, labels: np.ndarray, output: str,
                   batch: int) -> dict[str, np.ndarray]:
    tf = tensorflow()
    model = graph.model
    convs = graph.prunable
    ends = [model.get_layer(graph.chain_end[c]).output for c in convs]
    probe = tf.keras.Model(model.inputs, ends + [model.outputs[0]])
    from_logits = output == "logits"
    sums = {c: np.zeros(graph.filters[c], np.float64) for c in convs}
    for start in range(0, len(images), batch):
        x = tf.constant(images[start:start + batch])
        y = tf.constant(labels[start:start + batch])
        with tf.GradientTape() as tape:
            outs = probe(x, training=False)
            acts, pred = outs[:-1], outs[-1]
            # a sum over images, so each image's gradient is its own loss's (inference mode: no coupling)
            loss = tf.reduce_sum(tf.keras.losses.sparse_categorical_crossentropy(y, pred, from_logits=from_logits))
        grads = tape.gradient(loss, acts)
        for conv, a, g in zip(convs, acts, grads):
            per_image = tf.reduce_sum(a * g, axis=list(range(1, len(a.shape) - 1))).numpy().astype(np.float64)
            sums[conv] += (per_image ** 2).sum(axis=0)
    return {c: s / len(images) for c, s in sums.items()}


# -- plan ---------------------------------------------------------------------------------------------

@dataclass
class ChannelPlan:
    """Which filters each prunable convolution keeps, and what that costs.

    keep: conv name -> sorted indices of the kept filters (every prunable conv listed).
    width: the share of filters kept per convolution before rounding (one value for all: "uniform").
    macs / macs_before: multiply-accumulates after / before (batch 1, the model's input size).
    """

    keep: dict[str, np.ndarray]
    width: float
    macs: int
    macs_before: int
    target: float
    align: int
    allocation: str = "uniform"
    notes: list[str] = field(default_factory=list)

    @property
    def macs_kept(self) -> float:
        return self.macs / self.macs_before if self.macs_before else 1.0


def _kept_count(width: float, filters: int, align: int) -> int:
    """round(width * filters) to a multiple of `align` (when filters >= 4 * align), at least one tile (or 1)."""
    q = align if align > 1 and filters >= 4 * align else 1
    k = int(round(width * filters / q)) * q
    return int(min(filters, max(q, k)))


def plan(graph: ChannelGraph, macs_kept: float, scores: dict[str, np.ndarray], align: int = ALIGN) -> ChannelPlan:
    """The filters to keep so the model keeps at most `macs_kept` of its multiply-accumulates.

    Allocation "uniform": every prunable convolution keeps the same share w of its filters (rounded
    per `_kept_count`), so a convolution between two pruned ones keeps about w^2 of its MACs; w is the
    largest value (bisection, 40 steps) whose total stays within the budget. Uniform width keeps every
    layer's shape proportionate - which is what the speed of dense kernels follows - and leaves the
    choice of *which* filters to the criterion's scores: each convolution keeps its highest-scoring ones.

    macs_kept: share in (0, 1]; 1.0 keeps every filter. scores: importance() output. align: see ALIGN.
    Returns a ChannelPlan. Raises ChannelError when the share is out of range or cannot be reached
    (too much of the model's work lies in layers that cannot be pruned).
    """
    if not 0.0 < macs_kept <= 1.0:
        raise ChannelError(f"the share of multiply-accumulates kept must lie in (0, 1], got {macs_kept}")
    before = _macs_with(graph, {})
    budget = macs_kept * before

    def counts(width: float) -> dict[str, int]:
        return {c: _kept_count(width, graph.filters[c], align) for c in graph.prunable}

    if macs_kept >= 1.0:
        width = 1.0
    else:
        lo, hi = 0.0, 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            if _macs_with(graph, counts(mid)) <= budget:
                lo = mid
            else:
                hi = mid
        width = lo
    chosen = counts(width)
    macs = _macs_with(graph, chosen)
    if macs > budget * (1 + 1e-9):
        floor = _macs_with(graph, counts(0.0))
        raise ChannelError(f"cannot keep only {macs_kept:.0%} of the multiply-accumulates: with every prunable "
                           f"convolution at its minimum the model keeps {floor / before:.0%} "
                           f"({len(graph.frozen)} sources cannot be pruned)")
    keep = {}
    for conv in graph.prunable:
        s = np.asarray(scores[conv], np.float64)
        if s.shape != (graph.filters[conv],):
            raise ChannelError(f"scores for {conv!r} have shape {s.shape}, expected ({graph.filters[conv]},)")
        # stable: ties keep the lower index (so equal scores still give a deterministic plan)
        top = np.argsort(-s, kind="stable")[: chosen[conv]]
        keep[conv] = np.sort(top)
    return ChannelPlan(keep, width, macs, before, macs_kept, align)


# -- surgery ------------------------------------------------------------------------------------------

def _index(segments: Segments, keep: dict[str, np.ndarray]) -> np.ndarray:
    """Indices, in the joined input, of the channels that survive: each segment's kept channels, offset."""
    parts, offset = [], 0
    for src, n in segments:
        parts.append(offset + (keep[src] if src in keep else np.arange(n)))
        offset += n
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def apply_plan(graph: ChannelGraph, keep: dict[str, np.ndarray]):
    """The model with only the `keep` filters of each listed convolution, and every consumer sliced to match.

    graph: channel_graph(model); keep: conv name -> kept filter indices (prunable convs only; others
    are kept whole). Returns a new tf-keras model (same layer names, own variables) whose outputs
    equal the original's with each removed filter's channel set to 0 where its consumers read it
    (graph.chain_end). Raises ChannelError for a conv that is not prunable or bad indices.
    """
    tf = tensorflow()
    model = graph.model
    for conv, idx in keep.items():
        if conv not in graph.prunable:
            raise ChannelError(f"layer {conv!r} is not a prunable convolution "
                               f"({graph.frozen.get(conv, 'not a Conv2D')})")
        idx = np.asarray(idx)
        if idx.ndim != 1 or len(idx) == 0 or len(np.unique(idx)) != len(idx) or idx.min() < 0 \
                or idx.max() >= graph.filters[conv]:
            raise ChannelError(f"layer {conv!r}: kept filters must be distinct indices in "
                               f"0..{graph.filters[conv] - 1}, at least one")
    keep = {c: np.sort(np.asarray(i, np.int64)) for c, i in keep.items()}
    config = model.get_config()
    for lc in config["layers"]:
        if lc["name"] in keep:
            lc["config"]["filters"] = int(len(keep[lc["name"]]))
    try:
        new = tf.keras.Model.from_config(config)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a config it cannot rebuild
        raise ChannelError(f"cannot rebuild {model.name!r} with fewer channels: {type(exc).__name__}: "
                           f"{(str(exc).splitlines() or [''])[0][:200]}") from None
    for layer in new.layers:
        old = model.get_layer(layer.name)
        weights = old.get_weights()
        if not weights:
            continue
        kind = _class(old)
        segs = graph.in_segments.get(layer.name, [])
        if kind == "Conv2D" and old.groups == 1:
            cin = _index(segs, keep)
            cout = keep.get(layer.name, np.arange(old.filters))
            kernel = weights[0][:, :, cin, :][..., cout]
            weights = [kernel] + ([weights[1][cout]] if old.use_bias else [])
        elif kind == "Dense":
            weights = [weights[0][_index(segs, keep), ...]] + weights[1:]
        elif kind == "DepthwiseConv2D":
            idx = _index(segs, keep)
            weights = [weights[0][:, :, idx, :]] + ([weights[1][idx]] if old.use_bias else [])
        elif kind == "BatchNormalization":
            idx = _index(segs, keep)
            weights = [w[idx] for w in weights]
        layer.set_weights(weights)
    return new


# -- all steps ----------------------------------------------------------------------------------------

def slim(model, macs_kept: float, criterion: str = DEFAULT_CRITERION, images: np.ndarray | None = None,
         labels: np.ndarray | None = None, output: str = "probabilities", align: int = ALIGN,
         scores: dict[str, np.ndarray] | None = None):
    """A thinner copy of `model` keeping at most `macs_kept` of its multiply-accumulates, and a report.

    model: a tf-keras model (a nested one is flattened first: leukedge.graph.flatten).
    macs_kept: share in (0, 1]; criterion, images, labels, output: see importance(); scores: reuse
    scores computed before for the same model (then criterion is only recorded).
    Returns (model, report) with report = {"criterion", "allocation", "align", "width", "macs_kept_target",
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
    p = plan(graph, macs_kept, scores, align)
    thin = apply_plan(graph, p.keep)
    report = {
        "criterion": criterion, "allocation": p.allocation, "align": p.align, "width": round(p.width, 4),
        "macs_kept_target": macs_kept, "macs_kept": round(p.macs_kept, 4), "macs_before": p.macs_before,
        "macs": count_macs(thin), "params_before": count_params(flat), "params": count_params(thin),
        "convolutions_pruned": sum(1 for c in graph.prunable if len(p.keep[c]) < graph.filters[c]),
        "convolutions_frozen": sorted(s for s in graph.frozen if s in graph.filters and
                                      _class(flat.get_layer(s)) == "Conv2D"),
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

def _calibration_labels(ctx) -> np.ndarray:
    """Class indices, in the parent's output order, of ctx's calibration samples (dataset order -> card order)."""
    remap = [list(ctx.card.labels).index(name) for name in ctx.ds_labels]
    return np.asarray([remap[s.label] for s in ctx.calib_samples], np.int64)


def slim_model(ctx, macs_kept: float, size: int | None = None, criterion: str = DEFAULT_CRITERION):
    """The parent thinned to `macs_kept` of its MACs, at `size` px, recovered (optimize.recover); cached in ctx.

    Filters are chosen once per share at the parent's size (scores on the calibration images, once per
    criterion); the thin model is then moved to `size` and recovered there against the parent at its
    own size. ctx: optimize.builders.BuildContext; its options' prune_steps / prune_lr set the recovery's
    steps and peak learning rate. Returns (tf-keras model, info dict for the card).
    """
    parent_size = ctx.card.preprocessing.size
    size = size or parent_size
    key = ("slim", macs_kept, size, criterion)
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
    thin, report = slim(ctx.model, macs_kept, criterion, scores=scores)
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
