"""Channel pruning, steps 2 and 3: how important each filter is, and which filters each convolution keeps.

`importance(...)` gives one score per filter by a named criterion (CRITERIA); `plan(...)` decides how
many filters each prunable convolution keeps so that the model keeps a given share of its
multiply-accumulates, and which ones (the highest-scoring). The graph and the MAC rule:
optimize.channel_graph; the whole procedure: optimize.channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from leukedge.tfcompat import tensorflow

from .channel_graph import ChannelError, ChannelGraph, layer_class, macs_with

CRITERIA = ("taylor", "l1")
DEFAULT_CRITERION = "taylor"
# Kept filter counts are rounded to a multiple of ALIGN (for convolutions with at least 4*ALIGN
# filters): XNNPACK's int8 GEMM/convolution micro-kernels compute output channels in tiles of 8 or 16
# (e.g. qs8-qc8w-gemm 4x8c8 on AVX2 and NEON, 16-wide on AVX512), so a count just past a multiple
# of 8 pays for a mostly empty tile. Smaller convolutions keep any count.
ALIGN = 8
# On a processor with a wider tile this is not enough: with AMX (Sapphire Rapids) XNNPACK's int8 kernel
# computes 64 output channels at a time, so 32, 40 or 64 filters all cost one tile and the stem of
# InceptionV3 (32, 32, 64 filters) does not get faster whatever is removed (benchmarks/results/
# slim-speed.md). plan(..., tile=N) plans for such a processor: see _kept_count and
# leukedge.edge.machine.int8_channel_tile.


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
    if len(users) == 1 and layer_class(graph.model.get_layer(users[0])) == "BatchNormalization":
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
    tile: int = 0

    @property
    def macs_kept(self) -> float:
        return self.macs / self.macs_before if self.macs_before else 1.0


def _kept_count(width: float, filters: int, align: int, tile: int = 0) -> int:
    """Filters a convolution with `filters` keeps at uniform width `width`.

    Without a tile (tile=0): round(width * filters) to a multiple of `align` when filters >= 4 * align
    (narrower convolutions keep any count), at least one multiple (or 1).
    With a tile (tile > 0, a processor's int8 kernel tile): a convolution with at most `tile` filters
    keeps them all (it costs one tile whatever it keeps, so removing filters would cost accuracy and
    save no time); a wider one keeps the count nearest width * filters among the whole tiles below its
    filter count and the filter count itself (ties: the larger), so at width 1 it keeps every filter.
    """
    if tile > 0:
        if filters <= tile:
            return int(filters)
        target = width * filters
        candidates = list(range(tile, filters, tile)) + [filters]
        return int(min(candidates, key=lambda c: (abs(c - target), -c)))
    q = align if align > 1 and filters >= 4 * align else 1
    k = int(round(width * filters / q)) * q
    return int(min(filters, max(q, k)))


def plan(graph: ChannelGraph, macs_kept: float, scores: dict[str, np.ndarray], align: int = ALIGN,
         tile: int = 0) -> ChannelPlan:
    """The filters to keep so the model keeps at most `macs_kept` of its multiply-accumulates.

    Allocation "uniform": every prunable convolution keeps the same share w of its filters (rounded
    per `_kept_count`), so a convolution between two pruned ones keeps about w^2 of its MACs; w is the
    largest value (bisection, 40 steps) whose total stays within the budget. Uniform width keeps every
    layer's shape proportionate - which is what the speed of dense kernels follows - and leaves the
    choice of *which* filters to the criterion's scores: each convolution keeps its highest-scoring ones.

    macs_kept: share in (0, 1]; 1.0 keeps every filter. scores: importance() output. align: see ALIGN.
    tile: 0, or the output-channel tile of the processor the model is for (edge.machine.int8_channel_tile:
    64 with AMX, 16 with AVX-512 or Arm dot-product, 8 otherwise); counts then follow _kept_count's tile
    rule, so the MACs kept may fall well below `macs_kept` where one more tile would exceed it.
    Returns a ChannelPlan. Raises ChannelError when the share is out of range or cannot be reached
    (too much of the model's work lies in layers that cannot be pruned).
    """
    if not 0.0 < macs_kept <= 1.0:
        raise ChannelError(f"the share of multiply-accumulates kept must lie in (0, 1], got {macs_kept}")
    before = macs_with(graph, {})
    budget = macs_kept * before

    def counts(width: float) -> dict[str, int]:
        return {c: _kept_count(width, graph.filters[c], align, tile) for c in graph.prunable}

    if macs_kept >= 1.0:
        width = 1.0
    else:
        lo, hi = 0.0, 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            if macs_with(graph, counts(mid)) <= budget:
                lo = mid
            else:
                hi = mid
        width = lo
    chosen = counts(width)
    macs = macs_with(graph, chosen)
    if macs > budget * (1 + 1e-9):
        floor = macs_with(graph, counts(0.0))
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
    return ChannelPlan(keep, width, macs, before, macs_kept, align, tile=tile)
