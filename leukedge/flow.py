"""`leukedge flow`: the whole toolkit on one dataset, end to end, in about ten minutes on 2 CPU cores.

data -> train (briefly) -> optimize -> edge-classify on a few images -> benchmark -> report.
With no DATA it uses the real PBC sample (../shared/data/pbc-granulocytes) when it is at
hand, else (or with --synthetic) a generated synthetic set whose classes overlap the way a real
screening task's do ("realistic" difficulty: F1 well below 1.0), and says which at the top.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from dataclasses import dataclass

from leukedge.edge.files import write_text_atomic
from leukedge.options import option


@dataclass
class FlowOptions:
    """Options of `leukedge flow` (run_flow's keyword arguments); each field's help is its flag's."""

    quick: bool = option(False, "Smallest settings (CI smoke run): tiny images, few steps.")
    image_size: int | None = option(None, "Training image size [default: 128, or 96 with --quick].")
    synthetic: bool = option(False, "Use the generated synthetic set (realistic difficulty) even where the sample "
                                    "data is at hand.")

    RANGES = {"image_size": (75, 1024)}

SAMPLE_CANDIDATES = ("../shared/data/pbc-granulocytes", "shared/data/pbc-granulocytes")


def _say(msg: str) -> None:
    print(f"\n=== leukedge flow: {msg}", file=sys.stderr, flush=True)


SYNTH_DIFFICULTY = "realistic"


def pick_data(data: str | None, out: Path, quick: bool, synthetic: bool = False) -> tuple[str, str, dict]:
    """(path, description, train overrides) for the flow's dataset.

    synthetic: generate the synthetic set even where the PBC sample is at hand (DATA must then be None).
    """
    if data and synthetic:
        raise ValueError("give DATA or --synthetic, not both")
    if data:
        return data, f"the dataset you gave: {data}", {}
    here = Path(__file__).resolve().parents[1]
    for cand in () if synthetic else SAMPLE_CANDIDATES:
        for base in (Path.cwd(), here):
            p = (base / cand).resolve()
            if (p / "ig").is_dir() and (p / "neutrophil").is_dir():
                return str(p), (f"REAL sample data: PBC immature granulocytes (positive 'ig') vs neutrophils at {p} "
                                 "(stand-in task for C-NMC; stratified split, no subject ids)"), {"positive": "ig"}
    from leukedge.train.synth import synthesize

    # 60 validation images: enough for the optimize step to fit a temperature (it needs 50); fold_2 is held
    # out as a test part, so the benchmark scores images no threshold or temperature was chosen on
    root = synthesize(out / "data", n_train=150 if quick else 300, n_val=60, size=450, seed=0,
                      difficulty=SYNTH_DIFFICULTY)
    return str(root), (f"SYNTHETIC cell-like images generated at {root} ({SYNTH_DIFFICULTY} difficulty: the classes "
                       "overlap, so figures stay below 1.0; no download; not microscope data)"), {"test_fold": "fold_2"}


def run_flow(data: str | None, out: str | Path, quick: bool = False, image_size: int | None = None,
             synthetic: bool = False) -> dict:
    """The whole toolkit end to end: `leukedge flow` (the README's main job).

    data: a dataset folder, or None for the PBC sample when ../shared/data is at hand, else synthetic cells.
    out: folder for model/ (train), opt/ (optimize), benchmark/, DATA.txt. quick: CI's smallest settings.
    image_size: training size in px [default 128, or 96 with quick]. synthetic: use the generated set even
    where the PBC sample is at hand.
    Returns {"summary" (optimize), "results" (benchmark), "minutes"}. Raises what the steps raise.
    """
    from leukedge.benchmarks.run import BenchmarkOptions, benchmark
    from leukedge.optimize.run import OptimizeOptions, optimize
    from leukedge.optimize.variants import QUICK_VARIANTS
    from leukedge.train.config import load_config
    from leukedge.train.fit import train

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path, description, overrides = pick_data(data, out, quick, synthetic)
    size = image_size or (96 if quick else 128)
    print(f"leukedge flow: data = {description}", flush=True)

    _say(f"train InceptionV3 briefly at {size}px (ImageNet weights)")
    cfg = load_config(None, {
        "image_size": size, "batch_size": 32, "epochs_head": 2, "epochs": 1, "fine_tune_from": "mixed9",
        "val_fraction": 0.1, "test_fraction": 0.1, "max_train_images": 200 if quick else 600, **overrides})
    train(path, out / "model", cfg)

    variants = QUICK_VARIANTS if quick else ("float32", "float16", "dynamic", "int8", "pruned-int8")
    _say(f"optimize: {', '.join(variants)}")
    opts = OptimizeOptions(variants=variants, calibration_size=64 if quick else 128,
                           prune_steps=20 if quick else 60, finetune_batch=16)
    summary = optimize(out / "model" / "model.keras", out / "opt", opts)

    from leukedge.train.splits import read_split

    _, split, _ = read_split(out / "model")
    held_out = "test" if split.parts.get("test") else "validation"
    _say(f"edge-classify on a few held-out ({held_out}) images (fresh process, no TensorFlow)")
    part = split.parts[held_out]
    few = [s.path for s in part[:: max(1, len(part) // 4)][:4]]
    r = subprocess.run([sys.executable, "-m", "leukedge.edge.cli", "--model", str(out / "opt" / "int8.tflite"), *few],
                       capture_output=True, text=True)
    print(r.stdout, end="")
    print(r.stderr, end="", file=sys.stderr)

    _say(f"benchmark every variant on the {held_out} part"
         + (" (held out: no threshold was chosen on it)" if held_out == "test" else
            " (there is no test part: thresholds were chosen on these images, so figures are optimistic)"))
    results = benchmark([out / "model" / "model.keras", out / "opt"], out / "benchmark",
                        BenchmarkOptions(repeats=15 if quick else 30, max_images=150 if quick else 0,
                                         cold_start_runs=2 if quick else 3))
    minutes = (time.perf_counter() - t0) / 60
    write_text_atomic(out / "DATA.txt", description + "\n")
    print(f"\nleukedge flow: done in {minutes:.1f} min. Data: {description}")
    print(f"leukedge flow: report {out / 'benchmark' / 'report.md'}, plot {out / 'benchmark' / 'f1_vs_latency.png'}, "
          f"models {out / 'opt'}")
    return {"summary": summary, "results": results, "minutes": minutes}
