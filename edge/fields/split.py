"""Step 5 of edge.fields.locate's rules: splitting touching nuclei.

Touching nuclei are split where the group's distance transform has two peaks at least SPLIT_PEAK_UM deep
whose ridge between them dips below SPLIT_SADDLE of the lower peak (two round nuclei pressed together);
lobes are thinner than SPLIT_PEAK_UM and never split. Masks are uint8 0/1 arrays of one group's region
of interest on the working copy; lengths are in working pixels.
"""

from __future__ import annotations

import cv2
import numpy as np

# Splitting touching nuclei: a round nucleus is >= ~5 um across (inscribed radius >= 2.5 um); a lobe is
# ~2-3 um thick (radius <= 1.5 um). Peaks of the distance transform deeper than SPLIT_PEAK_UM, further
# apart than SPLIT_MIN_DISTANCE_UM, whose connecting ridge falls below SPLIT_SADDLE of the lower peak.
SPLIT_PEAK_UM = 3.0
SPLIT_MIN_DISTANCE_UM = 4.0
SPLIT_SADDLE = 0.5


def split_markers(nuc: np.ndarray, px_per_um: float) -> np.ndarray | None:
    """Markers (int32 labels 1..k, `nuc`'s shape) of the nuclei in one group's mask `nuc` (uint8 0/1), or None
    for one nucleus. px_per_um: working pixels per micrometre."""
    dist = cv2.distanceTransform(nuc, cv2.DIST_L2, 5)
    peak_min = SPLIT_PEAK_UM * px_per_um
    if dist.max() < peak_min:
        return None
    local = (dist >= cv2.dilate(dist, np.ones((5, 5), np.uint8))) & (dist >= peak_min)
    ys, xs = np.nonzero(local)
    if len(xs) < 2:
        return None
    order = np.argsort(-dist[ys, xs])
    min_d = SPLIT_MIN_DISTANCE_UM * px_per_um
    peaks: list[tuple[int, int, float]] = []
    for i in order:  # non-maximum suppression: strongest first
        x, y, v = int(xs[i]), int(ys[i]), float(dist[ys[i], xs[i]])
        if all((x - px) ** 2 + (y - py) ** 2 >= min_d ** 2 for px, py, _ in peaks):
            peaks.append((x, y, v))
    if len(peaks) < 2:
        return None
    # union of peaks whose connecting ridge stays high (one elongated nucleus, not two)
    parent = list(range(len(peaks)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(peaks)):
        for j in range(i + 1, len(peaks)):
            (x0, y0, v0), (x1, y1, v1) = peaks[i], peaks[j]
            steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
            line = dist[np.linspace(y0, y1, steps).round().astype(int), np.linspace(x0, x1, steps).round().astype(int)]
            if line.min() >= SPLIT_SADDLE * min(v0, v1):
                parent[find(i)] = find(j)
    roots = sorted({find(i) for i in range(len(peaks))})
    if len(roots) < 2:
        return None
    markers = np.zeros(nuc.shape, np.int32)
    for i, (x, y, v) in enumerate(peaks):
        cv2.circle(markers, (x, y), max(1, int(v * 0.5)), roots.index(find(i)) + 1, -1)
    return markers


def watershed_parts(roi_rgb: np.ndarray, closed: np.ndarray, markers: np.ndarray, group: np.ndarray) -> list[np.ndarray]:
    """Split one group's nucleus by marker-controlled watershed (OpenCV's, on the colour ROI).

    closed: uint8 0/1, the group's nucleus with its lobe gaps closed; markers: int32, 1..k inside it;
    group: uint8 0/1, the nucleus pixels. Returns one uint8 0/1 mask per nucleus (the ROI's shape).
    """
    k = int(markers.max())
    m = markers.copy()
    m[closed == 0] = k + 1  # outside the nucleus: its own basin, so no nucleus floods past its border
    cv2.watershed(np.ascontiguousarray(roi_rgb), m)
    parts = [((m == i) & (group > 0)).astype(np.uint8) for i in range(1, k + 1)]
    return [p for p in parts if p.any()]
