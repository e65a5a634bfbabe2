"""edge-classify's options: one typed field per flag, its help and checks in the field's metadata.

`edge.app.parser` builds the argparse parser from these fields (as leukedge.options' `option()` does for
the workstation's click commands, without importing click: edge-classify's cold start matters). The
metadata keys: flags, help, metavar; range=(int|float, low, high) (a ranged value; help ends with its
default and range); path=dict(file_okay=, dir_okay=, exists=) (checked like click.Path); choices;
flag=True (store_true); nargs; type; env (a variable giving the default); only ("watch" | "fields": a
usage error without --watch DIR / --fields).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


def option(*flags: str, help: str, default=None, **spec):
    """A dataclass field for one command-line option; `spec` as in the module docstring."""
    return field(default=default, metadata={"flags": flags, "help": help, **spec})


_WATCH = "With --watch: "


@dataclass
class ClassifyOptions:
    """The options of one edge-classify run (`parse_args` gives them; `classify(opts)` runs them)."""

    inputs: tuple = field(default=(), metadata={"help": "Image files, folders or glob patterns."})
    model: str | None = option("-m", "--model", metavar="FILE", env="LEUKEDGE_MODEL",
                               help="Model .tflite (its card .json beside it). Env: LEUKEDGE_MODEL.")
    threshold: float | None = option("--threshold", range=(float, 0.0, 1.0), metavar="P",
                                     help="Override the card's decision threshold on P(positive label), e.g. P(ALL).")
    fmt: str = option("--format", default="text", choices=["text", "json", "csv"], metavar="[text|json|csv]",
                      help="[default: text]")
    output: str | None = option("-o", "--output", path={"dir_okay": False}, metavar="FILE",
                                help="Results FILE. Batch: written to a temporary file beside it, renamed at the "
                                     "end. Watch: appended, with a journal FILE.journal for restarts.")
    threads: int | None = option("--threads", range=(int, 1, 256), metavar="N",
                                 help="Interpreter threads per worker [default: all cores with one worker, 1 with "
                                      "several].")
    workers: int | None = option("--workers", range=(int, 1, 256), metavar="N",
                                 help="Parallel workers, each with its own interpreter [default: one per core for "
                                      "several files, 1 for one file].")
    recursive: bool = option("-r", "--recursive", default=False, flag=True,
                             help="Descend into subfolders of folder inputs (and of --watch DIR).")
    watch_dir: str | None = option("--watch", path={"file_okay": False}, metavar="DIR",
                                   help="Classify each image saved into DIR until Ctrl-C / SIGTERM.")
    include_existing: bool = option("--include-existing", default=False, flag=True, only="watch",
                                    help="With --watch, first start: also classify images already in DIR.")
    state_file: str | None = option("--state", path={"dir_okay": False}, metavar="FILE", only="watch",
                                    help=_WATCH + "journal FILE for restarts [default: beside --output; needed when "
                                         "results go to stdout].")
    reclassify: bool = option("--reclassify", default=False, flag=True, only="watch",
                              help=_WATCH + "classify again what another model already classified.")
    poll_mode: bool = option("--poll", default=False, flag=True, only="watch",
                             help=_WATCH + "poll instead of inotify (network shares: inotify misses remote writes).")
    poll_interval: float = option("--poll-interval", default=0.5, range=(float, 0.01, 60.0), metavar="SECONDS",
                                  only="watch", help=_WATCH + "seconds between checks.")
    full_scan_interval: float | None = option("--full-scan-interval", range=(float, 1.0, 86400.0), metavar="SECONDS",
                                              only="watch", help=_WATCH + "seconds between full sweeps [default: 30 "
                                                                          "with --poll, 300 with inotify].")
    settle: float = option("--settle", default=1.0, range=(float, 0.0, 600.0), metavar="SECONDS", only="watch",
                           help=_WATCH + "seconds a file's size and mtime must hold still before it is read.")
    empty_timeout: float = option("--empty-timeout", default=60.0, range=(float, 0.0, 86400.0), metavar="SECONDS",
                                  only="watch", help=_WATCH + "seconds a 0-byte file waits for its writer before it "
                                                              "is reported as empty.")
    heartbeat_file: str | None = option("--heartbeat", path={"dir_okay": False}, metavar="FILE", only="watch",
                                        help=_WATCH + "status FILE rewritten every few seconds [default: beside the "
                                                      "journal].")
    fsync_interval: float = option("--fsync-interval", default=1.0, range=(float, 0.0, 3600.0), metavar="SECONDS",
                                   help="Seconds between fsyncs of results and journal (0: every row).")
    strict_quality: bool = option("--strict-quality", default=False, flag=True,
                                  help="An image with quality warnings is a failed input, not a result.")
    bit_depth: int | None = option("--bit-depth", range=(int, 1, 32), metavar="BITS",
                                   help="Significant bits of integer samples when the file does not say (e.g. 12).")
    page: int | None = option("--page", range=(int, 1, None), metavar="N",
                              help="Page of multi-page files to classify (1-based).")
    max_pixels: int | None = option("--max-pixels", range=(int, 1, None), metavar="N",
                                    help="Refuse images with more pixels than this [default: 16 Mpx].")
    value_range: tuple | None = option("--value-range", nargs=2, type=float, metavar=("LOW", "HIGH"),
                                       help="Float images: the values that mean black and white (e.g. 0 4095); "
                                            "[0, 1] is assumed otherwise.")
    self_test_flag: bool = option("--self-test", default=False, flag=True,
                                  help="Run the model's golden-set self-test first; exit 2 (a model error) if it "
                                       "fails.")
    engine: str = option("--engine", default="auto", choices=["auto", "litert", "onnxruntime", "openvino"],
                         metavar="[auto|litert|onnxruntime|openvino]",
                         help="Inference engine for the model [default: auto: the engine edge-choose measured "
                              "fastest for this model on this machine (choice.json beside it), else the card "
                              "format's default].")
    choice: str | None = option("--choice", path={}, metavar="FILE|DIR",
                                help="Run the variant and engine that edge-choose picked (its choice.json, or the "
                                     "folder holding it) instead of --model: only a variant that passed its gate, "
                                     "only a signed one with --require-signature.")
    fields: bool = option("--fields", default=False, flag=True,
                          help="Inputs are microscope frames: find every white cell, crop it as the training cells "
                               "were, and write one row per cell (frame rows, docs/frames.md). Needs the card's "
                               "'cells' and leukedge[fields].")
    um_per_px: float | None = option("--um-per-px", range=(float, 1e-3, 100.0), metavar="UM", only="fields",
                                     help="With --fields: the camera's micrometres per pixel [default: measured from "
                                          "the red cells].")
    overlays: str | None = option("--overlays", path={"file_okay": False}, metavar="DIR", only="fields",
                                  help="With --fields: write a review PNG per frame into DIR (each cell's box "
                                       "coloured by label, with P).")
    crops: str | None = option("--crops", path={"file_okay": False}, metavar="DIR", only="fields",
                               help="With --fields: write each cell's crop into DIR.")
    include_flagged: bool = option("--include-flagged", default=False, flag=True, only="fields",
                                   help="With --fields: count cells cut by the edge, touching or blurred in the "
                                        "per-sample fractions.")
    require_signature: str | None = option("--require-signature", path={"dir_okay": False, "exists": True},
                                           metavar="FILE",
                                           help="Refuse a model and card not signed with this Ed25519 public key.")
    summary_by: str | None = option("--summary-by", metavar="folder|subject|REGEX",
                                    help="Per-sample summary: group cells by folder, by C-NMC subject "
                                         "(UID_<subject>_...), or by a regular expression with one group, searched in "
                                         "each file's path (no match: group 'unknown'); printed on stderr at the end.")
    summary_out: str | None = option("--summary-out", path={"dir_okay": False}, metavar="FILE",
                                     help="Write the per-sample summary to FILE (.json or .csv, atomically; in --watch "
                                          "mode kept current).")
    quiet: bool = option("-q", "--quiet", default=False, flag=True, help="No summary or runtime line on stderr.")

    def __getitem__(self, name: str):
        """`opts["model"]`: the options read as the mapping they once were."""
        return getattr(self, name)


def option_fields():
    """The fields that are flags (every one but INPUTS), in the order of the help."""
    return [f for f in fields(ClassifyOptions) if "flags" in f.metadata]
