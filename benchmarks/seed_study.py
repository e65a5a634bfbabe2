"""Is the recovery fine-tune reliable? Each work-removing variant optimized with several seeds, in resumable parts.

Issue 23's criterion: for `int8@160` and one `slim` level, with at least 3 seeds, every seed passes the
optimize gate and the F1 drop (parent minus variant, validation) spreads over at most 0.5 points
(max - min <= 0.005) across seeds; and the variants hold on the test part, which no step looked at.

One part = one (variant, seed): `leukedge optimize` of the parent with that variant alone and that
seed (the seed drives the recovery's shuffling, augmentation and dropout; optimize.recover), then the
built variant scored on the test part through the device's classifier at its card's threshold, and on
validation and test at one fixed operating point (its uncalibrated P against the parent's own threshold:
`at_parent_threshold`), which leaves out the gate's per-variant threshold choice.
A part writes `parts/<variant>-seed<k>/result.json` last, atomically; a part whose result exists is
skipped, so an interrupted study loses at most the part under way and `--max-parts N` runs it in
slices (e.g. one per CI job). The parent's own test figures are one more part (`parts/parent`).

Cost (2 CPU cores, InceptionV3 at 224 px, PBC reference: benchmarks/results/seed-study-pbc224): a part is
one recovery (up to `resize_steps` / `prune_steps` steps) plus its conversion and the validation and test
passes, 5-13 min at the defaults; 3 variants x 3 seeds took 72 min, and run in as many sittings as convenient.

Run: `nice -n 10 python -m leukedge.benchmarks.seed_study RUN/model.keras --out benchmarks/results/seed-study
[--variants int8@160,slim60-int8] [--seeds 0,1,2] [--set prune_steps=300 ...] [--max-parts N]`.
Writes summary.json, summary.md and seed_spread.png beside the parts after every run (partial
studies are summarized too, and say which parts are missing).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import sys
import time
from pathlib import Path

SPREAD_BUDGET = 0.005  # issue 23: the F1 drop's spread across seeds, at most 0.5 points
DEFAULT_VARIANTS = ("int8@160", "slim60-int8")
DEFAULT_SEEDS = (0, 1, 2)


def _write_json(path: Path, obj) -> None:
    from leukedge.edge.files import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def _test_part(model_path: Path):
    """(dataset, split) of the parent's run folder; the split must have a non-empty test part."""
    from leukedge.edge.card import load_card_for_model
    from leukedge.train.splits import SPLIT_FILE, read_split

    card = load_card_for_model(model_path)
    ds, split, _ = read_split(model_path.parent / SPLIT_FILE, None, False, labels=card.labels)
    if not split.parts.get("test"):
        raise SystemExit(f"seed_study: {model_path.parent / SPLIT_FILE} has no test part; train with "
                         "--set test_fraction=0.2 (or give the split a test fold) so the study can check it")
    return ds, split


def score_on_test(path: Path, ds, split, reference=None) -> tuple[dict, object]:
    """A model file (with its card) scored on the test part at its card's threshold, as `leukedge benchmark`
    scores it. Returns (figures dict, Evaluation)."""
    from leukedge.edge.card import load_card_for_model
    from leukedge.evaluation import evaluate, load_part, scorer_for

    card = load_card_for_model(path)
    arrays = load_part(split.parts["test"], card.preprocessing, "test").in_label_order(ds.labels, card.labels)
    ev = evaluate(scorer_for(path, card), arrays, card.threshold, card.labels, card.positive_index,
                  reference=reference, name=card.variant)
    keys = ("f1_positive", "sensitivity", "specificity", "accuracy", "auroc")
    return {"images": int(len(arrays.labels)), **{k: ev.report.get(k) for k in keys},
            "agreement_with_parent": ev.agreement}, ev


def at_parent_threshold(model_path: Path, variant_path: Path, ds, split, cache: dict) -> dict:
    """The variant's F1 drop at one fixed operating point: its uncalibrated P(positive) (softmax at T = 1)
    against the parent's own threshold, on validation and on test, parent minus variant.

    The optimize gate re-chooses each variant's threshold on validation (sensitivity held at the parent's
    level), so its F1 drop also carries that choice's jumps on a few hundred images; this figure leaves
    the choice out and shows what the recovery alone changed. `cache` keeps decoded parts and the parent's
    scores between calls. Returns {"validation": {"f1", "f1_drop", "sensitivity", "sensitivity_drop"},
    "test": {...}, "threshold"}: what `optimize --keep-threshold` would gate on."""
    from leukedge.edge.card import load_card_for_model
    from leukedge.edge.metrics import report_at_threshold
    from leukedge.evaluation import load_part, scorer_for

    parent_card = load_card_for_model(model_path)
    card = load_card_for_model(variant_path)
    pos = card.positive_index
    out = {"threshold": parent_card.threshold}
    for part in ("validation", "test"):
        key = (part, card.preprocessing.size)
        if key not in cache:
            cache[key] = load_part(split.parts[part], card.preprocessing, part).in_label_order(ds.labels, card.labels)
        arrays = cache[key]
        if ("parent", part) not in cache:
            parent_arrays = load_part(split.parts[part], parent_card.preprocessing, part).in_label_order(
                ds.labels, parent_card.labels)
            p_parent = scorer_for(model_path, parent_card).p_positive(parent_arrays.images)
            cache[("parent", part)] = report_at_threshold(parent_arrays.labels, p_parent, parent_card.threshold,
                                                         card.labels, pos)
        parent = cache[("parent", part)]
        _, p_raw = scorer_for(variant_path, card).p_positive_both(arrays.images)
        r = report_at_threshold(arrays.labels, p_raw, parent_card.threshold, card.labels, pos)
        out[part] = {"f1": r["f1_positive"], "f1_drop": parent["f1_positive"] - r["f1_positive"],
                     "sensitivity": r["sensitivity"], "sensitivity_drop": parent["sensitivity"] - r["sensitivity"]}
    return out


def run_part(model_path: Path, out: Path, variant: str, seed: int, overrides: dict, ds, split, parent_ev,
             cache: dict | None = None) -> dict:
    """Optimize `variant` with `seed` into out/parts/<variant>-seed<seed>/optimize, score it on test,
    write result.json last. cache: decoded parts shared between parts (at_parent_threshold). Returns the result
    dict."""
    cache = {} if cache is None else cache
    from leukedge.options import load_options
    from leukedge.optimize.run import OptimizeOptions, optimize

    part = out / "parts" / f"{variant}-seed{seed}"
    opt_dir = part / "optimize"
    if opt_dir.exists():  # an interrupted part: its optimize output is incomplete or unscored; redo it
        shutil.rmtree(opt_dir)
    opts = load_options(OptimizeOptions, None, {**overrides, "variants": variant, "seed": str(seed),
                                                 "keep_failing": "yes"})
    t0 = time.perf_counter()
    summary = optimize(model_path, opt_dir, opts)
    row = next(r for r in summary["variants"] if r["variant"] == variant)
    test, _ = score_on_test(opt_dir / row["file"], ds, split, reference=parent_ev)
    from leukedge.edge.card import load_card_for_model

    optimization = load_card_for_model(opt_dir / row["file"]).optimization or {}
    resized = optimization.get("resized") or {}  # int8@PX: the recovery is recorded under "resized"
    result = {"variant": variant, "seed": seed, "verdict": row["verdict"], "reasons": row["reasons"],
              "budgets": summary["budgets"],
              "validation": {"f1": row["f1"], "f1_drop": row["f1_drop"], "f1_drop_ci": row.get("f1_drop_ci"),
                             "recall": row["recall"], "recall_drop": row["recall_drop"],
                             "specificity": row.get("specificity"), "agreement": row["agreement"]},
              "parent_validation": summary["parent"], "test": test,
              "recovery": optimization.get("recovery") or resized.get("recovery"),
              "macs": optimization.get("macs") or resized.get("macs"),
              "params": optimization.get("params") or resized.get("params"),
              "file": row["file"], "seconds": round(time.perf_counter() - t0, 1)}
    result["at_parent_threshold"] = at_parent_threshold(model_path, opt_dir / row["file"], ds, split, cache)
    _write_json(part / "result.json", result)
    return result


def _fixed_point_spreads(done: list[dict]) -> dict:
    """F1 drops at the parent's threshold (at_parent_threshold) per seed and their max - min, validation and
    test; with sensitivity recorded also "fixed_validation_sensitivity_drops" and "fixed_within_budgets"
    (per seed: validation F1 and sensitivity drops within the part's gate budgets, the verdict `optimize
    --keep-threshold` would give) and "fixed_meets_criterion" (SPREAD_BUDGET's criterion on these figures;
    summarize() also asks for at least three seeds, all done).
    Empty where the parts have not been rescored."""
    fixed = [r["at_parent_threshold"] for r in done if r.get("at_parent_threshold")]
    if not fixed or len(fixed) != len(done):
        return {}
    out = {}
    for part in ("validation", "test"):
        drops = [f[part]["f1_drop"] for f in fixed]
        out[f"fixed_{part}_f1_drops"] = drops
        out[f"fixed_{part}_f1_drop_spread"] = max(drops) - min(drops)
    if all("sensitivity_drop" in f["validation"] for f in fixed):
        out["fixed_validation_sensitivity_drops"] = [f["validation"]["sensitivity_drop"] for f in fixed]
        out["fixed_within_budgets"] = [
            f["validation"]["f1_drop"] <= r["budgets"]["max_f1_drop"] + 1e-12
            and f["validation"]["sensitivity_drop"] <= r["budgets"]["max_recall_drop"] + 1e-12
            for f, r in zip(fixed, done)]
        out["fixed_meets_criterion"] = all(out["fixed_within_budgets"]) and \
            out["fixed_validation_f1_drop_spread"] <= SPREAD_BUDGET + 1e-12
    return out


def summarize(out: Path, variants, seeds, parent_test: dict | None) -> dict:
    """summary.json / summary.md / seed_spread.png from the parts done so far. Returns the summary."""
    rows = {}
    for v in variants:
        done = []
        for s in seeds:
            f = out / "parts" / f"{v}-seed{s}" / "result.json"
            if f.exists():
                done.append(json.loads(f.read_text()))
        drops = [r["validation"]["f1_drop"] for r in done]
        test_drops = [parent_test["f1_positive"] - r["test"]["f1_positive"] for r in done] if parent_test else []
        complete = len(done) == len(seeds)
        spread = (max(drops) - min(drops)) if drops else None
        rows[v] = {"seeds_done": [r["seed"] for r in done], "seeds_missing": [s for s in seeds if s not in
                                                                               [r["seed"] for r in done]],
                   "verdicts": [r["verdict"] for r in done], "f1_drops": drops, "f1_drop_spread": spread,
                   "test_f1_drops": test_drops,
                   **_fixed_point_spreads(done),
                   "test_f1_drop_spread": (max(test_drops) - min(test_drops)) if test_drops else None,
                   "all_pass": bool(done) and all(r["verdict"] == "pass" for r in done),
                   "meets_criterion": complete and len(seeds) >= 3 and all(r["verdict"] == "pass" for r in done)
                   and spread is not None and spread <= SPREAD_BUDGET + 1e-12, "parts": done}
        if "fixed_meets_criterion" in rows[v]:  # the same criterion needs every one of at least three seeds
            rows[v]["fixed_meets_criterion"] = rows[v]["fixed_meets_criterion"] and complete and len(seeds) >= 3
    summary = {"schema": "leukedge.seed-study", "when": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "criterion": f"every seed passes the gate and max - min of the validation F1 drop <= {SPREAD_BUDGET}",
               "seeds": list(seeds), "parent_test": parent_test, "variants": rows}
    _write_json(out / "summary.json", summary)
    (out / "summary.md").write_text(_markdown(summary))
    _plot(out / "seed_spread.png", summary)
    return summary


def _markdown(summary: dict) -> str:
    pt = summary["parent_test"]
    lines = ["# Seed study: is the recovery fine-tune reliable?", "",
             f"Criterion (issue 23): {summary['criterion']}. Seeds: {summary['seeds']}. "
             + (f"Parent on the test part: F1 {pt['f1_positive']:.4f}, sensitivity {pt['sensitivity']:.4f}, "
                f"specificity {pt['specificity']:.4f} ({pt['images']} images)." if pt else "Parent not scored yet."), "",
             "| variant | seed | verdict | val F1 drop (95 % CI) | val sens. drop | test F1 | test F1 drop | "
             "recovery: steps run / best | BN kept | minutes |",
             "|---|---:|---|---:|---:|---:|---:|---:|---|---:|"]
    for v, row in summary["variants"].items():
        for r in row["parts"]:
            ci = r["validation"].get("f1_drop_ci")
            ci_s = f" ({ci[0]:+.3f}, {ci[1]:+.3f})" if ci and None not in ci else ""
            rec = r.get("recovery") or {}
            tdrop = (pt["f1_positive"] - r["test"]["f1_positive"]) if pt else None
            lines.append(f"| {v} | {r['seed']} | {r['verdict']} | {r['validation']['f1_drop']:+.4f}{ci_s} | "
                         f"{r['validation']['recall_drop']:+.4f} | {r['test']['f1_positive']:.4f} | "
                         + (f"{tdrop:+.4f}" if tdrop is not None else "-")
                         + f" | {rec.get('steps_run', '-')} / {rec.get('best_step', '-')} | "
                         f"{(rec.get('batchnorm') or {}).get('kept', '-')} | {r['seconds'] / 60:.1f} |")
        spread, tspread = row["f1_drop_spread"], row.get("test_f1_drop_spread")
        lines.append(f"| **{v}** | | {'all pass' if row['all_pass'] else 'not all pass'} | spread "
                     f"{'-' if spread is None else f'{spread:.4f}'} | | | spread "
                     f"{'-' if tspread is None else f'{tspread:.4f}'} | | | "
                     f"{'**meets**' if row['meets_criterion'] else 'does not meet' + (' (yet)' if row['seeds_missing'] else '')}"
                     f"{'; missing seeds ' + str(row['seeds_missing']) if row['seeds_missing'] else ''} |")
    fixed = [(v, row) for v, row in summary["variants"].items() if "fixed_validation_f1_drops" in row]
    if fixed:
        lines += ["", "At one fixed operating point (each variant's uncalibrated P against the parent's own "
                  "threshold, no re-chosen threshold; `at_parent_threshold`), F1 drop per seed and spread:", "",
                  "| variant | validation F1 drops | spread | validation sensitivity drops | within budgets "
                  "(`--keep-threshold`'s verdict) | criterion | test F1 drops | spread |",
                  "|---|---|---:|---|---|---|---|---:|"]
        for v, row in fixed:
            fmt = lambda xs: ", ".join(f"{x:+.4f}" for x in xs)  # noqa: E731
            within = row.get("fixed_within_budgets")
            lines.append(f"| {v} | {fmt(row['fixed_validation_f1_drops'])} | "
                         f"{row['fixed_validation_f1_drop_spread']:.4f} | "
                         + (fmt(row["fixed_validation_sensitivity_drops"]) if within is not None else "-") + " | "
                         + (", ".join("pass" if w else "fail" for w in within) if within is not None else "-") + " | "
                         + ("-" if within is None else "**meets**" if row["fixed_meets_criterion"] else "does not meet")
                         + f" | {fmt(row['fixed_test_f1_drops'])} | {row['fixed_test_f1_drop_spread']:.4f} |")
    return "\n".join(lines) + "\n"


def _plot(path: Path, summary: dict) -> None:
    """Validation F1 drop per seed (dots, 95 % intervals as bars) per variant, the gate's budget dashed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for i, (v, row) in enumerate(summary["variants"].items()):
        for j, r in enumerate(row["parts"]):
            x = i + (j - (len(row["parts"]) - 1) / 2) * 0.12
            d = r["validation"]["f1_drop"]
            ci = r["validation"].get("f1_drop_ci")
            if ci and None not in ci:
                ax.plot([x, x], ci, color="0.6", lw=1)
            ax.plot(x, d, "o", color="#0072B2" if r["verdict"] == "pass" else "#D55E00")
    budget = next((r["budgets"]["max_f1_drop"] for row in summary["variants"].values() for r in row["parts"]), 0.01)
    ax.axhline(budget, ls="--", color="0.3", lw=1, label=f"gate budget ({budget})")
    ax.axhline(0, color="0.8", lw=0.8)
    ax.set_xticks(range(len(summary["variants"])), list(summary["variants"]))
    ax.set_ylabel("validation F1 drop vs parent")
    ax.set_title("Seed study: F1 drop per seed (blue pass, orange fail)", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="a trained run's model.keras (its split.json beside it)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    ap.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)))
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="optimize options (OptimizeOptions)")
    ap.add_argument("--max-parts", type=int, default=0, help="stop after this many new parts (0: all)")
    args = ap.parse_args(argv)
    from leukedge.options import parse_overrides
    from leukedge.optimize.variants import resolve

    variants = [resolve(v).name for v in args.variants.split(",") if v.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    overrides = parse_overrides(args.set) if args.set else {}
    ds, split = _test_part(args.model)
    parent_file = args.out / "parts" / "parent" / "result.json"
    parent_test, parent_ev = score_on_test(args.model, ds, split)  # its Evaluation is each part's reference
    if not parent_file.exists():
        _write_json(parent_file, parent_test)
    cache: dict = {}
    for v in variants:  # parts made before the fixed-operating-point figure existed get it now
        for s in seeds:
            f = args.out / "parts" / f"{v}-seed{s}" / "result.json"
            result = json.loads(f.read_text()) if f.exists() else None
            if result and "sensitivity" not in (result.get("at_parent_threshold") or {}).get("validation", {}) \
                    and (f.parent / "optimize" / result["file"]).exists():
                result["at_parent_threshold"] = at_parent_threshold(
                    args.model, f.parent / "optimize" / result["file"], ds, split, cache)
                _write_json(f, result)
    new = 0
    for s in seeds:  # seed-major: an interrupted study still has every variant at the first seeds
        for v in variants:
            if (args.out / "parts" / f"{v}-seed{s}" / "result.json").exists():
                continue
            if args.max_parts and new >= args.max_parts:
                break
            print(f"seed_study: part {v} seed {s}", file=sys.stderr, flush=True)
            run_part(args.model, args.out, v, s, overrides, ds, split, parent_ev, cache)
            new += 1
            summarize(args.out, variants, seeds, parent_test)
    summary = summarize(args.out, variants, seeds, parent_test)
    print(_markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
