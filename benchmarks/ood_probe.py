"""How often the quality/OOD gate flags ordinary images, and how often it catches bad ones.

    python -m leukedge.benchmarks.ood_probe [DATA] [--size 224] [--seed 0] [--train-fraction 0.7]
                                            [--out benchmarks/results/ood-probe.json]

DATA defaults to ../shared/data/pbc-granulocytes (class folders of JPEGs). A seeded, stratified
train_fraction of each class is the "training" set: its images, decoded with `load_rgb` at
--size, give `quality.reference_statistics` (what `train` stores in the card). Every held-out
image is then assessed as it is (its flag rate is the false-flag rate; target <= 1 %) and turned
into probes, each assessed once per held-out image (target >= 99 % flagged for each):

- blank: a constant image of the held-out image's own mean colour;
- noise-uniform: uniform random pixels 0..255;
- noise-matched: Gaussian noise with the held-out image's per-channel mean and standard deviation;
- tiled-2x2 / tiled-3x3: a wide-field stand-in, the held-out image and 3 (8) other held-out images
  at full resolution tiled into one picture, then resized to --size like any input;
- restained: hue rotated (HSV) by an angle drawn uniformly from 90..270 degrees, at full resolution;
- blurred: Gaussian blur of radius 3 px at full resolution (an out-of-focus cell; PBC images are
  360x363 px, so about 1.9 px at 224), then resized.
Extra rows (not targets) show the rule's limits: hue rotations of 30 and 60 degrees, blur radius 1.5.

Prints a table and writes JSON (figures, counts, rule, how each probe is made).
"""

from __future__ import annotations

import argparse
import json
import pickle
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from leukedge.edge.preprocess import IMAGE_EXTENSIONS, load_rgb
from leukedge.edge.preprocess_decode import _RESAMPLE
from leukedge.edge.quality import (DEFAULT_MAHALANOBIS_FACTOR, DEFAULT_MARGIN, assess, image_statistics,
                                   reference_statistics)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pbc-granulocytes"
TARGETS = ("blank", "noise-uniform", "noise-matched", "tiled-2x2", "tiled-3x3", "restained", "blurred")


def split(root: Path, train_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Stratified seeded split of class folders: (training files, held-out files)."""
    rng = random.Random(seed)
    train, held = [], []
    for cls in sorted(d for d in root.iterdir() if d.is_dir()):
        files = sorted(f for f in cls.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."))
        rng.shuffle(files)
        k = round(train_fraction * len(files))
        train += files[:k]
        held += files[k:]
    return train, held


def _resized(full: np.ndarray, size: int) -> np.ndarray:
    im = Image.fromarray(full)
    if im.size != (size, size):
        im = im.resize((size, size), _RESAMPLE["bilinear"])
    return np.asarray(im)


def _hue_rotate(full: np.ndarray, degrees: float) -> np.ndarray:
    hsv = np.array(Image.fromarray(full).convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + round(degrees / 360 * 256)) % 256
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


def _tile(fulls: list[np.ndarray], k: int) -> np.ndarray:
    h = min(f.shape[0] for f in fulls)
    w = min(f.shape[1] for f in fulls)
    rows = [np.concatenate([f[:h, :w] for f in fulls[r * k:(r + 1) * k]], axis=1) for r in range(k)]
    return np.concatenate(rows, axis=0)


def probes(full: np.ndarray, others: list[np.ndarray], size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every probe image (uint8 size x size x 3) made from one held-out image at full resolution."""
    small = _resized(full, size)
    mean = small.reshape(-1, 3).mean(0)
    std = small.reshape(-1, 3).std(0)
    out = {
        "blank": np.broadcast_to(np.rint(mean).astype(np.uint8), small.shape).copy(),
        "noise-uniform": rng.integers(0, 256, small.shape, dtype=np.uint8),
        "noise-matched": np.clip(np.rint(rng.normal(mean, std, small.shape)), 0, 255).astype(np.uint8),
        "tiled-2x2": _resized(_tile([full] + others[:3], 2), size),
        "tiled-3x3": _resized(_tile([full] + others[:8], 3), size),
        "restained": _resized(_hue_rotate(full, rng.uniform(90, 270)), size),
        "blurred": _resized(np.asarray(Image.fromarray(full).filter(ImageFilter.GaussianBlur(3))), size),
        "restained-30deg": _resized(_hue_rotate(full, 30), size),
        "restained-60deg": _resized(_hue_rotate(full, 60), size),
        "blurred-1.5px": _resized(np.asarray(Image.fromarray(full).filter(ImageFilter.GaussianBlur(1.5))), size),
    }
    return out


def collect(data: Path, size: int, seed: int, train_fraction: float, limit: int | None = None) -> dict:
    """Decode, compute statistics and probes; returns {"reference", "held", "probes": {kind: [stats]}}."""
    train, held = split(data, train_fraction, seed)
    if limit:
        train, held = train[:limit], held[: max(limit // 2, 10)]
    ref = reference_statistics(load_rgb(p, size) for p in train)
    rng = np.random.default_rng(seed)
    held_stats, probe_stats = [], {}
    fulls_cache: dict[int, np.ndarray] = {}

    def full(i):
        if i not in fulls_cache:
            if len(fulls_cache) > 64:
                fulls_cache.clear()
            fulls_cache[i] = load_rgb(held[i])
        return fulls_cache[i]

    for i, p in enumerate(held):
        held_stats.append((str(p), image_statistics(load_rgb(p, size))))
        picks = [int(j) for j in rng.permutation(len(held))[:9] if j != i][:8]
        others = [full(j) for j in picks]
        for kind, img in probes(full(i), others, size, rng).items():
            probe_stats.setdefault(kind, []).append(image_statistics(img))
    return {"train": [str(p) for p in train], "reference": ref, "held": held_stats, "probes": probe_stats}


def evaluate(collected: dict, margin: float, factor: float) -> dict:
    """Flag rates with the given rule parameters (the reference's rule is replaced)."""
    ref = dict(collected["reference"])
    ref["rule"] = {"margin": margin, "mahalanobis_factor": factor}

    def rate(stats_list):
        reasons = Counter()
        n = 0
        for s in stats_list:
            fl = assess(None, ref, stats=s)
            if fl:
                n += 1
                reasons.update(f.code for f in fl)
        return n / max(len(stats_list), 1), dict(reasons)

    fr, freasons = rate([s for _, s in collected["held"]])
    flagged_held = [p for p, s in collected["held"] if assess(None, ref, stats=s)]
    out = {"false_flag_rate": fr, "false_flag_reasons": freasons, "false_flagged": flagged_held[:20],
           "n_held": len(collected["held"]), "probes": {}}
    for kind, lst in collected["probes"].items():
        r, reasons = rate(lst)
        out["probes"][kind] = {"n": len(lst), "flag_rate": r, "reasons": reasons, "target": kind in TARGETS}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default=str(DEFAULT_DATA))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-fraction", type=float, default=0.7)
    ap.add_argument("--margin", type=float, default=DEFAULT_MARGIN)
    ap.add_argument("--mahalanobis-factor", type=float, default=DEFAULT_MAHALANOBIS_FACTOR)
    ap.add_argument("--limit", type=int, default=None, help="at most this many training images (a quick run)")
    ap.add_argument("--out", default="benchmarks/results/ood-probe.json")
    ap.add_argument("--stats-cache", default=None,
                    help="pickle of the decoded statistics: reused when present (to try rule parameters), else written")
    args = ap.parse_args(argv)
    data = Path(args.data)
    if not data.is_dir():
        print(f"ood_probe: no dataset at {data}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    cache = Path(args.stats_cache) if args.stats_cache else None
    if cache and cache.is_file():
        with open(cache, "rb") as fh:
            col = pickle.load(fh)
    else:
        col = collect(data, args.size, args.seed, args.train_fraction, args.limit)
        if cache:
            with open(cache, "wb") as fh:
                pickle.dump(col, fh)
    if args.margin != col["reference"]["rule"]["margin"] or args.mahalanobis_factor != col["reference"]["rule"]["mahalanobis_factor"]:
        col["reference"]["rule"] = {"margin": args.margin, "mahalanobis_factor": args.mahalanobis_factor}
    res = evaluate(col, args.margin, args.mahalanobis_factor)
    # cost of the checks themselves on a held-out image
    img = load_rgb(col["held"][0][0], args.size)
    wall, cpu = [], []
    for _ in range(7):  # best of 7 rounds of 100: the machine is shared, the minimum is the cost
        t, c = time.perf_counter(), time.process_time()
        for _ in range(100):
            assess(img, col["reference"])
        wall.append((time.perf_counter() - t) * 10)
        cpu.append((time.process_time() - c) * 10)
    check_ms, check_cpu_ms = min(wall), min(cpu)
    print(f"data {data} ({len(col['train'])} training images, {res['n_held']} held out, size {args.size}, seed {args.seed})")
    print(f"rule: margin {args.margin}, Mahalanobis factor {args.mahalanobis_factor};  "
          f"assess() {check_ms:.2f} ms/image wall, {check_cpu_ms:.2f} ms CPU (best of 7 x 100)")
    print(f"{'set':<18}{'n':>6}{'flagged':>10}  target   reasons")
    print(f"{'held-out (false)':<18}{res['n_held']:>6}{100 * res['false_flag_rate']:>9.2f}%  <= 1 %   {res['false_flag_reasons']}")
    for kind, r in res["probes"].items():
        tgt = ">= 99 %" if r["target"] else "(info)"
        print(f"{kind:<18}{r['n']:>6}{100 * r['flag_rate']:>9.2f}%  {tgt:<8} {r['reasons']}")
    out = {
        "data": str(data), "size": args.size, "seed": args.seed, "train_fraction": args.train_fraction,
        "n_train": len(col["train"]), "assess_ms_per_image": check_ms, "assess_cpu_ms_per_image": check_cpu_ms, "seconds": time.perf_counter() - t0,
        "rule": {"margin": args.margin, "mahalanobis_factor": args.mahalanobis_factor},
        "probes_made": {k: v for k, v in (line.split(": ", 1) for line in _PROBE_DOC)},
        **res,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


_PROBE_DOC = [line.strip("- ").rstrip(";.") for line in __doc__.split("(target >= 99 % flagged for each):")[1]
              .split("Extra rows")[0].replace("\n  ", " ").strip().splitlines() if line.strip()]

if __name__ == "__main__":
    sys.exit(main())
