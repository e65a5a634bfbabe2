"""Composed fields: real C-NMC cells on real smear backgrounds. Does the frame path find each cell, cut it out
as it was, and give it the per-cell path's P(ALL)? (issue 25 item 3)

    nice -n 10 python -m leukedge.benchmarks.composed_fields --model runs/composed-fields/model/model.keras
    nice -n 10 python -m leukedge.benchmarks.composed_fields --train          # trains that model first (~1 min)

Composition (seeded; every number is an option with its default below): leukedge.benchmarks.composed_frames
says how cells and backgrounds are made and placed.

Measured, with the frame's scale from the camera (the composed scale, as a lab that calibrated its camera
gives it) and from the frame's red-cell ruler (the default without a calibration):
- found: a placed cell is found when a located cell's centroid lies on its mask; split: more than one did;
  false cells: located cells on no placed mask.
- mask IoU of the found cell (the located extent, frame resolution) against the placed mask.
- |dP| = |P(frame path) - P(per-cell path on the original file)|, median and 95th percentile, and decision
  agreement (P >= the card's threshold) on cells whose per-cell P is at least MARGIN from the threshold.
- the same for two references that need no locator: "oracle crop" (the frame path's own crop, cell_canvas,
  from the placed mask and the composed scale: what a perfect locator would give) and "rotated cell" (the
  original image turned by the placement's angle, centred on its centroid: the model's own sensitivity to
  rotation, which no frame path can remove).
The model: the one `leukedge train` makes on the C-NMC sample with --train (image size 128, a few epochs: a
weak model, but its P spreads), converted to float32 TFLite for the device runtime; its card's `cells`
(masked, 450 px) gains the assumed um_per_px. The processor (model name, ISA flags) is in the results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .composed_frames import Cell, Placed, backgrounds, cnmc_cells, compose, turned

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEFAULT_WORK = ROOT / "runs" / "composed-fields"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "composed-fields.json"

CNMC_CELL_UM = 11.0  # assumed median diameter of C-NMC's cells (lymphoblasts and normal lymphocytes, 7-18 um)
SCALE_RANGE = (0.6, 1.5)  # the range of cell (and background) scales
CELLS_PER_FRAME = (1, 3)
PLACEMENTS = 2  # times each C-NMC cell is placed (different frame, angle, scale)
GAP_UM = 3.0  # least distance between two placed cells' masks
MARGIN_UM = 6.0  # least distance between a placed cell's mask and the frame's edge: past the locator's
# cytoplasm reach (4 um) and its working copy's pixel (~0.23 um), so no whole cell is flagged edge_cut
THRESHOLD_MARGIN = 0.1  # agreement counted on cells whose per-cell P is at least this far from the threshold
TRAIN_ARGS = ["--image-size", "128", "--epochs-head", "8", "--epochs", "4", "--batch-size", "16",
              "--set", "split=subject", "--set", "val_fraction=0.25"]


# -- the model -----------------------------------------------------------------------------------------------

def train_model(cnmc: Path, work: Path) -> Path:
    """`leukedge train` on the C-NMC sample into work/model (TRAIN_ARGS), unless already there."""
    keras = work / "model" / "model.keras"
    if not keras.exists():
        cmd = [sys.executable, "-m", "leukedge.cli", "train", str(cnmc), "-o", str(work / "model"), *TRAIN_ARGS]
        print("training:", " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True)
    return keras


def device_model(model: Path, work: Path) -> Path:
    """A model the device runtime opens: a .keras one converted to float32 TFLite once (cached beside work by
    the Keras file's SHA-256), its card inherited from the Keras card; any other format as it is."""
    if model.suffix != ".keras":
        return model
    from leukedge.edge.card import card_path_for, inherit_card, load_card_for_model
    from leukedge.edge.files import sha256_file

    parent = load_card_for_model(model)
    out = work / f"float32-{sha256_file(model)[:12]}.tflite"
    if not out.exists():
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
        from leukedge.optimize.convert import to_tflite
        from leukedge.tfcompat import load_keras_model

        out.write_bytes(to_tflite(load_keras_model(model), "float32", None))
        card = inherit_card(parent, model_file=out.name, model_format="tflite", variant="float32")
        card.bind(out)
        card.save(card_path_for(out))
    return out


# -- measuring -----------------------------------------------------------------------------------------------

@dataclass
class _OracleCell:
    """The placed mask seen as a located cell (what cell_canvas needs)."""

    centroid: tuple[float, float]
    box: tuple[int, int, int, int]
    mask: np.ndarray


def oracle(mask: np.ndarray) -> _OracleCell:
    """The placed mask (bool (H, W), frame resolution) as the located cell a perfect locator would give: its
    centroid (x, y in px, pixel centres), box (x0, y0, x1, y1) and the mask cut to that box."""
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    return _OracleCell((float(xs.mean()) + 0.5, float(ys.mean()) + 0.5), (x0, y0, x1, y1), mask[y0:y1, x0:x1])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / float((a | b).sum())


def _full(c, shape) -> np.ndarray:
    m = np.zeros(shape, bool)
    x0, y0, x1, y1 = c.box
    m[y0:y1, x0:x1] = c.mask
    return m


def measure_frame(clf, path: Path, rgb: np.ndarray, placed: list[Placed], true_um: float, spec: dict) -> dict:
    """Locate and classify one composed frame both ways (camera scale, red-cell ruler); match to the placed cells.

    Returns {"arms": {arm: {"cells": [per placed cell: found, split, iou, p]}, "false": n, "um_per_px": ...},
    "oracle": [P per placed cell]}."""
    from leukedge.edge.fields.crops import cell_canvas, crop_scale
    from leukedge.edge.fields.frames import _to_input, classify_frame
    from leukedge.edge.fields.locate import NotASmearError, locate_cells

    prep = clf.card.preprocessing
    out = {"arms": {}}
    for arm, cam in (("camera", true_um), ("ruler", None)):
        try:
            loc = locate_cells(rgb, cam)
        except NotASmearError as exc:
            out["arms"][arm] = {"error": str(exc), "cells": [{"found": False} for _ in placed], "false": 0}
            continue
        res = classify_frame(clf, path, um_per_px=cam, cells={"um_per_px": spec["um_per_px"]})
        if res.error or len(res.cells) != len(loc.cells):
            raise RuntimeError(f"{path}: classify_frame disagrees with locate_cells ({res.error})")
        masks = [_full(c, rgb.shape[:2]) for c in loc.cells]
        on = [[j for j, c in enumerate(loc.cells)
               if p.mask[min(int(c.centroid[1]), p.mask.shape[0] - 1), min(int(c.centroid[0]), p.mask.shape[1] - 1)]]
              for p in placed]
        rows = []
        for p, js in zip(placed, on):
            if not js:
                rows.append({"found": False})
                continue
            best = max(js, key=lambda j: _iou(masks[j], p.mask))
            rows.append({"found": True, "split": len(js) > 1, "iou": round(_iou(masks[best], p.mask), 4),
                         "p": res.cells[best].p_all, "flags": loc.cells[best].flags})
        matched = {j for js in on for j in js}
        out["arms"][arm] = {"cells": rows, "false": len(loc.cells) - len(matched),
                            "um_per_px": loc.um_per_px, "scale_source": loc.scale_source}
    scale = crop_scale(spec, true_um)
    bg = tuple(int(v) for v in np.median(rgb[::4, ::4].reshape(-1, 3), axis=0))
    out["oracle"] = [clf.predict_one(_to_input(cell_canvas(rgb, oracle(p.mask), spec, scale, bg), prep.size,
                                               prep.resize)).p_all for p in placed]
    return out


def rotated_p(clf, cell: Cell, angle: float, canvas: int) -> float:
    """P of the original cell turned by `angle`, centred on its centroid on a canvas of `canvas` px (no rescale)."""
    from leukedge.edge.fields.frames import _to_input

    rgb, alpha, _ = turned(cell, angle, 1.0)
    side = rgb.shape[0]
    out = np.zeros((canvas, canvas, 3), np.uint8)
    o = (canvas - side) // 2
    if o >= 0:
        out[o:o + side, o:o + side] = np.where(alpha[..., None] >= 0.5, rgb, 0)
    else:
        out[:] = np.where(alpha[..., None] >= 0.5, rgb, 0)[-o:-o + canvas, -o:-o + canvas]
    prep = clf.card.preprocessing
    return clf.predict_one(_to_input(out, prep.size, prep.resize)).p_all


def _dp_stats(pairs: list[tuple[float, float]], threshold: float) -> dict:
    """|dP| median and 95th percentile over (reference P, other P) pairs, and decision agreement on the pairs whose
    reference P lies at least THRESHOLD_MARGIN from the threshold."""
    if not pairs:
        return {"cells": 0}
    d = np.abs(np.array([b - a for a, b in pairs]))
    away = [(a, b) for a, b in pairs if abs(a - threshold) >= THRESHOLD_MARGIN]
    agree = sum((a >= threshold) == (b >= threshold) for a, b in away)
    return {"cells": len(pairs), "dp_median": round(float(np.median(d)), 4),
            "dp_p95": round(float(np.percentile(d, 95)), 4), "dp_max": round(float(d.max()), 4),
            "cells_away_from_threshold": len(away),
            "agreement_away": round(agree / len(away), 4) if away else None,
            "agreement_all": round(sum((a >= threshold) == (b >= threshold) for a, b in pairs) / len(pairs), 4)}


def _trained_facts(model: Path) -> dict | None:
    """How a .keras model was trained (data root, the training config, validation figures), from its card;
    None for another format."""
    if Path(model).suffix != ".keras":
        return None
    from leukedge.edge.card import load_card_for_model

    parent = load_card_for_model(model)
    cfg = (parent.provenance or {}).get("config", {})
    return {"data": (parent.provenance or {}).get("data", {}).get("root"),
            "config": {k: cfg.get(k) for k in ("image_size", "epochs_head", "epochs", "batch_size", "split",
                                               "val_fraction", "weights", "fine_tune_from")},
            "validation": {k: (parent.metrics or {}).get("validation", {}).get(k)
                           for k in ("f1_positive", "sensitivity", "specificity", "auroc", "images")}}


@dataclass
class _Setup:
    """What every frame is made from and measured with: the model (its file, how it was trained, the device
    classifier), the C-NMC cells with their median diameter (px), the scale C-NMC is given (um/px), the crop
    spec, the painted-out backgrounds with their facts, bccd um/px over C-NMC um/px, and each cell's P on its
    original file."""

    model: Path
    trained: dict | None
    clf: object
    cells: list[Cell]
    diam: float
    cnmc_um: float
    spec: dict
    bgs: list[np.ndarray]
    bg_facts: dict
    um_ratio: float
    per_cell_p: dict[int, float]


def _setup(args, rng: np.random.Generator) -> _Setup:
    """The model (trained first with --train), the cells and their scale, the backgrounds (drawn with rng) and
    the per-cell P. Raises SystemExit when args.cnmc holds no C-NMC image."""
    from leukedge.edge.classifier import Classifier
    from leukedge.edge.fields.crops import cells_spec

    model = args.model or train_model(args.cnmc, args.work)
    trained = _trained_facts(model)
    clf = Classifier.load(device_model(Path(model), args.work), threads=1)
    cells = cnmc_cells(args.cnmc)
    if not cells:
        raise SystemExit(f"{args.cnmc}: no C-NMC images")
    diam = statistics.median(2 * math.sqrt(c.mask.sum() / math.pi) for c in cells)
    cnmc_um = args.cnmc_um_per_px or CNMC_CELL_UM / diam
    spec = cells_spec(clf.card, {"um_per_px": cnmc_um} if clf.card.cells else
                      {"style": "masked", "canvas_px": 450, "um_per_px": cnmc_um})
    bgs, bg_facts = backgrounds(args.bccd, rng, args.backgrounds)
    per_cell_p = {i: clf.predict_one(c.path).p_all for i, c in enumerate(cells)}
    return _Setup(model, trained, clf, cells, diam, cnmc_um, spec, bgs, bg_facts,
                  bg_facts["bccd_um_per_px"] / cnmc_um, per_cell_p)


def _compose_and_measure(args, setup: _Setup, rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    """The plan (each cell args.placements times, in frames of 1..3 cells), each frame composed, written as PNG
    under args.work/frames and measured. Returns (one row per placed cell, one dict per frame). Raises
    SystemExit when the cells cannot be placed (the frames too small for them)."""
    from PIL import Image

    clf, cells, spec = setup.clf, setup.cells, setup.spec
    order = [i for _ in range(args.placements) for i in rng.permutation(len(cells))]
    results, frames_meta, k, draws = [], [], 0, 0
    while k < len(order):
        draws += 1
        if draws > 20 * len(order):
            raise SystemExit("cannot place the cells: the frames are too small for them (check --cnmc-um-per-px)")
        n = int(rng.integers(CELLS_PER_FRAME[0], CELLS_PER_FRAME[1] + 1))
        picks = order[k:k + n]
        s = float(rng.uniform(*SCALE_RANGE))
        bi = int(rng.integers(len(setup.bgs)))
        true_um = setup.cnmc_um / s
        made = compose(setup.bgs[bi], cells, picks, s, setup.um_ratio, rng, GAP_UM / true_um,
                       math.ceil(MARGIN_UM / true_um))
        if made is None:
            continue  # draw again (fewer cells or another scale)
        k += len(picks)
        frame, placed = made
        path = args.work / "frames" / f"composed-{len(frames_meta):03d}.png"
        Image.fromarray(frame).save(path, compress_level=1)
        m = measure_frame(clf, path, frame, placed, true_um, spec)
        for j, p in enumerate(placed):
            row = {"frame": path.name, "cnmc": Path(cells[p.cell].path).name, "scale": round(s, 3),
                   "angle": round(p.angle, 1), "p_file": setup.per_cell_p[p.cell], "p_oracle": m["oracle"][j],
                   "p_rotated": rotated_p(clf, cells[p.cell], p.angle, spec["canvas_px"])}
            for arm, a in m["arms"].items():
                row[arm] = a["cells"][j]
            results.append(row)
        frames_meta.append({"frame": path.name, "background": bi, "scale": round(s, 3), "size": frame.shape[1::-1],
                            "cells": len(placed), "true_um_per_px": round(true_um, 5),
                            **{f"{arm}_false_cells": a["false"] for arm, a in m["arms"].items()},
                            "ruler_um_per_px": m["arms"]["ruler"].get("um_per_px")})
    return results, frames_meta


def _summary(results: list[dict], frames_meta: list[dict], thr: float) -> dict:
    """Per arm (camera, ruler): found, split, flagged, false cells, mask IoU, |dP| against the per-cell path and
    the rotated cell; the references without the locator; the ruler's scale over the true one."""
    summary = {}
    for arm in ("camera", "ruler"):
        found = [r for r in results if r[arm]["found"]]
        ious = [r[arm]["iou"] for r in found]
        summary[arm] = {
            "placed": len(results), "found": len(found), "split": sum(r[arm]["split"] for r in found),
            "flagged": {flag: sum(flag in r[arm]["flags"] for r in found) for flag in ("edge_cut", "touching", "blurred")},
            "false_cells": sum(f[f"{arm}_false_cells"] for f in frames_meta),
            "mask_iou_median": round(float(np.median(ious)), 4) if ious else None,
            "mask_iou_p10": round(float(np.percentile(ious, 10)), 4) if ious else None,
            "frame_vs_per_cell": _dp_stats([(r["p_file"], r[arm]["p"]) for r in found], thr),
            "frame_vs_rotated_cell": _dp_stats([(r["p_rotated"], r[arm]["p"]) for r in found], thr)}
    summary["oracle_crop_vs_per_cell"] = _dp_stats([(r["p_file"], r["p_oracle"]) for r in results], thr)
    summary["oracle_crop_vs_rotated_cell"] = _dp_stats([(r["p_rotated"], r["p_oracle"]) for r in results], thr)
    summary["rotated_cell_vs_per_cell"] = _dp_stats([(r["p_file"], r["p_rotated"]) for r in results], thr)
    ruler = [f["ruler_um_per_px"] / f["true_um_per_px"] for f in frames_meta if f["ruler_um_per_px"]]
    summary["ruler_over_true_scale"] = {"median": round(float(np.median(ruler)), 3),
                                        "p5": round(float(np.percentile(ruler, 5)), 3),
                                        "p95": round(float(np.percentile(ruler, 95)), 3)} if ruler else None
    return summary


def run(args) -> dict:
    """The benchmark (module docstring) with the options of main: set up (model, cells, backgrounds), compose
    and measure every frame, summarise. Returns the results dict written as composed-fields.json (machine,
    model, composition, summary, targets at the camera scale, frames, cells). Raises SystemExit on missing
    C-NMC images or cells that do not fit."""
    import cv2

    from leukedge.edge.machine import machine_record

    t_start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    (args.work / "frames").mkdir(parents=True, exist_ok=True)
    setup = _setup(args, rng)
    clf, thr = setup.clf, setup.clf.threshold
    results, frames_meta = _compose_and_measure(args, setup, rng)
    summary = _summary(results, frames_meta, thr)
    p_files = np.array(list(setup.per_cell_p.values()))
    cam = summary["camera"]
    targets = {"every_placed_cell_found": cam["found"] == cam["placed"],
               "mask_iou_median_ge_0.9": cam["mask_iou_median"] is not None and cam["mask_iou_median"] >= 0.9,
               "agreement_ge_0.97": (cam["frame_vs_per_cell"].get("agreement_away") or 0) >= 0.97}
    return {
        "benchmark": "composed fields (issue 25 item 3)", "machine": machine_record(
            engine=clf.runtime.name, engine_version=clf.runtime.version, threads=1),
        "opencv": cv2.__version__, "seconds": round(time.perf_counter() - t_start, 1),
        "model": {"file": str(clf.model_path) if hasattr(clf, "model_path") else str(setup.model),
                  "name": clf.card.name, "threshold": thr, "input_px": clf.card.preprocessing.size,
                  "cells": setup.spec, "trained": setup.trained,
                  "p_per_cell_spread": {"p10": round(float(np.percentile(p_files, 10)), 4),
                                        "p50": round(float(np.median(p_files)), 4),
                                        "p90": round(float(np.percentile(p_files, 90)), 4)}},
        "composition": {"cnmc": str(args.cnmc), "cnmc_cells": len(setup.cells),
                        "cnmc_diameter_px_median": round(setup.diam, 1), "cnmc_um_per_px": round(setup.cnmc_um, 5),
                        "cnmc_um_per_px_from": ("option" if args.cnmc_um_per_px else
                                                f"assumed median cell diameter {CNMC_CELL_UM} um"),
                        **setup.bg_facts, "placements_per_cell": args.placements, "frames": len(frames_meta),
                        "scale_range": SCALE_RANGE, "gap_um": GAP_UM, "margin_um": MARGIN_UM, "seed": args.seed},
        "summary": summary, "targets_camera_scale": targets, "frames": frames_meta, "cells": results}


def main(argv=None) -> int:
    """The command line (module docstring): runs the benchmark, writes --out (JSON) and the Markdown beside it
    (leukedge.reports.composed_fields_markdown), prints the Markdown. Returns 0; argparse exits on bad options."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model file with its card (.keras converted to float32 TFLite)")
    ap.add_argument("--train", action="store_true", help="train the C-NMC model into WORK/model first if absent")
    ap.add_argument("--cnmc", type=Path, default=SHARED / "C-NMC_Leukemia")
    ap.add_argument("--bccd", type=Path, default=SHARED / "bccd")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="frames, converted model (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--cnmc-um-per-px", type=float, help="C-NMC's micrometres per pixel [default: assumed, see doc]")
    ap.add_argument("--placements", type=int, default=PLACEMENTS)
    ap.add_argument("--backgrounds", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if not a.model and not a.train:
        ap.error("give --model PATH or --train")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    res = run(a)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    from leukedge.reports import composed_fields_markdown

    a.out.with_suffix(".md").write_text(composed_fields_markdown(res))
    print(a.out.with_suffix(".md").read_text())
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
