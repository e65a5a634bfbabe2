"""Input quality and out-of-distribution checks on decoded images, relative to the training images.

A model answers for every input; this module says when an input is not like anything it was
trained on, so the answer is not given silently. `train` stores `reference_statistics` of its
training inputs in the model card (`input_statistics`); the device computes `image_statistics`
on each decoded, resized image (the very uint8 array the model sees) and `assess` compares them.

Statistics (all cheap: about 0.5 ms for a 224x224 image on the project's machine; colour statistics
use every second pixel of every second row, the focus measures every pixel):
- mean_r/g/b: mean of each channel; green_std: standard deviation of the green channel (green
  carries the most stain contrast in Giemsa/Wright-stained smears).
- bg_fraction: the background's share, background being every pixel within 40 levels (every
  channel) of the median colour of the image's outermost ring (4 pixels wide). Dataset-neutral: a
  C-NMC cell sits on black (bg ~0.8), a PBC cell in a pale smear (bg ~0.5-0.7).
- fg_{r,g,b}_{p05,p50,p95}: per-channel quantiles of the foreground (the other pixels) colour.
- fg_r_minus_g, fg_b_minus_g: mean opponent colour of the foreground (hue of the stain).
- dark_fraction (max channel < 20), clipped_fraction (any channel at 255).
- centre_fg: foreground share of the central box (middle half of each side), where a
  single-cell crop has its cell and a tiled or wide-field image does not.
- focus: log10 of the variance of the 4-neighbour Laplacian of the green channel (the classic
  variance-of-Laplacian focus measure); sharpness: that variance over the green channel's variance
  (independent of contrast; higher when cells are smaller than in training, as in a wide field).

The rule ("far" from training), documented and measured in benchmarks/ood_probe.py:
- quality flags (kind "quality"):
  * constant: green standard deviation below 0.5 levels and no spread in any channel's
    foreground 5..95 % quantiles -- absolute, also without a reference;
  * too dark / too bright: mean luminance below half the training's 0.5th percentile, or above
    the training's 99.5th percentile plus half the remaining headroom to 255;
  * saturated: more than half the pixels clipped at 255 and more than 0.25 above the
    training's 99.5th percentile of that share.
- out-of-distribution flag (kind "ood"): any statistic outside the training's 0.5..99.5 %
  range widened by `margin` times that range on each side, or a Mahalanobis distance (on the
  robustly standardised statistics, shrunk covariance) above the training's 99.9th percentile of
  distances times `mahalanobis_factor`. The defaults (margin 0.3, factor 1.2) were chosen on one
  seeded half of the PBC sample's held-out images and confirmed on the other half
  (benchmarks/ood_probe.py; benchmarks/results/ood-probe.json).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

STATISTICS = (
    "mean_r", "mean_g", "mean_b", "green_std", "bg_fraction",
    "fg_r_p05", "fg_r_p50", "fg_r_p95", "fg_g_p05", "fg_g_p50", "fg_g_p95", "fg_b_p05", "fg_b_p50", "fg_b_p95",
    "fg_r_minus_g", "fg_b_minus_g", "dark_fraction", "clipped_fraction", "centre_fg",
    "focus", "sharpness",
)
REFERENCE_VERSION = 2
DEFAULT_MARGIN = 0.3
DEFAULT_MAHALANOBIS_FACTOR = 1.2
_BG_TOLERANCE = 40
_QUANTILES = (5, 50, 95)


@dataclass(frozen=True)
class Flag:
    """One reason an image is suspicious. code: short identifier (e.g. "too_dark", "ood");
    kind: "quality" (the picture itself is bad) or "ood" (unlike the training images);
    message: one human line naming the reason and the numbers."""

    code: str
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


def _laplacian_var(x: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a 2-D int16 (or float) array, over the interior."""
    c = x[1:-1, 1:-1]
    lap = (x[:-2, 1:-1] + x[2:, 1:-1]) + (x[1:-1, :-2] + x[1:-1, 2:]) - 4 * c
    if not lap.size:
        return 0.0
    f = lap.ravel().astype(np.float32)
    return max(float(f @ f) / f.size - (float(f.sum()) / f.size) ** 2, 0.0)


_LEVELS = np.arange(256, dtype=np.float64)
_QUANTILE_LEVELS = np.asarray(_QUANTILES, dtype=np.float64)


def image_statistics(rgb: np.ndarray) -> dict[str, float]:
    """Cheap statistics of one uint8 HxWx3 RGB image (H, W >= 8), named as in `STATISTICS`.

    Returns plain floats. Raises ValueError for an array of the wrong shape or dtype. Every figure
    is exact integer arithmetic or the float32 sums of the focus measures, so the values are the
    same bit for bit on every machine and thread layout (tests compare with a plain reference
    implementation); the rules are the module docstring's.
    """
    a = np.asarray(rgb)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or min(a.shape[:2]) < 8:
        raise ValueError(f"image_statistics needs a uint8 HxWx3 array (H, W >= 8), got {a.dtype} {a.shape}")
    # Colour statistics on every second pixel of every second row: a quarter of the cost, same figures
    # within sampling noise; the focus measures below use every pixel of the green channel.
    planes = np.ascontiguousarray(np.moveaxis(a[::2, ::2], 2, 0))  # uint8, 3 x h x w (channel-first: fast)
    h, w = planes.shape[1:]
    n = h * w
    flat = planes.reshape(3, n)
    mx = np.maximum(np.maximum(flat[0], flat[1]), flat[2])
    # Background: within _BG_TOLERANCE (every channel) of the median colour of the outer ring.
    ring = np.concatenate([planes[:, :2].reshape(3, -1), planes[:, -2:].reshape(3, -1),
                           planes[:, 2:-2, :2].reshape(3, -1), planes[:, 2:-2, -2:].reshape(3, -1)], axis=1)
    bg_colour = np.median(ring, axis=1)
    far = np.abs(_LEVELS - bg_colour[:, None]) > _BG_TOLERANCE  # (3, 256) lookup: level "far from background"
    fg = far[0].take(flat[0])
    fg |= far[1].take(flat[1])
    fg |= far[2].take(flat[2])
    n_fg = int(np.count_nonzero(fg))
    sums = flat.sum(axis=1, dtype=np.int64)
    green = a[..., 1].astype(np.int16)  # full resolution: stain contrast is highest in green
    gf = green.ravel().astype(np.float32)
    g_var = max(float(gf @ gf) / gf.size - (float(gf.sum()) / gf.size) ** 2, 0.0)
    stats = {
        "mean_r": int(sums[0]) / n, "mean_g": int(sums[1]) / n, "mean_b": int(sums[2]) / n,
        "green_std": math.sqrt(g_var),
        "bg_fraction": 1.0 - n_fg / n,
    }
    if n_fg:
        hist = np.stack([np.bincount(flat[k][fg], minlength=256) for k in range(3)])
        fmean = hist @ _LEVELS / n_fg
        cdf = np.cumsum(hist, axis=1)
        targets = n_fg * _QUANTILE_LEVELS / 100.0  # quantile q: the first level whose cumulative count reaches it
        for k, name in enumerate("rgb"):
            for q, v in zip(_QUANTILES, np.searchsorted(cdf[k], targets)):
                stats[f"fg_{name}_p{q:02d}"] = float(v)
        stats["fg_r_minus_g"] = float(fmean[0] - fmean[1])
        stats["fg_b_minus_g"] = float(fmean[2] - fmean[1])
    else:
        for k, name in enumerate("rgb"):
            for q in _QUANTILES:
                stats[f"fg_{name}_p{q:02d}"] = float(bg_colour[k])
        stats["fg_r_minus_g"] = float(bg_colour[0] - bg_colour[1])
        stats["fg_b_minus_g"] = float(bg_colour[2] - bg_colour[1])
    stats["dark_fraction"] = int(np.count_nonzero(mx < 20)) / n
    stats["clipped_fraction"] = int(np.count_nonzero(mx == 255)) / n
    cy, cx = h // 4, w // 4
    centre = fg.reshape(h, w)[cy:h - cy, cx:w - cx]
    stats["centre_fg"] = int(np.count_nonzero(centre)) / centre.size
    lv = _laplacian_var(green)
    stats["focus"] = math.log10(lv + 1.0)
    stats["sharpness"] = lv / (g_var + 1.0)
    return stats


def _vector(stats: dict[str, float]) -> np.ndarray:
    return np.array([stats[k] for k in STATISTICS], dtype=np.float64)


def _luminance_mean(stats: dict[str, float]) -> float:
    return 0.299 * stats["mean_r"] + 0.587 * stats["mean_g"] + 0.114 * stats["mean_b"]


def reference_statistics(images, margin: float = DEFAULT_MARGIN,
                         mahalanobis_factor: float = DEFAULT_MAHALANOBIS_FACTOR) -> dict:
    """Reference statistics of training images, stored in the card as `input_statistics`.

    images: uint8 array N x H x W x 3 (or any iterable of uint8 HxWx3 arrays), N >= 20, decoded and
    resized exactly as the model's inputs. Returns a JSON-serialisable dict: per statistic the
    0.5/25/50/75/99.5 % quantiles, the Mahalanobis model (median, scale, inverse covariance and the
    99.9 % distance), the training's mean-luminance and clipped-share quantiles, and the rule's
    parameters. Raises ValueError with fewer than 20 images.
    """
    rows, shape = [], None
    for im in images:
        rows.append(image_statistics(im))
        shape = shape or [int(v) for v in np.asarray(im).shape[:2]]
    return _reference_from_stats(rows, shape, margin, mahalanobis_factor)


def _reference_from_stats(rows: list[dict[str, float]], shape=None, margin: float = DEFAULT_MARGIN,
                          mahalanobis_factor: float = DEFAULT_MAHALANOBIS_FACTOR) -> dict:
    if len(rows) < 20:
        raise ValueError(f"reference statistics need at least 20 images, got {len(rows)}")
    x = np.stack([_vector(r) for r in rows])
    q = np.percentile(x, [0.5, 25, 50, 75, 99.5], axis=0)
    med = q[2]
    scale = (q[3] - q[1]) / 1.349  # IQR of a normal distribution = 1.349 sigma
    scale = np.where(scale > 1e-9, scale, np.maximum(np.abs(med) * 1e-3, 1e-3))
    z = (x - med) / scale
    cov = np.cov(z, rowvar=False)
    cov = 0.9 * cov + 0.1 * np.diag(np.diag(cov)) + 1e-6 * np.eye(len(STATISTICS))  # shrink: stable inverse
    inv = np.linalg.inv(cov)
    d = np.sqrt(np.einsum("ij,jk,ik->i", z - z.mean(0), inv, z - z.mean(0)))
    lum = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    clipped = x[:, STATISTICS.index("clipped_fraction")]
    return {
        "version": REFERENCE_VERSION,
        "n_images": int(len(x)),
        "image_size": shape,
        "statistics": list(STATISTICS),
        "quantiles": {
            name: {"p0.5": float(q[0, i]), "p25": float(q[1, i]), "p50": float(q[2, i]),
                   "p75": float(q[3, i]), "p99.5": float(q[4, i])}
            for i, name in enumerate(STATISTICS)
        },
        "mahalanobis": {
            "center": [float(v) for v in med], "scale": [float(v) for v in scale],
            "mean_z": [float(v) for v in z.mean(0)], "inv_cov": [[float(v) for v in row] for row in inv],
            "p99.9": float(np.percentile(d, 99.9)),
        },
        "luminance": {"p0.5": float(np.percentile(lum, 0.5)), "p99.5": float(np.percentile(lum, 99.5))},
        "clipped": {"p99.5": float(np.percentile(clipped, 99.5))},
        "rule": {"margin": float(margin), "mahalanobis_factor": float(mahalanobis_factor)},
    }


def _check_reference(ref: dict) -> None:
    if not isinstance(ref, dict) or ref.get("version") != REFERENCE_VERSION:
        raise ValueError(f"input_statistics: unsupported version {ref.get('version') if isinstance(ref, dict) else ref!r}")
    if list(ref.get("statistics", [])) != list(STATISTICS):
        raise ValueError("input_statistics: statistics differ from this leukedge's (recompute them with train)")


_MODEL_CACHE: dict[int, tuple] = {}


def _mahalanobis_model(reference: dict) -> tuple:
    """The reference's Mahalanobis model as arrays, converted once per reference dict."""
    hit = _MODEL_CACHE.get(id(reference))
    if hit is not None and hit[0] is reference:
        return hit[1]
    mh = reference["mahalanobis"]
    model = (np.asarray(mh["center"], np.float64), np.asarray(mh["scale"], np.float64),
             np.asarray(mh["mean_z"], np.float64), np.asarray(mh["inv_cov"], np.float64), float(mh["p99.9"]))
    if len(_MODEL_CACHE) > 8:
        _MODEL_CACHE.clear()
    _MODEL_CACHE[id(reference)] = (reference, model)
    return model


def assess(rgb: np.ndarray, reference: dict | None = None, stats: dict[str, float] | None = None) -> list[Flag]:
    """Quality and out-of-distribution flags for one decoded uint8 HxWx3 image (the model's input).

    reference: the card's `input_statistics` (from `reference_statistics`); None = only the absolute
    check (constant image). stats: precomputed `image_statistics(rgb)` (then rgb may be None). Returns an empty
    list for an unremarkable image. Quality flags come first; the OOD flag is added only when no
    quality flag explains the image. Raises ValueError for a reference of another version.
    """
    s = stats if stats is not None else image_statistics(rgb)
    flags: list[Flag] = []
    if s["green_std"] < 0.5 and all(s[f"fg_{c}_p95"] - s[f"fg_{c}_p05"] < 1 for c in "rgb"):
        return [Flag("constant", "quality", f"constant image (every pixel ~RGB "
                                            f"{s['mean_r']:.0f},{s['mean_g']:.0f},{s['mean_b']:.0f})")]
    if reference is None:
        return flags
    _check_reference(reference)
    lum = _luminance_mean(s)
    lo, hi = reference["luminance"]["p0.5"], reference["luminance"]["p99.5"]
    if lum < 0.5 * lo:
        flags.append(Flag("too_dark", "quality", f"far darker than training: mean luminance {lum:.1f}, "
                                                 f"training's 0.5th percentile {lo:.1f}"))
    elif lum > hi + 0.5 * (255.0 - hi):
        flags.append(Flag("too_bright", "quality", f"far brighter than training: mean luminance {lum:.1f}, "
                                                   f"training's 99.5th percentile {hi:.1f}"))
    clip_hi = reference["clipped"]["p99.5"]
    if s["clipped_fraction"] > 0.5 and s["clipped_fraction"] > clip_hi + 0.25:
        flags.append(Flag("saturated", "quality", f"mostly saturated: {100 * s['clipped_fraction']:.0f} % of pixels "
                                                  f"at 255 (training at most {100 * clip_hi:.0f} %)"))
    if flags:
        return flags
    rule = reference.get("rule", {})
    margin = float(rule.get("margin", DEFAULT_MARGIN))
    factor = float(rule.get("mahalanobis_factor", DEFAULT_MAHALANOBIS_FACTOR))
    outside = []
    for name in STATISTICS:
        qd = reference["quantiles"][name]
        width = qd["p99.5"] - qd["p0.5"]
        low, high = qd["p0.5"] - margin * width, qd["p99.5"] + margin * width
        v = s[name]
        if v < low or v > high:
            # how far outside, in units of the training's 0.5..99.5 % range
            dist = (low - v if v < low else v - high) / (width if width > 0 else 1.0)
            outside.append((dist, name, v, qd["p0.5"], qd["p99.5"]))
    center, scale, mean_z, inv_cov, p999 = _mahalanobis_model(reference)
    z = (_vector(s) - center) / scale - mean_z
    d = float(np.sqrt(max(z @ inv_cov @ z, 0.0)))
    limit = factor * p999
    if outside:
        _, name, v, p0, p1 = max(outside)
        more = f" (+{len(outside) - 1} more)" if len(outside) > 1 else ""
        flags.append(Flag("ood", "ood", f"unlike the training images: {name} = {v:.3g}, training range "
                                        f"{p0:.3g}..{p1:.3g}{more}; Mahalanobis distance {d:.1f} (limit {limit:.1f})"))
    elif d > limit:
        flags.append(Flag("ood", "ood", f"unlike the training images: Mahalanobis distance {d:.1f} over the "
                                        f"statistics, above the limit {limit:.1f}"))
    return flags


def dataset_report(paths, size: int = 224, reference: dict | None = None, first: int = 5,
                   options=None) -> dict:
    """Quality/OOD flags over a dataset's images (for `leukedge data inspect`).

    paths: image files. size: decode side (the model's input size). reference: the statistics to
    compare with; None = the dataset's own (`reference_statistics` of every readable image), so the
    OOD flag marks images far from the rest of the dataset. options: `DecodeOptions` for load_rgb.
    Returns {"checked", "flagged", "per_reason": {code: count}, "examples": {code: [first paths]},
    "unreadable": [(path, problem)], "reference": "dataset" | "given"}. Never raises for a bad image.
    """
    from .preprocess import ImageError, load_rgb

    stats, unreadable = [], []
    for p in paths:
        try:
            stats.append((str(p), image_statistics(load_rgb(p, size, "bilinear", options))))
        except ImageError as exc:
            unreadable.append((str(p), exc.problem))
    ref, source = reference, "given"
    if ref is None:
        _, all_flags, ref = _self_screen([s for _, s in stats])
        source = "dataset"
    else:
        all_flags = [assess(None, ref, stats=s) for _, s in stats]
    per_reason: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    flagged = 0
    for (p, s), flags in zip(stats, all_flags):
        if flags:
            flagged += 1
        for f in flags:
            per_reason[f.code] = per_reason.get(f.code, 0) + 1
            if len(examples.setdefault(f.code, [])) < first:
                examples[f.code].append(f"{p}: {f.message}")
    return {"checked": len(stats), "flagged": flagged, "per_reason": per_reason, "examples": examples,
            "unreadable": unreadable, "reference": source if ref is not None else "none (fewer than 20 images)"}


def screen_training_images(images, drop: tuple[str, ...] = ("quality",)) -> tuple[np.ndarray, list[list[Flag]], dict | None]:
    """The training-time gate: which decoded training images to keep, why others go, and the card's reference.

    images: uint8 N x H x W x 3 (the decoded, resized training inputs). Each image is assessed against
    the statistics of the others that pass (the same checks as the device and `data inspect`, iterated
    so a few broken images cannot widen the range they are judged by). drop: the flag kinds that drop
    an image ("quality" by default; add "ood" to drop the outliers of the training set too). The
    reference for the card (`input_statistics`) is computed from the kept images.
    Returns (keep: bool array (N,), flags: per image list of Flag (all kinds), reference dict, or None
    when fewer than 20 images are kept). Never raises for an odd image.
    """
    stats = [image_statistics(im) for im in images]
    shape = [int(v) for v in np.asarray(images[0]).shape[:2]] if len(stats) else None
    _, flags, _ = _self_screen(stats)
    keep = np.array([not any(f.kind in drop for f in fl) for fl in flags], dtype=bool)
    kept = [s for s, k in zip(stats, keep) if k]
    ref = _reference_from_stats(kept, shape) if len(kept) >= 20 else None
    return keep, flags, ref


def _self_screen(stats: list[dict[str, float]], rounds: int = 3):
    """Flags of a set of images against their own statistics, robust to a few broken ones.

    Round 0 keeps what passes the absolute check (constant); each round then recomputes the reference
    from the images without a quality flag so far and reassesses every image, so one broken image does
    not widen the range it is judged by (OOD-flagged images stay in the reference: they are the
    dataset's own edges, and dropping them would shrink the range round after round).
    Returns (keep: no flag of any kind, flags, reference of the images without quality flags, or None).
    """
    flags = [assess(None, None, stats=s) for s in stats]
    usable = np.array([not f for f in flags], dtype=bool)
    ref = None
    for _ in range(rounds):
        kept = [s for s, k in zip(stats, usable) if k]
        if len(kept) < 20:
            return usable, flags, None
        ref = _reference_from_stats(kept)
        flags = [assess(None, ref, stats=s) for s in stats]
        new = np.array([not any(f.kind == "quality" for f in fl) for fl in flags], dtype=bool)
        if np.array_equal(new, usable):
            break
        usable = new
    keep = np.array([not f for f in flags], dtype=bool)
    return keep, flags, ref
