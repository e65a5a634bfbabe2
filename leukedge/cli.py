"""`leukedge <step> ...`: one command line for the whole flow.

Steps that need TensorFlow import it only when they run, so `leukedge data ...` and
`leukedge classify ...` work on a device without the `train` extra, and the others say
which extra they need.
"""

from __future__ import annotations

import functools
import json
import sys

import click

from leukedge import __version__

EXIT_FAILED, EXIT_USAGE = 1, 2


def _one_line_errors(fn):
    """Report a known bad input, or a missing `train` extra, as one line with exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from leukedge.edge.errors import LeukedgeError

        try:
            return fn(*args, **kwargs)
        except LeukedgeError as exc:
            _die(str(exc))
        except ImportError as exc:
            if "leukedge[train]" in str(exc):
                _die(str(exc))
            if "tensorflow" in str(exc).lower():
                _die(f"{exc}; this step needs the workstation extra: pip install 'leukedge[train]'")
            raise

    return wrapper


def _die(message: str) -> None:
    click.echo(f"leukedge: error: {message}", err=True)
    sys.exit(EXIT_USAGE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="leukedge")
def main():
    """leukedge: train, shrink, run and benchmark an ALL-screening model for the edge.

    \b
    Steps:  data -> train -> optimize -> classify -> benchmark   (or: flow, all at once)
    """
    from leukedge.edge import stderr as native_stderr  # native libraries' stderr lines: prefixed, whole

    native_stderr.install("leukedge")
    quiet_known_native_lines()


# TensorFlow's native lines that are known to be harmless on a CPU-only machine (issue 21). TensorFlow logs
# some of them at ERROR level, so TF_CPP_MIN_LOG_LEVEL cannot hide them without hiding real errors; they are
# dropped by the process-wide stderr reader instead, one pattern each, everything else is kept.
HARMLESS_NATIVE_LINES = (
    r"failed call to cuInit: .*(UNKNOWN ERROR \(303\)|CUDA_ERROR_NO_DEVICE)",  # no GPU here: TF uses the CPU
    r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine",  # the same, said at INFO level
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",  # absl's preamble
    r"port\.cc:\d+\] oneDNN custom operations are on",  # a note on float summation order, not a problem
    r"^fully_quantize: \d+, inference_type: \d+, input_inference_type:",  # the TFLite converter's echo of its settings
)


def quiet_known_native_lines() -> None:
    """Register HARMLESS_NATIVE_LINES with the stderr reader (leukedge.edge.stderr.add_filter)."""
    from leukedge.edge import stderr as native_stderr

    for pattern in HARMLESS_NATIVE_LINES:
        native_stderr.add_filter(pattern)


# -- data ------------------------------------------------------------------------

@main.group()
def data():
    """Inspect, verify, download or synthesize datasets, or crop microscope frames into one."""


@data.command("inspect")
@click.argument("path", type=click.Path())
@click.option("--positive", help="Positive class folder name (plain class-folder layout).")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.option("--quality-size", type=click.IntRange(min=0), default=224, show_default=True,
              help="Decode every image at this size and flag suspicious ones (quality/OOD checks against the "
                   "dataset's own statistics); 0 skips the checks.")
@_one_line_errors
def data_inspect(path, positive, as_json, quality_size):
    """Counts per class, subject and fold; image sizes and modes; byte-identical duplicates; suspicious images."""
    from leukedge.train.datasets import inspect, read_dataset

    ds = read_dataset(path, positive)
    rep = inspect(ds, quality_size=quality_size or None)
    if as_json:
        click.echo(json.dumps(rep, indent=2))
        return
    click.echo(f"{rep['root']}  ({rep['layout']} layout; labels {rep['labels']}, positive '{rep['positive_label']}')")
    click.echo(f"images: {rep['images']} ({rep['labelled']} labelled)  per class: {rep['per_class']}  per part: {rep['per_part']}")
    for fold, counts in rep["per_fold"].items():
        click.echo(f"  {fold}: {counts}")
    if rep["subjects"]:
        click.echo(f"subjects: {rep['subjects']} (by class: {rep['subjects_per_class']})")
    click.echo(f"sizes: {rep['sizes']}  modes: {rep['modes']}")
    click.echo(f"byte-identical groups: {rep['duplicate_groups']} ({rep['duplicate_files']} files)")
    for c in rep["duplicates_across_subjects"]:
        click.echo(f"  shared by subjects {', '.join(c['subjects'])}: {', '.join(c['files'])}")
    for path_, problem in rep["problems"] + rep["unreadable"]:
        click.echo(f"problem: {path_}: {problem}")
    q = rep.get("quality")
    if q:
        click.echo(f"suspicious images: {q['flagged']} of {q['checked']} decoded (reference: {q['reference']}); "
                   f"per reason: {q['per_reason']}")
        for code, lines in q["examples"].items():
            for line in lines:
                click.echo(f"  {code}: {line}")


@data.command("verify")
@click.argument("path", type=click.Path())
@click.option("--present-only", is_flag=True, help="Check only the files present (a subset); missing files are not an error.")
@click.option("--json", "as_json", is_flag=True)
@_one_line_errors
def data_verify(path, present_only, as_json):
    """Check a C-NMC download against the release manifest: missing, corrupt, unexpected files."""
    from leukedge.train.verify import verify_release

    rep = verify_release(path)
    if as_json:
        click.echo(json.dumps(rep.to_dict(), indent=2))
    else:
        click.echo(f"{rep.root}: {rep.ok} of {rep.expected} release files verified; {len(rep.missing)} missing, "
                   f"{len(rep.corrupt)} corrupt, {len(rep.unexpected)} unexpected")
        for rel, problem in rep.corrupt:
            click.echo(f"  corrupt: {rel}: {problem}")
        for rel in rep.unexpected:
            click.echo(f"  unexpected: {rel}")
        if rep.missing and not present_only:
            for rel in rep.missing[:10]:
                click.echo(f"  missing: {rel}")
            if len(rep.missing) > 10:
                click.echo(f"  ... and {len(rep.missing) - 10} more missing")
    bad = rep.corrupt or rep.unexpected or (rep.missing and not present_only)
    sys.exit(EXIT_FAILED if bad else 0)


@data.command("download")
@click.argument("dest", type=click.Path(file_okay=False))
@_one_line_errors
def data_download(dest):
    """Fetch the public C-NMC release with kagglehub (optional extra), then verify it."""
    from leukedge.train.download import download

    root = download(dest)
    from leukedge.train.verify import verify_release

    rep = verify_release(root)
    click.echo(f"{root}: {rep.ok} of {rep.expected} files verified")
    sys.exit(0 if rep.complete else EXIT_FAILED)


@data.command("synth")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--train-images", default=240, show_default=True, type=click.IntRange(12, 100000))
@click.option("--val-images", default=40, show_default=True, type=click.IntRange(2, 100000))
@click.option("--size", default=450, show_default=True, type=click.IntRange(32, 2048))
@click.option("--seed", default=0, show_default=True)
@click.option("--difficulty", type=click.Choice(["easy", "realistic", "hard"]), default="realistic", show_default=True,
              help="easy: the classes never overlap (every model scores 1.0); realistic/hard: they overlap, "
                   "as in a real screening task.")
@_one_line_errors
def data_synth(out, train_images, val_images, size, seed, difficulty):
    """Generate a labelled, clearly synthetic set of cell-like images in the C-NMC layout."""
    from leukedge.train.synth import synthesize

    root = synthesize(out, train_images, val_images, size, seed, difficulty=difficulty)
    click.echo(f"wrote synthetic C-NMC-layout data ({difficulty}) to {root} (not microscope images)")


@data.command("crop")
@click.argument("frames", type=click.Path())
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="New dataset folder: class folders, unlabelled/, manifest.csv, reviewed.txt, crop.json.")
@click.option("--model", "-m", type=click.Path(dir_okay=False),
              help="Sort the cells into folders by this model's predicted label (marked unreviewed); its card "
                   "says how its training cells look.")
@click.option("--annotations", type=click.Path(),
              help="VOC XML (folder of <frame>.xml, or one file) or CSV (frame,label,x0,y0,x1,y1 or frame,label,x,y): "
                   "cells go into the annotated classes.")
@click.option("--classes", default="", help="Annotation classes to keep, comma-separated (e.g. WBC); default all.")
@click.option("--style", type=click.Choice(["masked", "crop"]),
              help="Crops masked on black (C-NMC) or square with background (PBC) [default: the model's card].")
@click.option("--canvas", "canvas_px", type=click.IntRange(16, 8192), help="Crop side in px [default: the model's card].")
@click.option("--um-per-px", type=click.FloatRange(min=0, min_open=True),
              help="Micrometres per pixel of the crops (the training cells) [default: the card's; without a "
                   "model, the camera's, else the frames' median red-cell ruler].")
@click.option("--camera-um-per-px", type=click.FloatRange(min=0, min_open=True),
              help="The camera's micrometres per pixel [default: each frame's red cells].")
@click.option("--skip-flagged", is_flag=True, help="Leave out cells cut by the frame edge, touching another, or blurred.")
@_one_line_errors
def data_crop(frames, out, model, annotations, classes, style, canvas_px, um_per_px, camera_um_per_px, skip_flagged):
    """Cut every white cell of the frames in FRAMES (a file or folder) into a dataset to label and train on."""
    from leukedge.train.crop import CropOptions, crop_frames

    opts = CropOptions(model=model or "", annotations=annotations or "",
                       classes=tuple(c.strip() for c in classes.split(",") if c.strip()), style=style,
                       canvas_px=canvas_px, um_per_px=um_per_px, camera_um_per_px=camera_um_per_px,
                       skip_flagged=skip_flagged)
    res = crop_frames(frames, out, opts)
    for frame, problem in res.errors:
        click.echo(f"leukedge data crop: {frame}: {problem}", err=True)
    folders = ", ".join(f"{k}: {v}" for k, v in res.per_folder.items()) or "none"
    click.echo(f"leukedge data crop: {res.cells} cells from {res.frames - len(res.errors)} of {res.frames} frames "
               f"into {res.out} ({folders}); {res.reviewed} reviewed (reviewed.txt)"
               + (f"; {res.skipped_flagged} flagged cells left out" if res.skipped_flagged else ""), err=True)
    sys.exit(EXIT_FAILED if res.errors else 0)


# -- train -----------------------------------------------------------------------

from leukedge.options import dataclass_options  # noqa: E402 - no TensorFlow behind it
from leukedge.train.config import TrainConfig, TuneOptions  # noqa: E402


def _config_options(table: str):
    """The option group every configurable step shares: --config FILE.toml ([table]) and repeated --set KEY=VALUE."""

    def decorate(fn):
        fn = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="Override any option by its key (repeatable).")(fn)
        return click.option("--config", "config_file", type=click.Path(dir_okay=False),
                            help=f"TOML config ([{table}] table).")(fn)

    return decorate


def _lazy_dataclass_options(module: str, name: str):
    """dataclass_options of a step's options class, imported when the command line is built (the classes
    import no TensorFlow at module level, so `leukedge classify` still works without the train extra)."""
    import importlib

    return dataclass_options(getattr(importlib.import_module(module), name))


def _out_option(help_: str = "Output folder."):
    return click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help=help_)


def _data_moved_option(fn):
    return click.option("--data", "data_path", type=click.Path(),
                        help="Dataset folder if it moved [default: the one in split.json].")(fn)


@main.command()
@click.argument("data_path", metavar="DATA", type=click.Path())
@_out_option()
@_config_options("train")
@dataclass_options(TrainConfig)
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
@_one_line_errors
def train(data_path, out, config_file, overrides, resume, **options):
    """Fine-tune ImageNet InceptionV3 on DATA; writes OUT/model.keras, its card and OUT/split.json."""
    from leukedge.train.config import load_config, parse_overrides
    from leukedge.train.fit import train as run_train

    values = {k: v for k, v in options.items() if v is not None}
    values.update(parse_overrides(overrides))
    cfg = load_config(config_file, values)
    run_train(data_path, out, cfg, resume=resume)


@main.command()
@click.argument("data_path", metavar="DATA", type=click.Path())
@_out_option()
@_config_options("train")
@dataclass_options(TuneOptions)
@_one_line_errors
def tune(data_path, out, config_file, overrides, **options):
    """Search head hyperparameters by validation F1; writes best.toml and the split.json it used."""
    from leukedge.options import load_options
    from leukedge.train.config import load_config, parse_overrides
    from leukedge.train.tune import tune as run_tune

    topts = load_options(TuneOptions, None, options)
    cfg = load_config(config_file, parse_overrides(overrides))
    run_tune(data_path, out, cfg, trials=topts.trials, max_seconds=topts.max_seconds, epochs=topts.trial_epochs)


# -- optimize --------------------------------------------------------------------

@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path())
@_out_option()
@_data_moved_option
@_config_options("optimize")
@_lazy_dataclass_options("leukedge.optimize.run", "OptimizeOptions")
@_one_line_errors
def optimize(model_path, out, data_path, config_file, overrides, **options):
    """Prune and quantize MODEL (model.keras) into the registry's variants, each gated against its float parent."""
    from leukedge.optimize.run import OptimizeOptions
    from leukedge.optimize.run import optimize as run_optimize
    from leukedge.options import load_options, parse_overrides

    values = {k: v for k, v in options.items() if v is not None}
    values.update(parse_overrides(overrides))
    opts = load_options(OptimizeOptions, config_file, values, table="optimize")
    summary = run_optimize(model_path, out, opts, data_path)
    if summary["failed"]:
        click.echo(f"leukedge optimize: over budget: {', '.join(summary['failed'])}"
                   + (" (kept: --keep-failing)" if opts.keep_failing else ""), err=True)
        if not opts.keep_failing:
            sys.exit(EXIT_FAILED)


# -- import ----------------------------------------------------------------------

@main.command("import")
@click.argument("model_path", metavar="MODEL", type=click.Path())
@_out_option("Folder for model.keras and its card.")
@_lazy_dataclass_options("leukedge.train.importer", "ImportOptions")
@_one_line_errors
def import_(model_path, out, **options):
    """Bring a Keras model trained elsewhere (.keras from tf-keras 2 or Keras 3, or .h5) into a leukedge run folder."""
    from leukedge.options import load_options
    from leukedge.train.importer import ImportOptions, import_model

    opts = load_options(ImportOptions, None, options)
    res = import_model(model_path, out, opts)
    check = res["check"]
    if check is None:
        click.echo(f"leukedge import: {out}/model.keras: preprocessing UNVERIFIED (no --data); optimize and "
                   "benchmark refuse it until it is imported again with labelled data", err=True)
    elif not check["verified"]:
        click.echo(f"leukedge import: warning: {check['reason']}", err=True)


# -- classify / benchmark / flow -------------------------------------------------

@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
              add_help_option=False)
@click.pass_context
def classify(ctx):
    """Same as edge-classify, every option passed through (leukedge classify --help shows them)."""
    from leukedge.edge.cli import main as edge_main

    args = list(ctx.args)
    raw = sys.argv[1:]
    if "--" in raw and "classify" in raw:  # click drops `--`; edge-classify needs it (inputs named like options)
        args = raw[raw.index("classify") + 1:]
    edge_main(args, prog="leukedge classify")


@main.command()
@click.argument("models", nargs=-1, type=click.Path())
@_data_moved_option
@_out_option()
@click.option("--baseline", type=click.Path(dir_okay=False), help="An earlier results.json to compare against.")
@click.option("--fail-on-regression", is_flag=True, help="Exit 1 when a variant regressed past the baseline's budgets.")
@_config_options("benchmark")
@_lazy_dataclass_options("leukedge.benchmarks.run", "BenchmarkOptions")
@_one_line_errors
def benchmark(models, data_path, out, baseline, fail_on_regression, config_file, overrides, **options):
    """Score and time every model variant on the same images; write results.json, report.md and a plot."""
    from leukedge.benchmarks.run import BenchmarkOptions
    from leukedge.benchmarks.run import benchmark as run_benchmark
    from leukedge.options import load_options, parse_overrides

    values = {k: v for k, v in options.items() if v is not None}
    values.update(parse_overrides(overrides))
    opts = load_options(BenchmarkOptions, config_file, values, table="benchmark")
    results = run_benchmark(models, out, opts, data_path, baseline)
    if fail_on_regression and results.get("regressions"):
        sys.exit(EXIT_FAILED)


@main.command()
@click.argument("data_path", metavar="[DATA]", required=False, type=click.Path())
@click.option("--out", "-o", default="runs/flow", show_default=True, type=click.Path(file_okay=False))
@_lazy_dataclass_options("leukedge.flow", "FlowOptions")
@_one_line_errors
def flow(data_path, out, **options):
    """The whole flow on DATA (default: the sample data if at hand, else a generated synthetic set)."""
    import dataclasses

    from leukedge.flow import FlowOptions, run_flow
    from leukedge.options import load_options

    opts = load_options(FlowOptions, None, options)
    if data_path and opts.synthetic:
        raise click.UsageError("give DATA or --synthetic, not both")
    run_flow(data_path, out, **dataclasses.asdict(opts))


# -- sign / keygen ---------------------------------------------------------------

@main.command()
@click.argument("private_path", metavar="PRIVATE", type=click.Path(dir_okay=False))
@click.option("--public", "public_path", type=click.Path(dir_okay=False),
              help="Public key file [default: PRIVATE with .pub, e.g. signing.key -> signing.pub].")
@_one_line_errors
def keygen(private_path, public_path):
    """Make an Ed25519 key pair: PRIVATE (mode 0600, keep it on the workstation) and its public key for devices."""
    from pathlib import Path

    from leukedge.edge.signature import generate_keypair

    public_path = public_path or str(Path(private_path).with_suffix(".pub"))
    kid = generate_keypair(private_path, public_path)
    click.echo(f"key {kid}: private {private_path} (keep secret), public {public_path} "
               "(give to devices: edge-classify --require-signature)")


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path())
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False), help="Ed25519 private key (leukedge keygen).")
@click.option("--card", "card_path", type=click.Path(dir_okay=False), help="The model's card [default: the one beside MODEL].")
@_one_line_errors
def sign(model_path, key_path, card_path):
    """Sign MODEL and its card together (Ed25519); writes MODEL.sig beside the model."""
    from leukedge.edge.signature import sign_model, signature_status

    out = sign_model(model_path, card_path, key_path)
    click.echo(f"{out}: {signature_status(model_path).split(',')[0]} over {model_path} and its card")


if __name__ == "__main__":
    main()
