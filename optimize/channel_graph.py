"""Channel pruning, step 1: which Conv2D filters can be removed, where their channels go, and what they cost.

A tensor's channels are described as segments `(source layer, count)`; channel-wise layers pass
segments through, a channel concatenation joins them, a Conv2D or Dense starts a new one. A source
is *frozen* (never pruned) when its channels reach something that mixes or reshapes channels in a
way slicing cannot follow: element-wise Add/Multiply between branches, Flatten/Reshape of a spatial
tensor, a softmax over channels, a grouped convolution, a layer this module does not know, or a
model output. (The whole procedure: optimize.channels.)

Multiply-accumulates (MACs) are counted per inference of one image (batch 1) at the model's input
size: Conv2D out_h*out_w*kh*kw*in/groups*out, DepthwiseConv2D out_h*out_w*kh*kw*channels*multiplier,
Dense (leading dims)*in*out. BatchNorm is not counted (converters fold it into the convolution) and
neither are pooling, activations or concatenation (memory-bound, no multiplies to speak of).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from leukedge.edge.errors import LeukedgeError
from leukedge.tfcompat import tensorflow

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
    """How channels flow through a flat functional model (see the module docstring).

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


def layer_class(layer) -> str:
    """The Keras class name of `layer` (e.g. "Conv2D")."""
    return type(layer).__name__


def _last_axis(axis, rank: int) -> bool:
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    return isinstance(axis, int) and axis in (-1, rank - 1)


def _is_softmax(layer) -> bool:
    return layer_class(layer) == "Activation" and layer.get_config().get("activation") == "softmax"


@dataclass
class _Trace:
    """The segments found so far while walking the graph in topological order (channel_graph's state)."""

    out_seg: dict[str, Segments] = field(default_factory=dict)
    in_seg: dict[str, Segments] = field(default_factory=dict)
    filters: dict[str, int] = field(default_factory=dict)
    frozen: dict[str, str] = field(default_factory=dict)

    def freeze(self, segs: Segments, why: str) -> None:
        for src, _ in segs:
            self.frozen.setdefault(src, why)

    def fresh(self, name: str, channels: int, why: str | None = None) -> Segments:
        self.filters[name] = int(channels)
        if why:
            self.frozen.setdefault(name, why)
        return [(name, int(channels))]


def channel_graph(model) -> ChannelGraph:
    """Trace which Conv2D filters can be removed and where their channels go.

    model: a flat functional tf-keras model, channels last (leukedge.graph.flatten makes a nested
    one flat), every layer called once. Returns a ChannelGraph. Raises ChannelError for a nested
    model, a layer called more than once, or a model without a graph (subclassed).
    """
    config = model.get_config()
    if "layers" not in config:
        raise ChannelError(f"model {model.name!r} has no functional graph (subclassed?); channel pruning needs one")
    layers = {layer.name: layer for layer in model.layers}
    inputs = _inbound(config, layers)
    consumers: dict[str, list[str]] = {n: [] for n in inputs}
    for name, srcs in inputs.items():
        for s in srcs:
            consumers[s].append(name)
    order = _topological(inputs)
    trace = _Trace()
    for name in order:
        _trace_layer(trace, layers[name], inputs[name])
    for out in config.get("output_layers", []):
        trace.freeze(trace.out_seg[out[0]], f"reaches the model output {out[0]!r}")
    prunable = [n for n in order if layer_class(layers[n]) == "Conv2D" and n in trace.filters
                and n not in trace.frozen and trace.filters[n] >= 2]
    chain_end = {conv: _chain_end(conv, layers, inputs, consumers) for conv in prunable}
    return ChannelGraph(model, inputs, consumers, trace.out_seg, trace.in_seg, trace.filters, prunable,
                        trace.frozen, chain_end, order)


def _inbound(config: dict, layers: dict) -> dict[str, list[str]]:
    """Layer name -> the names of the layers feeding it, from a functional config; ChannelError for what is not flat."""
    tf = tensorflow()
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
    return inputs


def _trace_layer(trace: _Trace, layer, srcs: list[str]) -> None:
    """Record `layer`'s input and output segments in `trace` (its inputs' are already there)."""
    tf = tensorflow()
    name, kind = layer.name, layer_class(layer)
    joined: Segments = [seg for s in srcs for seg in trace.out_seg[s]]
    trace.in_seg[name] = joined
    is_input = isinstance(layer, tf.keras.layers.InputLayer)
    out_shape = layer.output_shape[0] if is_input else layer.output_shape
    rank = len(out_shape)
    if is_input:
        trace.out_seg[name] = trace.fresh(name, out_shape[-1], "a model input")
    elif kind in ("Conv2D", "Conv1D", "Conv3D"):
        groups = getattr(layer, "groups", 1)
        if layer.data_format != "channels_last" or groups != 1 or kind != "Conv2D":
            trace.freeze(joined, f"feeds {kind} {name!r} (grouped, channels-first or not 2-D)")
            trace.out_seg[name] = trace.fresh(name, layer.filters,
                                              f"{kind} {name!r} is grouped, channels-first or not 2-D")
        else:
            trace.out_seg[name] = trace.fresh(name, layer.filters)
    elif kind == "Dense":
        trace.out_seg[name] = trace.fresh(name, layer.units, "a Dense layer's units (the head is kept whole)")
    elif _passes_channels(layer, kind, rank, len(srcs)):
        trace.out_seg[name] = list(joined)
    else:
        trace.freeze(joined, f"feeds {kind} {name!r}, which mixes or reshapes channels")
        trace.out_seg[name] = trace.fresh(name, out_shape[-1] if out_shape and out_shape[-1] else 0,
                                          f"{kind} {name!r} is not a layer channel pruning follows")


def _passes_channels(layer, kind: str, rank: int, n_inputs: int) -> bool:
    """Whether `layer` (not an input, convolution or Dense) passes its input's segments through unchanged."""
    if kind == "DepthwiseConv2D":
        return layer.depth_multiplier == 1 and layer.data_format == "channels_last"
    if kind in ("BatchNormalization", "Concatenate") and _last_axis(layer.axis, rank):
        return True
    if kind in _CHANNELWISE and n_inputs == 1 and not _is_softmax(layer):
        return True
    return kind == "Flatten" and rank == 2 and len(layer.input_shape) == 2


def _chain_end(conv: str, layers: dict, inputs: dict[str, list[str]], consumers: dict[str, list[str]]) -> str:
    """The last layer of the single-consumer, element-wise chain after `conv` (conv -> BN -> ReLU: the ReLU)."""
    end = conv
    while len(consumers[end]) == 1:
        nxt = consumers[end][0]
        if layer_class(layers[nxt]) not in _ELEMENTWISE or len(inputs[nxt]) != 1 or _is_softmax(layers[nxt]):
            break
        end = nxt
    return end


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
        kind = layer_class(layer)
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


def macs_with(graph: ChannelGraph, counts: dict[str, int]) -> int:
    """MACs of `graph.model` if each source kept counts[source] channels (others: all). Same rule as count_macs.

    counts: source layer name -> channels kept. Returns an int (batch 1, the model's input size).
    Raises ChannelError when a spatial size is unknown.
    """
    model = graph.model

    def kept(segs: Segments) -> int:
        return sum(counts.get(src, n) for src, n in segs)

    total = 0
    for name in graph.order:
        layer = model.get_layer(name)
        kind = layer_class(layer)
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
