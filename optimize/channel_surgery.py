"""Channel pruning, step 4: the thinner model, its weights sliced to the filters a plan keeps.

The graph (optimize.channel_graph) says which input channels of each layer a convolution's filters
become; `apply_plan` rebuilds the model with fewer filters and slices every consumer's weights to
match: the BatchNorm entries that follow, the input slices of the next convolutions, depthwise
convolutions and the head's Dense. The whole procedure: optimize.channels.
"""

from __future__ import annotations

import numpy as np

from leukedge.graph import rebuild

from .channel_graph import ChannelError, ChannelGraph, Segments, layer_class


def _index(segments: Segments, keep: dict[str, np.ndarray]) -> np.ndarray:
    """Indices, in the joined input, of the channels that survive: each segment's kept channels, offset."""
    parts, offset = [], 0
    for src, n in segments:
        parts.append(offset + (keep[src] if src in keep else np.arange(n)))
        offset += n
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _checked(graph: ChannelGraph, keep: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`keep` as sorted int64 indices; ChannelError for a conv that is not prunable or bad indices."""
    for conv, idx in keep.items():
        if conv not in graph.prunable:
            raise ChannelError(f"layer {conv!r} is not a prunable convolution "
                               f"({graph.frozen.get(conv, 'not a Conv2D')})")
        idx = np.asarray(idx)
        if idx.ndim != 1 or len(idx) == 0 or len(np.unique(idx)) != len(idx) or idx.min() < 0 \
                or idx.max() >= graph.filters[conv]:
            raise ChannelError(f"layer {conv!r}: kept filters must be distinct indices in "
                               f"0..{graph.filters[conv] - 1}, at least one")
    return {c: np.sort(np.asarray(i, np.int64)) for c, i in keep.items()}


def _sliced_weights(old, weights: list, segs: Segments, keep: dict[str, np.ndarray]) -> list:
    """`old` layer's weights cut to the surviving input channels (segs) and, for a pruned conv, its kept filters."""
    kind = layer_class(old)
    if kind == "Conv2D" and old.groups == 1:
        cin = _index(segs, keep)
        cout = keep.get(old.name, np.arange(old.filters))
        kernel = weights[0][:, :, cin, :][..., cout]
        return [kernel] + ([weights[1][cout]] if old.use_bias else [])
    if kind == "Dense":
        return [weights[0][_index(segs, keep), ...]] + weights[1:]
    if kind == "DepthwiseConv2D":
        idx = _index(segs, keep)
        return [weights[0][:, :, idx, :]] + ([weights[1][idx]] if old.use_bias else [])
    if kind == "BatchNormalization":
        idx = _index(segs, keep)
        return [w[idx] for w in weights]
    return weights


def apply_plan(graph: ChannelGraph, keep: dict[str, np.ndarray]):
    """The model with only the `keep` filters of each listed convolution, and every consumer sliced to match.

    graph: channel_graph(model); keep: conv name -> kept filter indices (prunable convs only; others
    are kept whole). Returns a new tf-keras model (same layer names, own variables) whose outputs
    equal the original's with each removed filter's channel set to 0 where its consumers read it
    (graph.chain_end). Raises ChannelError for a conv that is not prunable or bad indices.
    """
    model = graph.model
    keep = _checked(graph, keep)
    config = model.get_config()
    for lc in config["layers"]:
        if lc["name"] in keep:
            lc["config"]["filters"] = int(len(keep[lc["name"]]))
    new = rebuild(config, ChannelError, f"{model.name!r} with fewer channels")
    for layer in new.layers:
        old = model.get_layer(layer.name)
        weights = old.get_weights()
        if not weights:
            continue
        layer.set_weights(_sliced_weights(old, weights, graph.in_segments.get(layer.name, []), keep))
    return new
