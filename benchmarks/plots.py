"""The benchmark's F1-against-latency chart (`f1_vs_latency.png`), designed for many variant families.

One point per variant at (ms per image, F1 of the positive class) with its 95 % interval as a
vertical bar. The F1 axis ends at 1.0, its maximum. Colour is the variant's *family*: a variant
and its versions at other input sizes (`int8`, `int8@160`) are one family; channel-pruned variants
of every width and size (`slim60-int8`, `slim80-int8@160`) are another. A family's members are joined
by a line in latency order, so a curve shows what shrinking buys. Shape is
the engine that ran it (LiteRT, ONNX Runtime, OpenVINO, TensorRT, Keras). The Pareto front — the
variants no other variant beats on both F1 and latency — is a dashed step line, its points ringed.
Points that would land on one another are fanned out around their true place (a thin line
points back to it), so no marker hides another; every point carries its name.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

# Okabe-Ito (colour-blind safe), then tab10's remaining hues for many families
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#9467bd", "#8c564b", "#56B4E9",
           "#7f7f7f", "#bcbd22", "#17becf", "#e7298a"]  # no black (the Pareto front's) and no pale yellow
ENGINE_MARKERS = {"litert": "o", "onnxruntime": "s", "tensorrt": "^", "openvino": "D", "keras": "P"}
ENGINE_NAMES = {"litert": "LiteRT", "onnxruntime": "ONNX Runtime", "tensorrt": "TensorRT", "openvino": "OpenVINO",
                "keras": "Keras (TensorFlow)"}
_SIZE = re.compile(r"@\d+$")
_SLIM_WIDTH = re.compile(r"(^|-)slim\d+(?=-|$)")


def variant_family(row: dict) -> str:
    """The family a benchmark row belongs to: its `family` field when it has one, else its name without
    an input-size suffix (`int8@160` -> `int8`) and with any channel width dropped (`slim60-int8` -> `slim-int8`)."""
    if row.get("family"):
        return str(row["family"])
    return _SLIM_WIDTH.sub(r"\1slim", _SIZE.sub("", str(row["variant"])))


def variant_engine(row: dict) -> str:
    """ENGINE_MARKERS key for the engine that ran a row (from its `engine`, `runtime` and `format` fields)."""
    text = " ".join(str(row.get(k) or "") for k in ("engine", "runtime", "format")).lower()
    for key, words in (("tensorrt", ("tensorrt", "trt")), ("openvino", ("openvino",)),
                       ("onnxruntime", ("onnx",)), ("keras", ("keras", "tensorflow ")), ("litert", ("lite",))):
        if any(w in text for w in words):
            return key
    return "keras" if row.get("format") == "keras" else "litert"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower x = latency, higher y = F1),
    in increasing x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _fan_out(xy: list[tuple[float, float]], min_px: float) -> list[tuple[float, float]]:
    """Display positions: points closer than min_px to another are spread on a small circle around
    their group's centre, far enough apart that none covers another."""
    n = len(xy)
    group = list(range(n))

    def root(i):
        while group[i] != i:
            group[i] = group[group[i]]
            i = group[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if math.dist(xy[i], xy[j]) < min_px:
                group[root(i)] = root(j)
    out = list(xy)
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(root(i), []).append(i)
    for idx in members.values():
        if len(idx) < 2:
            continue
        cx = sum(xy[i][0] for i in idx) / len(idx)
        cy = sum(xy[i][1] for i in idx) / len(idx)
        radius = min_px / (2 * math.sin(math.pi / len(idx))) if len(idx) > 2 else min_px / 2
        for k, i in enumerate(sorted(idx, key=lambda i: xy[i])):
            a = math.pi / 2 + 2 * math.pi * k / len(idx) + (math.pi / 2 if len(idx) == 2 else 0)
            out[i] = (cx + radius * math.cos(a), cy + radius * math.sin(a))
    return out


def _place_labels(ax, fig, anchors_px, texts, marker_px, color_of):
    """Each label beside its marker, at the first of 16 offsets (8 directions, near then far) that overlaps no
    marker and no earlier label; failing that, where it overlaps fewest. A white backing keeps it readable."""
    renderer = fig.canvas.get_renderer()
    taken = [(x - marker_px / 2, y - marker_px / 2, x + marker_px / 2, y + marker_px / 2) for x, y in anchors_px]
    inv = ax.transData.inverted()
    gap = marker_px / 2 + 3
    offsets = [(k * dx, k * dy, ha, va) for k in (1, 2.4, 4.0) for dx, dy, ha, va in
               [(gap, 0, "left", "center"), (0, gap, "center", "bottom"), (-gap, 0, "right", "center"),
                (0, -gap, "center", "top"), (gap, gap, "left", "bottom"), (-gap, gap, "right", "bottom"),
                (-gap, -gap, "right", "top"), (gap, -gap, "left", "top")]]
    bbox_ax = ax.get_window_extent(renderer)
    for i, ((x, y), text) in enumerate(zip(anchors_px, texts)):
        best = None
        for dx, dy, ha, va in offsets:
            t = ax.text(*inv.transform((x + dx, y + dy)), text, ha=ha, va=va, fontsize=7.5, color=color_of[i],
                        zorder=6, bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "alpha": 0.8,
                                        "edgecolor": "none"})
            bb = t.get_window_extent(renderer)
            box = (bb.x0 - 1, bb.y0 - 1, bb.x1 + 1, bb.y1 + 1)
            clash = sum(1 for o in taken if box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3])
            outside = box[0] < bbox_ax.x0 or box[2] > bbox_ax.x1 or box[1] < bbox_ax.y0 or box[3] > bbox_ax.y1
            score = clash + (2 if outside else 0)
            if best is None or score < best[0]:
                if best is not None:
                    best[1].remove()
                best = (score, t, box)
            else:
                t.remove()
            if score == 0:
                break
        taken.append(best[2])
        far = math.hypot(best[2][0] - x, best[2][1] - y) > 2.5 * gap and min(
            abs(best[2][0] - x), abs(best[2][2] - x)) > gap
        if far:  # a label set apart gets a hairline to its marker
            ax.annotate("", xy=inv.transform((x, y)), xytext=inv.transform(((best[2][0] + best[2][2]) / 2,
                                                                            (best[2][1] + best[2][3]) / 2)),
                        arrowprops={"arrowstyle": "-", "color": color_of[i], "linewidth": 0.5, "alpha": 0.7,
                                    "shrinkA": 6, "shrinkB": marker_px / 2}, zorder=3)


def f1_vs_latency(results: dict, path: str | Path) -> Path:
    """Write the chart for a benchmark's results (results.json's dict) to `path`; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = [r for r in results["variants"] if r.get("latency", {}).get("all_cores", {}).get("p50")
            and r.get("metrics", {}).get("f1_positive") is not None]
    fig, ax = plt.subplots(figsize=(9.5, 5.6 if len(rows) <= 12 else 7.0))
    if not rows:
        ax.text(0.5, 0.5, "no variant with both F1 and latency", ha="center", va="center", transform=ax.transAxes)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return Path(path)
    ms = [r["latency"]["all_cores"]["p50"] for r in rows]
    f1 = [r["metrics"]["f1_positive"] for r in rows]
    ci = [(r.get("intervals", {}).get("f1_positive") or {}) for r in rows]
    lows = [c.get("low", v) if c.get("low") is not None else v for c, v in zip(ci, f1)]
    highs = [c.get("high", v) if c.get("high") is not None else v for c, v in zip(ci, f1)]
    families = list(dict.fromkeys(variant_family(r) for r in rows))
    colour = {fam: PALETTE[i % len(PALETTE)] for i, fam in enumerate(families)}
    engines = [variant_engine(r) for r in rows]

    # axes first (the fan-out works in pixels): log latency when it spans more than 3x; F1 up to exactly 1.0
    log_x = max(ms) / min(ms) > 3
    if log_x:
        ax.set_xscale("log")
        ax.set_xlim(min(ms) / 1.35, max(ms) * 1.35)
    else:
        span = max(max(ms) - min(ms), 0.1 * max(ms))
        ax.set_xlim(max(0.0, min(ms) - 0.2 * span), max(ms) + 0.2 * span)
    bottom = min(lows + f1)
    bottom = max(0.0, bottom - max(0.02, 0.12 * (1.0 - bottom)))
    ax.set_ylim(bottom, 1.0)
    fig.subplots_adjust(left=0.09, right=0.70, top=0.87, bottom=0.11)

    marker_px = 11.0 if len(rows) <= 12 else 9.0
    true_px = [tuple(ax.transData.transform((x, y))) for x, y in zip(ms, f1)]
    shown_px = _fan_out(true_px, min_px=marker_px + 9)  # a Pareto ring is marker_px + 7 wide
    inv = ax.transData.inverted()
    shown = [tuple(inv.transform(p)) for p in shown_px]

    # intervals at the true positions, thin, under everything else
    for x, y, lo, hi, r in zip(ms, f1, lows, highs, rows):
        ax.plot([x, x], [lo, hi], color=colour[variant_family(r)], alpha=0.5, linewidth=1.4, zorder=1,
                solid_capstyle="butt", clip_on=False)
    # families with more than one member: a curve in latency order
    for fam in families:
        idx = sorted((i for i, r in enumerate(rows) if variant_family(r) == fam), key=lambda i: ms[i])
        if len(idx) > 1:
            ax.plot([shown[i][0] for i in idx], [shown[i][1] for i in idx], color=colour[fam], linewidth=1.2,
                    alpha=0.8, zorder=2, clip_on=False)
    front = pareto_front(list(zip(ms, f1)))
    fx = [ms[i] for i in front]
    fy = [f1[i] for i in front]
    ax.step(fx + [ax.get_xlim()[1]], fy + [fy[-1]], where="post", color="black", linestyle="--", linewidth=1,
            alpha=0.7, zorder=2)
    for i, r in enumerate(rows):
        if shown_px[i] != true_px[i]:  # fanned out: a hairline back to the true place, and a dot there
            ax.plot([ms[i], shown[i][0]], [f1[i], shown[i][1]], color="0.35", linewidth=0.6, zorder=3, clip_on=False)
            ax.plot([ms[i]], [f1[i]], marker=".", color="0.2", markersize=3, zorder=3, clip_on=False)
        ax.scatter([shown[i][0]], [shown[i][1]], s=marker_px ** 2, marker=ENGINE_MARKERS[engines[i]],
                   facecolor=colour[variant_family(r)], edgecolor="white", linewidth=0.8, zorder=4, clip_on=False)
        if i in front:
            ax.scatter([shown[i][0]], [shown[i][1]], s=(marker_px + 7) ** 2, marker="o", facecolor="none",
                       edgecolor="black", linewidth=1.1, zorder=5, clip_on=False)
    labels = [f"{r['variant']}" + (f" · {r['size_bytes'] / 1e6:.0f} MB" if r.get("size_bytes") else "") for r in rows]
    _place_labels(ax, fig, shown_px, labels, marker_px, [colour[variant_family(r)] for r in rows])

    if log_x:
        from matplotlib.ticker import FuncFormatter, LogLocator

        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_locator(LogLocator(base=10, subs=(1.5, 3.0, 4.0, 7.0)))
        fmt = FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(fmt)
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    threads = results.get("settings", {}).get("all_cores_threads") or next(
        (r["latency"]["all_cores"].get("threads") for r in rows if isinstance(r["latency"]["all_cores"].get("threads"), int)),
        None)
    ax.set_xlabel(f"ms per image (median, {threads or 'all'} threads" + ("; log scale)" if log_x else ")"))
    ax.set_ylabel(f"F1 ({results.get('positive_label', 'positive')}), 95 % interval")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(nbins=7, steps=[1, 2, 5, 10]))
    ax.grid(alpha=0.3, which="major")
    data = results.get("data", {})
    cpu = results.get("machine", {}).get("cpu") or "unknown processor"
    ax.set_title(f"F1 against latency: {data.get('images', '?')} {data.get('part', '')} images\n{cpu}", fontsize=10, pad=12)

    handles = [Line2D([], [], color=colour[f], marker="o", linestyle="-", linewidth=1.2, markersize=7,
                      markeredgecolor="white", label=f) for f in families]
    used = list(dict.fromkeys(engines))
    handles += [Line2D([], [], color="0.3", marker=ENGINE_MARKERS[e], linestyle="none", markersize=7,
                       label=ENGINE_NAMES[e]) for e in used]
    handles += [Line2D([], [], color="black", linestyle="--", marker="o", markerfacecolor="none", markersize=9,
                       label="Pareto front (no variant is\nboth faster and more accurate)"),
                Line2D([], [], color="0.4", linewidth=1.4, alpha=0.6, label="95 % interval of F1")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False,
              title="family (colour), engine (shape)", title_fontsize=8, alignment="left")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
