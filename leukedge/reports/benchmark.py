"""What `leukedge benchmark` writes for people: report.md and f1_vs_latency.png (reliability.png is
`leukedge.reports.plot_reliability`), and the composed-fields benchmark's Markdown.

Each function takes the plain dicts the benchmark already wrote as JSON (results.json's dict), so a report or a
chart can be redrawn from a results file without re-running the benchmark. No TensorFlow; matplotlib (Agg) is
imported only inside the functions that draw.

The F1-against-latency chart (`f1_vs_latency.png`) is designed for many variant families. One point per variant
at (ms per image, F1 of the positive class) with its 95 % interval as a vertical bar. The F1 axis ends at 1.0,
its maximum. Colour is the variant's *family*: a variant and its versions at other input sizes (`int8`,
`int8@160`) are one family; channel-pruned variants of every width and size (`slim60-int8`, `slim80-int8@160`)
are another. A family's members are joined by a line in latency order, so a curve shows what shrinking buys.
Shape is the engine that ran it (LiteRT, ONNX Runtime, OpenVINO, TensorRT, Keras). The Pareto front — the
variants no other variant beats on both F1 and latency — is a dashed step line, its points ringed. Points that
would land on one another are fanned out around their true place (a thin line points back to it), so no marker
hides another; every point carries its name.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
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


@dataclass
class _Chart:
    """The f1_vs_latency chart being drawn: the rows with both figures, their values, each row's family colour
    and engine, and (once the axes are set) where each point is shown, in pixels and in data units."""

    rows: list[dict]
    ms: list[float]
    f1: list[float]
    lows: list[float]
    highs: list[float]
    families: list[str]
    colour: dict[str, str]
    engines: list[str]
    log_x: bool = False
    marker_px: float = 11.0
    true_px: list = field(default_factory=list)
    shown_px: list = field(default_factory=list)
    shown: list = field(default_factory=list)

    def colour_of(self, i: int) -> str:
        return self.colour[variant_family(self.rows[i])]


def _chart_data(rows: list[dict]) -> _Chart:
    """The values to draw for rows that have both a median latency (all cores) and an F1; a missing interval
    end is the F1 itself."""
    f1 = [r["metrics"]["f1_positive"] for r in rows]
    ci = [(r.get("intervals", {}).get("f1_positive") or {}) for r in rows]
    families = list(dict.fromkeys(variant_family(r) for r in rows))
    return _Chart(rows=rows, ms=[r["latency"]["all_cores"]["p50"] for r in rows], f1=f1,
                  lows=[c.get("low", v) if c.get("low") is not None else v for c, v in zip(ci, f1)],
                  highs=[c.get("high", v) if c.get("high") is not None else v for c, v in zip(ci, f1)],
                  families=families, colour={fam: PALETTE[i % len(PALETTE)] for i, fam in enumerate(families)},
                  engines=[variant_engine(r) for r in rows])


def _set_axes(fig, ax, chart: _Chart) -> None:
    """Axes first (the fan-out works in pixels): log latency when it spans more than 3x; F1 up to exactly 1.0.
    Then each point's shown place (fanned out where markers would cover each other)."""
    ms = chart.ms
    chart.log_x = max(ms) / min(ms) > 3
    if chart.log_x:
        ax.set_xscale("log")
        ax.set_xlim(min(ms) / 1.35, max(ms) * 1.35)
    else:
        span = max(max(ms) - min(ms), 0.1 * max(ms))
        ax.set_xlim(max(0.0, min(ms) - 0.2 * span), max(ms) + 0.2 * span)
    bottom = min(chart.lows + chart.f1)
    bottom = max(0.0, bottom - max(0.02, 0.12 * (1.0 - bottom)))
    ax.set_ylim(bottom, 1.0)
    fig.subplots_adjust(left=0.09, right=0.70, top=0.87, bottom=0.11)
    chart.marker_px = 11.0 if len(chart.rows) <= 12 else 9.0
    chart.true_px = [tuple(ax.transData.transform((x, y))) for x, y in zip(ms, chart.f1)]
    chart.shown_px = _fan_out(chart.true_px, min_px=chart.marker_px + 9)  # a Pareto ring is marker_px + 7 wide
    inv = ax.transData.inverted()
    chart.shown = [tuple(inv.transform(p)) for p in chart.shown_px]


def _draw_points(fig, ax, chart: _Chart) -> None:
    """Intervals, family curves, the Pareto front, the markers (ringed on the front) and their labels."""
    ms, f1, shown, rows = chart.ms, chart.f1, chart.shown, chart.rows
    # intervals at the true positions, thin, under everything else
    for i, (x, lo, hi) in enumerate(zip(ms, chart.lows, chart.highs)):
        ax.plot([x, x], [lo, hi], color=chart.colour_of(i), alpha=0.5, linewidth=1.4, zorder=1,
                solid_capstyle="butt", clip_on=False)
    # families with more than one member: a curve in latency order
    for fam in chart.families:
        idx = sorted((i for i, r in enumerate(rows) if variant_family(r) == fam), key=lambda i: ms[i])
        if len(idx) > 1:
            ax.plot([shown[i][0] for i in idx], [shown[i][1] for i in idx], color=chart.colour[fam], linewidth=1.2,
                    alpha=0.8, zorder=2, clip_on=False)
    front = pareto_front(list(zip(ms, f1)))
    fx = [ms[i] for i in front]
    fy = [f1[i] for i in front]
    ax.step(fx + [ax.get_xlim()[1]], fy + [fy[-1]], where="post", color="black", linestyle="--", linewidth=1,
            alpha=0.7, zorder=2)
    marker_px = chart.marker_px
    for i in range(len(rows)):
        if chart.shown_px[i] != chart.true_px[i]:  # fanned out: a hairline back to the true place, and a dot there
            ax.plot([ms[i], shown[i][0]], [f1[i], shown[i][1]], color="0.35", linewidth=0.6, zorder=3, clip_on=False)
            ax.plot([ms[i]], [f1[i]], marker=".", color="0.2", markersize=3, zorder=3, clip_on=False)
        ax.scatter([shown[i][0]], [shown[i][1]], s=marker_px ** 2, marker=ENGINE_MARKERS[chart.engines[i]],
                   facecolor=chart.colour_of(i), edgecolor="white", linewidth=0.8, zorder=4, clip_on=False)
        if i in front:
            ax.scatter([shown[i][0]], [shown[i][1]], s=(marker_px + 7) ** 2, marker="o", facecolor="none",
                       edgecolor="black", linewidth=1.1, zorder=5, clip_on=False)
    labels = [f"{r['variant']}" + (f" · {r['size_bytes'] / 1e6:.0f} MB" if r.get("size_bytes") else "") for r in rows]
    _place_labels(ax, fig, chart.shown_px, labels, marker_px, [chart.colour_of(i) for i in range(len(rows))])


def _label_axes(ax, results: dict, chart: _Chart) -> None:
    """Ticks (plain numbers on a log axis), axis labels with the thread count, grid and the title (data, processor)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

    if chart.log_x:
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_locator(LogLocator(base=10, subs=(1.5, 3.0, 4.0, 7.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    threads = results.get("settings", {}).get("all_cores_threads") or next(
        (r["latency"]["all_cores"].get("threads") for r in chart.rows
         if isinstance(r["latency"]["all_cores"].get("threads"), int)), None)
    ax.set_xlabel(f"ms per image (median, {threads or 'all'} threads" + ("; log scale)" if chart.log_x else ")"))
    ax.set_ylabel(f"F1 ({results.get('positive_label', 'positive')}), 95 % interval")
    ax.yaxis.set_major_locator(MaxNLocator(nbins=7, steps=[1, 2, 5, 10]))
    ax.grid(alpha=0.3, which="major")
    data = results.get("data", {})
    cpu = results.get("machine", {}).get("cpu") or "unknown processor"
    ax.set_title(f"F1 against latency: {data.get('images', '?')} {data.get('part', '')} images\n{cpu}", fontsize=10, pad=12)


def _legend(ax, chart: _Chart) -> None:
    """The legend right of the axes: families (colour), the engines used (shape), the Pareto front, the interval."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=chart.colour[f], marker="o", linestyle="-", linewidth=1.2, markersize=7,
                      markeredgecolor="white", label=f) for f in chart.families]
    handles += [Line2D([], [], color="0.3", marker=ENGINE_MARKERS[e], linestyle="none", markersize=7,
                       label=ENGINE_NAMES[e]) for e in dict.fromkeys(chart.engines)]
    handles += [Line2D([], [], color="black", linestyle="--", marker="o", markerfacecolor="none", markersize=9,
                       label="Pareto front (no variant is\nboth faster and more accurate)"),
                Line2D([], [], color="0.4", linewidth=1.4, alpha=0.6, label="95 % interval of F1")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False,
              title="family (colour), engine (shape)", title_fontsize=8, alignment="left")


def f1_vs_latency(results: dict, path: str | Path) -> Path:
    """Write the F1-against-latency chart (module docstring) for a benchmark's results (results.json's dict:
    its `variants` rows with `latency.all_cores.p50` in ms and `metrics.f1_positive`) to `path` as PNG; rows
    without both are left out (none: a chart saying so). Returns the path. Raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["variants"] if r.get("latency", {}).get("all_cores", {}).get("p50")
            and r.get("metrics", {}).get("f1_positive") is not None]
    fig, ax = plt.subplots(figsize=(9.5, 5.6 if len(rows) <= 12 else 7.0))
    if not rows:
        ax.text(0.5, 0.5, "no variant with both F1 and latency", ha="center", va="center", transform=ax.transAxes)
    else:
        chart = _chart_data(rows)
        _set_axes(fig, ax, chart)
        _draw_points(fig, ax, chart)
        _label_axes(ax, results, chart)
        _legend(ax, chart)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


# -- report.md -------------------------------------------------------------------------------------------

def benchmark_markdown(results: dict) -> str:
    """report.md of `leukedge benchmark` from its results dict (results.json): which images and machine, one
    table row per variant (F1 and sensitivity with their 95 % intervals, ECE, agreement, latency in ms, cold
    start in s, peak memory in MiB, sizes in MB, verdict), regressions against a baseline and subject-level
    figures when the results have them. Returns the Markdown text; raises KeyError on a dict that is not a
    benchmark's results."""
    pos = results["positive_label"]
    m = results["machine"]
    d = results["data"]
    lines = [
        "# leukedge benchmark",
        "",
        f"{d['images']} **{d['part']}** images ({', '.join(f'{k} {v}' for k, v in d['per_class'].items())}) of "
        f"`{Path(d['root']).name}`, split '{d['split']}'; thresholds were chosen on {d.get('threshold_chosen_on', 'validation')}"
        + (" (the same images: optimistic)" if d["part"] == d.get("threshold_chosen_on", "validation") else "")
        + f". Machine: {m['cpu']}, {m['usable_cores']} cores, {m.get('tflite_runtime', '-')}, Python {m['python']}.",
        "",
        f"| variant | F1({pos}) [95 % CI] | {pos} sensitivity [95 % CI] | specificity | weighted F1 | AUROC | ECE (T=1 -> T) | agree | ms p50 (1 thr) | "
        f"ms p50 (all) | ms p99 (all) | img/s | x float32 | cold start s | peak MiB | MB | gzip MB | verdict |",
        "|---|" + "---:|" * 16 + "---|",
    ]
    for r in results["variants"]:
        mt, lat = r["metrics"], r["latency"]
        one = lat.get("1_thread", {}).get("p50")
        allc = lat["all_cores"]
        f = lambda v, fmt: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)  # noqa: E731
        iv, cal = r.get("intervals", {}), r.get("calibration", {})
        band = lambda k: "" if not iv.get(k) or iv[k]["low"] is None else f" [{iv[k]['low']:.3f}, {iv[k]['high']:.3f}]"  # noqa: E731
        ece = "-" if "ece_after" not in cal else (f"{cal['ece_before']:.3f} -> {cal['ece_after']:.3f}"
                                                   if cal.get("temperature", 1.0) != 1.0 else f"{cal['ece_after']:.3f}")
        lines.append(
            f"| {r['variant']} | {mt['f1_positive']:.4f}{band('f1_positive')} | {mt['sensitivity']:.4f}{band('sensitivity')} | "
            f"{mt['specificity']:.4f} | "
            f"{mt['weighted_f1']:.4f} | {f(mt['auroc'], '.4f')} | {ece} | {f(r['agreement_with_float'], '.3f')} | {f(one, '.2f')} | "
            f"{allc['p50']:.2f} | {allc['p99']:.2f} | {allc['images_per_second']:.1f} | "
            f"{f(r['latency_ratio_to_float32'], '.2f')} | {f(r.get('cold_start_s'), '.2f')} | "
            f"{f(r.get('peak_rss_mib'), '.0f')} | {r['size_bytes'] / 1e6:.2f} | {r['gzip_bytes'] / 1e6:.2f} | {r['verdict']} |")
    if "baseline" in results:
        lines += ["", f"Compared with baseline of {results['baseline']['created']} ({results['baseline']['machine']}):"]
        if results["regressions"]:
            for g in results["regressions"]:
                lines.append(f"- REGRESSION {g['variant']}: {g['what']} {g['baseline']:.4f} -> {g['now']:.4f}")
        else:
            lines.append("- no regressions")
    subj = [r for r in results["variants"] if r.get("subject_level")]
    if subj:
        lines += ["", "Subject level (per-subject flagged fraction; AUROC across subjects):", ""]
        for r in subj:
            sl = r["subject_level"]
            lines.append(f"- {r['variant']}: {sl.get('n_subjects', '-')} subjects, AUROC of the flagged fraction "
                         f"{f(sl.get('auroc_flagged_fraction'), '.3f')}, of mean P {f(sl.get('auroc_mean_p'), '.3f')}")
    lines += ["", "95 % CI: Wilson for sensitivity; seeded percentile bootstrap (1,000 resamples, subjects when the "
              "split has them) for F1. ECE: 15 equal-width bins on P(positive), uncalibrated (T=1) and with the card's "
              "temperature (reliability.png).",
              "Latency: single-image `invoke()` after warm-up; cold start: fresh `edge-classify` process on one "
              "image, spawn to exit (median); peak MiB: that process's max RSS (Keras: a fresh TensorFlow process).",
              "Verdict: the optimize step's budget gate against the float parent."]
    return "\n".join(lines) + "\n"


# -- the composed-fields benchmark ---------------------------------------------------------------------

def composed_fields_markdown(res: dict) -> str:
    """The composed-fields benchmark's headline figures (leukedge.benchmarks.composed_fields: its results dict)
    as a short Markdown table, written beside its JSON. Returns the text; raises KeyError on another dict."""
    m, c, s = res["machine"], res["composition"], res["summary"]
    lines = ["# Composed fields (issue 25 item 3)", "",
             f"{c['cnmc_cells']} C-NMC cells x {c['placements_per_cell']} placements in {c['frames']} frames on "
             f"{c['backgrounds']} painted-out BCCD backgrounds; scale 0.6-1.5x; C-NMC um/px {c['cnmc_um_per_px']} "
             f"({c['cnmc_um_per_px_from']}); BCCD um/px {c['bccd_um_per_px']}.",
             f"Model: {res['model']['name']} ({res['model']['input_px']} px, threshold {res['model']['threshold']:.3f}), "
             f"{m['engine']} {m['engine_version']}, 1 thread. Machine: {m['cpu']}, {m['isa_summary']}.", "",
             "| frame scale from | placed | found | split | false cells | mask IoU median (p10) | vs | |dP| median | |dP| p95 | agreement (per-cell P >= 0.1 from threshold) |",
             "|---|---:|---:|---:|---:|---|---|---:|---:|---|"]
    for arm in ("camera", "ruler"):
        a = s[arm]
        iou = "-" if a["mask_iou_median"] is None else f"{a['mask_iou_median']:.3f} ({a['mask_iou_p10']:.3f})"
        for key, vs in (("frame_vs_per_cell", "original file"), ("frame_vs_rotated_cell", "rotated cell")):
            d = a[key]
            agr = ("-" if not d.get("cells_away_from_threshold") else
                   f"{d['agreement_away']:.3f} of {d['cells_away_from_threshold']}")
            head = (f"| {arm} | {a['placed']} | {a['found']} | {a['split']} | {a['false_cells']} | {iou} |"
                    if key == "frame_vs_per_cell" else "| | | | | | |")
            lines.append(f"{head} {vs} | {d.get('dp_median', '-')} | {d.get('dp_p95', '-')} | {agr} |")
    lines += ["", "References without the locator (|dP| median / p95, agreement away from the threshold):", ""]
    for key in ("oracle_crop_vs_per_cell", "rotated_cell_vs_per_cell", "oracle_crop_vs_rotated_cell"):
        d = s[key]
        lines.append(f"- {key.replace('_', ' ')}: {d['dp_median']} / {d['dp_p95']}, "
                     f"{d['agreement_away']} of {d['cells_away_from_threshold']}")
    lines.append("")
    return "\n".join(lines) + "\n"
