"""Does channel pruning make int8 InceptionV3 faster? Slim variants against LiteRT int8, side by side.

Speed does not depend on the weights' values, so this runs on InceptionV3 with random weights
(tf.keras.applications.InceptionV3(weights=None, include_top=False, pooling="avg") + Dense(2, softmax),
the screening model's shape) and needs no data and no training. Each variant is thinned by
optimize.channels (the "l1" criterion: with random weights the choice of filters is arbitrary, the
number kept per layer - what speed follows - is the planner's), converted to full-integer int8 by
the project's converter (optimize.convert.to_tflite, 16 random calibration images), and timed by
LiteRT through edge.runtime.open_interpreter (the device's own loader), at 1 and at 2 threads.

Timing: an interpreter per model and thread count is loaded and warmed up (5 invokes), then `runs`
rounds in which each is invoked once in turn (alternating, so drift and neighbours' load hit all
alike); the median of the rounds is the figure, with the inter-quartile range. Each figure is also given per
multiply-accumulate (ps/MAC in the report, ns_per_mac in the JSON), so a variant that is smaller but not
faster is visible.

Rows named `.tN` are planned for a processor whose int8 kernel computes N output channels at a time
(optimize --channel-tile N; N defaults to this processor's, edge.machine.int8_channel_tile), and a tile
probe (tile_probe) measures that tile. `--withhold-amx` refuses the process AMX first
(benchmarks.machine.withhold_amx), so an AMX machine also gives the AVX-512 VNNI class's figures.

Resumable: the converted models are kept in `--work` (default runs/slim-speed, ignored by git)
and reused; the timing itself takes a few minutes. Run: `nice -n 10 python -m leukedge.benchmarks.slim_speed`.
Writes benchmarks/results/slim-speed.json and .md (the CPU named: model name and the
instruction-set flags that matter to int8 kernels).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
# (name, share of MACs kept by channel pruning or None, input size[, average pools as depthwise convolutions
# [, channel tile]]): int8 at 224 px is the baseline. Every row is converted with optimize --int8-pools depthwise
# (optimize.pooling) except "int8-avgpool", int8 as optimize converts it by default (TFLite's own average pool,
# outside XNNPACK): this row shows what the pools cost. Rows named ".tN" are planned for a processor whose int8
# kernel computes N output channels at a time (optimize --channel-tile N; 64: AMX), the others with the
# portable rounding (--channel-tile none).
BASE_VARIANTS = (("int8", None, 224), ("int8-avgpool", None, 224, False), ("slim60-int8", 0.60, 224),
                 ("slim50-int8", 0.50, 224),
                 ("slim40-int8", 0.40, 224), ("slim30-int8", 0.30, 224), ("int8@160", None, 160),
                 ("slim60-int8@160", 0.60, 160), ("slim50-int8@160", 0.50, 160), ("slim40-int8@160", 0.40, 160),
                 ("slim60-int8@192", 0.60, 192), ("slim50-int8@192", 0.50, 192))
TILE_ROWS = (("slim60-int8", 0.60, 224), ("slim50-int8", 0.50, 224), ("slim60-int8@160", 0.60, 160),
             ("slim50-int8@160", 0.50, 160))


def variants_for(tile: int) -> tuple:
    """BASE_VARIANTS plus TILE_ROWS planned for `tile` (names "<row>.t<tile>"); tile <= 8 adds none (the
    portable rounding already is that tile)."""
    return BASE_VARIANTS + (tuple((f"{n}.t{tile}", share, px, True, tile) for n, share, px in TILE_ROWS)
                            if tile > 8 else ())


DEFAULT_VARIANTS = variants_for(64)
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_tile",
             "asimd", "asimddp", "i8mm", "sve")


def cpu_flags() -> list[str]:
    """The instruction-set flags of ISA_FLAGS this processor reports (/proc/cpuinfo; [] elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            have = set(line.split(":", 1)[1].split())
            return [f for f in ISA_FLAGS if f in have]
    return []


def reference_model(size: int, seed: int = 0):
    """Random-weight InceptionV3 (no top, average pooling) + Dense(2, softmax), flat, at `size` px."""
    from leukedge.tfcompat import tensorflow

    tf = tensorflow()
    tf.keras.utils.set_random_seed(seed)
    base = tf.keras.applications.InceptionV3(weights=None, include_top=False, pooling="avg",
                                             input_shape=(size, size, 3))
    out = tf.keras.layers.Dense(2, activation="softmax", name="probabilities")(base.output)
    return tf.keras.Model(base.input, out, name="inception_v3_random")


def build(work: Path, variants, seed: int = 0) -> list[dict]:
    """Convert each variant to int8 TFLite in `work` (reusing files already there). Returns one dict each:
    {"variant", "file", "input_size", "tile", "macs", "params", "macs_kept", "width", "bytes"}."""
    from leukedge.optimize.channels import at_size, count_macs, count_params, slim
    from leukedge.optimize.convert import INT8_REWRITES, representative_from, to_tflite

    work.mkdir(parents=True, exist_ok=True)
    parent = None
    rows = []
    for name, share, size, *flags in variants:
        rewrite = flags[0] if flags else True
        tile = flags[1] if len(flags) > 1 else 0
        rewrites = list(INT8_REWRITES) if rewrite else []
        path = work / f"{name}.tflite"
        meta_path = work / f"{name}.json"
        if path.exists() and meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if meta.get("graph_rewrites", []) == rewrites and meta.get("tile", 0) == tile:  # converted the same way
                rows.append(meta)
                continue
        if parent is None:
            parent = reference_model(224, seed)
        model, info = parent, {"macs_kept": 1.0, "width": 1.0}
        if share is not None:
            model, report = slim(parent, share, "l1", tile=tile)
            info = {"macs_kept": report["macs_kept"], "width": report["width"]}
        model = at_size(model, size)
        calib = np.random.default_rng(seed).normal(0, 1, (16, size, size, 3)).astype(np.float32)
        t0 = time.perf_counter()
        path.write_bytes(to_tflite(model, "int8", representative_from(calib), pools_as_depthwise=rewrite))
        row = {"variant": name, "file": path.name, "input_size": size, "tile": tile, "graph_rewrites": rewrites,
               "macs": count_macs(model),
               "params": count_params(model), **info, "bytes": path.stat().st_size,
               "convert_seconds": round(time.perf_counter() - t0, 1)}
        meta_path.write_text(json.dumps(row, indent=2) + "\n")
        print(f"slim_speed: built {name}: {row['macs'] / 1e9:.2f} GMAC, {row['params'] / 1e6:.2f} M params",
              file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def time_models(work: Path, rows: list[dict], threads: list[int], runs: int, warmup: int = 5) -> None:
    """Alternating timed invokes of every model at every thread count; adds "ms_<t>t" stats to each row.

    One interpreter per (model, thread count), all loaded and warmed up first; each of the `runs`
    rounds invokes every one of them once, in the same order, so load from other processes during
    the run falls on every model and thread count alike. Stats: median, quartiles, ns per MAC.
    """
    from leukedge.edge.runtime_tflite import open_interpreter

    pairs = []
    for row in rows:
        for t in threads:
            interp, rt = open_interpreter(work / row["file"], threads=t)
            inp = interp.get_input_details()[0]
            x = np.random.default_rng(1).integers(-128, 128, inp["shape"], dtype=np.int8).astype(inp["dtype"])
            interp.set_tensor(inp["index"], x)
            for _ in range(warmup):
                interp.invoke()
            pairs.append((row, t, interp, []))
            row["runtime"] = f"{rt.name} {rt.version}"
    for _ in range(runs):
        for _, _, interp, ms in pairs:
            t0 = time.perf_counter()
            interp.invoke()
            ms.append((time.perf_counter() - t0) * 1e3)
    for row, t, _, ms in pairs:
        q = statistics.quantiles(ms, n=4)
        med = statistics.median(ms)
        row[f"ms_{t}t"] = {"median": round(med, 3), "q1": round(q[0], 3), "q3": round(q[2], 3),
                           "runs": len(ms), "ns_per_mac": round(med * 1e6 / row["macs"], 4)}


PROBE_FILTERS = (8, 16, 24, 32, 48, 64, 80, 96, 128, 192)


def tile_probe(work: Path, runs: int, threads: int = 1, size: int = 111, channels: int = 32,
               expected: int | None = None) -> dict:
    """The int8 channel tile of this processor, measured: one 3x3 int8 convolution at each filter count.

    A model of one Conv2D(N, 3) + ReLU on a `size` x `size` x `channels` input (InceptionV3's second
    layer at 224 px), N in PROBE_FILTERS, converted full-integer and timed by LiteRT at `threads`
    (alternating, `runs` rounds, medians). Where the time stays flat over several counts and then steps,
    the step is the tile (64 with AMX, 16 with AVX-512 VNNI: edge.machine.int8_channel_tile, recorded as
    "tile_expected"; `expected` overrides it, e.g. for a process with AMX withheld).
    Returns {"input": [size, size, channels], "threads", "ms": {N: median ms}, "tile_expected": int}.
    """
    from leukedge.edge.machine import int8_channel_tile
    from leukedge.optimize.convert import representative_from, to_tflite
    from leukedge.tfcompat import tensorflow

    tf = tensorflow()
    work.mkdir(parents=True, exist_ok=True)
    calib = np.random.default_rng(0).normal(0, 1, (8, size, size, channels)).astype(np.float32)
    rows = []
    for n in PROBE_FILTERS:
        path = work / f"probe-c{channels}-s{size}-n{n}.tflite"
        if not path.exists():
            x = tf.keras.Input((size, size, channels))
            model = tf.keras.Model(x, tf.keras.layers.Conv2D(n, 3, activation="relu")(x))
            path.write_bytes(to_tflite(model, "int8", representative_from(calib)))
        rows.append({"file": path.name, "macs": (size - 2) ** 2 * 9 * channels * n})  # VALID 3x3: Conv2D MACs
    time_models(work, rows, [threads], runs)  # the same alternating rounds as the variants
    return {"input": [size, size, channels], "threads": threads,
            "tile_expected": int8_channel_tile() if expected is None else expected,
            "ms": {str(n): row[f"ms_{threads}t"]["median"] for n, row in zip(PROBE_FILTERS, rows)}}


def summarize(rows: list[dict], threads: list[int]) -> None:
    """Adds "speedup_<t>t" (baseline median / variant median, baseline = the first row) to each row."""
    base = rows[0]
    for row in rows:
        for t in threads:
            row[f"speedup_{t}t"] = round(base[f"ms_{t}t"]["median"] / row[f"ms_{t}t"]["median"], 3)
        row["mac_ratio"] = round(base["macs"] / row["macs"], 3)


def fit_fixed_cost(rows: list[dict], threads: list[int], size: int = 224) -> dict:
    """Least-squares line ms = fixed + per_gmac * GMAC over the variants at `size` px, per thread count.

    `fixed` is the part of the time that channel pruning does not shrink (work that scales with
    channels rather than channels squared, or not at all: quantize, pooling, concatenation, per-op
    overhead); it caps the speed-up pruning can give at that size. Returns {"<t>": {"fixed_ms",
    "ms_per_gmac"}} (empty when fewer than 3 variants are at `size`).
    """
    rewrites = rows[0].get("graph_rewrites", [])  # the baseline's conversion: compare like with like
    at = [r for r in rows if r["input_size"] == size and r.get("graph_rewrites", []) == rewrites
          and not r.get("tile")]
    if len(at) < 3:
        return {}
    g = np.array([r["macs"] / 1e9 for r in at])
    out = {}
    for t in threads:
        ms = np.array([r[f"ms_{t}t"]["median"] for r in at])
        slope, fixed = np.polyfit(g, ms, 1)
        out[str(t)] = {"fixed_ms": round(float(fixed), 3), "ms_per_gmac": round(float(slope), 3)}
    return out


def plot(result: dict, path: Path) -> None:
    """Median ms against GMAC per variant and thread count, the fitted line at 224 px dashed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(result["threads"]), figsize=(5 * len(result["threads"]), 3.8), squeeze=False)
    colours = {224: "#0072B2", 192: "#009E73", 160: "#D55E00"}
    for ax, t in zip(axes[0], result["threads"]):
        for r in result["rows"]:
            s = r[f"ms_{t}t"]
            c = colours.get(r["input_size"], "0.4")
            ax.errorbar(r["macs"] / 1e9, s["median"], yerr=[[s["median"] - s["q1"]], [s["q3"] - s["median"]]],
                        fmt="D" if r.get("tile") else "o" if r["macs_kept"] < 1 else "s", color=c, ms=5, capsize=2)
            ax.annotate(r["variant"], (r["macs"] / 1e9, s["median"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        fit = result.get("fit_224", {}).get(str(t))
        if fit:
            g = np.linspace(0, 3, 10)
            ax.plot(g, fit["fixed_ms"] + fit["ms_per_gmac"] * g, "--", color="0.5", lw=1,
                    label=f"224 px fit: {fit['fixed_ms']:.1f} ms + {fit['ms_per_gmac']:.2f} ms/GMAC")
            ax.legend(fontsize=7, loc="upper left")
        ax.set_xlim(0, None)
        ax.set_ylim(0, None)
        ax.set_xlabel("multiply-accumulates (GMAC, batch 1)")
        ax.set_ylabel("median ms per image")
        ax.set_title(f"LiteRT int8, {t} thread(s) (blue 224, green 192, orange 160 px; "
                     f"squares unpruned, diamonds --channel-tile)", fontsize=8)
    fig.suptitle(f"{result['machine']['cpu']} ({', '.join(result['cpu_flags'])})", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(result: dict) -> str:
    m = result["machine"]
    ts = result["threads"]
    lines = [f"# Slim (channel-pruned) int8 against int8: LiteRT speed on {m['cpu']}", "",
             f"CPU: {m['cpu']} ({m['usable_cores']} usable cores; flags: {', '.join(result['cpu_flags']) or 'n/a'}"
             + ("; **AMX withheld** from the process (benchmarks.machine.withhold_amx): XNNPACK ran its AVX-512 "
                "VNNI kernels" if result.get("amx_withheld") else "") + "). "
             f"Runtime: {result['rows'][0].get('runtime')}. Model: InceptionV3 with random weights + Dense(2), "
             f"full-integer int8 (optimize.convert with average pools as depthwise convolutions, `--int8-pools "
             f"depthwise`, except `int8-avgpool`: optimize's default conversion). "
             f"Medians of {result['runs']} rounds alternating every model and "
             f"thread count; "
             f"speed-up against `int8` at 224 px measured in the same run. {result['when']}.", "",
             "| variant | tile | px | GMAC | M params | MB | " + " | ".join(
                 f"{t} thr ms (IQR) | x int8 | ps/MAC" for t in ts) + " |",
             "|---|---:|---:|---:|---:|---:|" + "---:|---:|---:|" * len(ts)]
    for r in result["rows"]:
        cells = []
        for t in ts:
            s = r[f"ms_{t}t"]
            cells += [f"{s['median']:.2f} ({s['q1']:.2f}-{s['q3']:.2f})", f"{r[f'speedup_{t}t']:.2f}",
                      f"{s['median'] * 1e9 / r['macs']:.2f}"]
        lines.append(f"| {r['variant']} | {r.get('tile') or '-'} | {r['input_size']} | {r['macs'] / 1e9:.2f} | "
                     f"{r['params'] / 1e6:.2f} | "
                     f"{r['bytes'] / 1e6:.1f} | " + " | ".join(cells) + " |")
    fits = result.get("fit_224") or {}
    if fits:
        lines += ["", "Fit over the 224 px variants, ms = fixed + slope x GMAC: " + "; ".join(
            f"{t} thread(s): {f['fixed_ms']:.2f} ms + {f['ms_per_gmac']:.2f} ms/GMAC" for t, f in fits.items())
            + " (rows with the portable rounding only). On a processor whose int8 kernel tile is wider than the "
            "portable rounding (AMX: 64 channels), most of this fixed part is layers whose kept filters still fill "
            "the same tiles; the `tile` rows are planned for the tile (optimize --channel-tile)."]
    probe = result.get("tile_probe")
    if probe:
        lines += ["", f"Tile probe: one int8 3x3 convolution on {'x'.join(map(str, probe['input']))}, "
                  f"{probe['threads']} thread, median ms by filter count (time flat within a tile, stepping "
                  f"between tiles; edge.machine.int8_channel_tile says {probe['tile_expected']} here): "
                  + ", ".join(f"{n}: {ms:.3f}" for n, ms in probe["ms"].items()) + "."]
    lines += ["", "Targets (leukedge issue 23, \"Pruning that makes the model faster\"): a slim variant at 224 px "
              ">= 1.6x the int8 speed at 1 and 2 threads; with a smaller input >= 3x. "
              + "; ".join(result["verdicts"]) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=RESULTS.parents[1] / "runs" / "slim-speed")
    ap.add_argument("--out", type=Path, default=RESULTS / "slim-speed.json")
    ap.add_argument("--runs", type=int, default=40, help="alternating rounds, at least 30 (default 40)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--variants", default="",
                    help="comma-separated rows (default: all): " + ", ".join(v[0] for v in BASE_VARIANTS)
                    + ", and <row>.tN for " + ", ".join(v[0] for v in TILE_ROWS) + " (N: --tile)")
    ap.add_argument("--tile", type=int, default=0,
                    help="channel tile N of the '<row>.tN' rows, the only rows it changes (default: this processor's, "
                         "edge.machine.int8_channel_tile; 8 or less: no such rows)")
    ap.add_argument("--withhold-amx", action="store_true",
                    help="refuse this process AMX (benchmarks.machine.withhold_amx): the AVX-512 VNNI class's figures")
    args = ap.parse_args(argv)
    if args.runs < 30:
        ap.error("--runs: at least 30 alternating runs (issue 23)")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from leukedge.benchmarks.machine import AmxError, machine_info, withhold_amx
    from leukedge.edge.machine import int8_channel_tile, machine_record

    if args.withhold_amx:
        try:
            withhold_amx()
        except AmxError as exc:
            ap.error(f"--withhold-amx: {exc}")
    isa = {**machine_record()["isa"], **({"amx_int8": False} if args.withhold_amx else {})}
    tile = args.tile or int8_channel_tile(isa)
    variants = variants_for(tile)
    asked = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in asked if n not in {v[0] for v in variants}]
    if unknown:
        ap.error(f"--variants: unknown {', '.join(unknown)}; known here (tile {tile}): "
                 + ", ".join(v[0] for v in variants))
    chosen = [v for v in variants if not asked or v[0] in asked]
    if chosen[0][0] != "int8":
        chosen = [variants[0]] + [v for v in chosen if v[0] != "int8"]
    rows = build(args.work, chosen)
    threads = [int(t) for t in args.threads.split(",")]
    time_models(args.work, rows, threads, args.runs)
    summarize(rows, threads)
    verdicts = []
    for label, pick, target in (("slim at 224", lambda r: r["input_size"] == 224 and r["macs_kept"] < 1, 1.6),
                                ("slim + smaller input", lambda r: r["input_size"] < 224 and r["macs_kept"] < 1, 3.0)):
        cands = [r for r in rows if pick(r)]
        ok = [r["variant"] for r in cands if all(r[f"speedup_{t}t"] >= target for t in threads)]
        verdicts.append(f"{label} >= {target}x at every thread count: " + (", ".join(ok) if ok else "none"))
    result = {"schema": "leukedge.slim-speed", "when": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info(), "cpu_flags": cpu_flags(), "amx_withheld": args.withhold_amx,
              "tile": tile, "runs": args.runs, "threads": threads,
              "rows": rows, "verdicts": verdicts, "fit_224": fit_fixed_cost(rows, threads),
              "tile_probe": tile_probe(args.work, args.runs, expected=tile)}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    plot(result, args.out.with_suffix(".png"))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
