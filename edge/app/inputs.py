"""edge-classify's INPUTS: files, folders and glob patterns turned into the list of files to classify, plus the
inputs that are errors and the files that are skipped (each counted and reported, never silently dropped)."""

from __future__ import annotations

import os
from pathlib import Path

from ..files import IMAGE_SUFFIXES, SKIP_NOT_FILE, is_ignored_name, skip_reason
from .console import log

_GLOB_CHARS = set("*?[")


def expand_inputs(inputs: tuple[str, ...], recursive: bool,
                  skipped: list[tuple[str, str, str]] | None = None) -> tuple[list[str], list[tuple[str, str, int]]]:
    """Turn files, folders and glob patterns into a file list plus (input, problem, position) errors.

    position: how many files come before the error's input, so rows can follow the input order.
    skipped: when given, gets (input, file, reason) for every file a folder or pattern held that is
    not classified (edge.files.skip_reason: not an image name, a temp/OS-metadata file, not a
    regular file), so each is counted and reported, never silently dropped.

    Folders and patterns yield image names (edge.files.IMAGE_SUFFIXES, .jfif and .jpe included)
    that are not temp/OS-metadata files (AppleDouble `._*` sidecars and the like); a file named
    explicitly is classified whatever its name, except those metadata files, which are skipped
    with a note. Never raises for unreadable folders: they become errors.
    """
    files: list[str] = []
    errors: list[tuple[str, str, int]] = []
    seen: set[str] = set()
    skips = skipped if skipped is not None else []

    def add(p: str) -> None:
        if p not in seen:
            seen.add(p)
            files.append(p)

    def sort_out(raw: str, found) -> list[str]:
        """The images among `found` (paths), sorted; the rest go to `skips` with their reason."""
        images = []
        for p in found:
            reason = skip_reason(p) or (None if os.path.isfile(p) else SKIP_NOT_FILE)
            if reason is None:
                images.append(str(p))
            else:
                skips.append((raw, str(p), reason))
        return sorted(images)

    for raw in inputs:
        path = Path(raw)
        try:
            if path.is_dir():
                walker = path.rglob("*") if recursive else path.iterdir()
                found = sort_out(raw, (p for p in walker if not p.is_dir()))
                if not found:
                    hint = "" if recursive else " (use --recursive for subfolders)"
                    problem = f"folder has no images ({', '.join(IMAGE_SUFFIXES)}){hint}"
                    errors.append((raw, problem, len(files)))
                for f in found:
                    add(f)
            elif path.exists():
                if is_ignored_name(path.name):
                    log(f"{raw}: skipped: a temporary or OS metadata file, not an image")
                    skips.append((raw, raw, skip_reason(path.name)))
                else:
                    add(raw)
            elif _GLOB_CHARS & set(raw):
                import glob

                matches = []  # a pattern names files: each gets a row, whatever its suffix (metadata aside)
                for m in sorted(glob.glob(raw, recursive=True)):
                    if os.path.isdir(m):
                        continue
                    if is_ignored_name(m) or not os.path.isfile(m):
                        skips.append((raw, m, skip_reason(m) or SKIP_NOT_FILE))
                    else:
                        matches.append(m)
                if not matches:
                    errors.append((raw, "pattern matches no files", len(files)))
                for m in matches:
                    add(m)
            else:
                errors.append((raw, "no such file or folder", len(files)))
        except OSError as exc:
            errors.append((raw, f"cannot read: {exc.strerror or exc}", len(files)))
    return files, errors


def report_skips(skipped: list[tuple[str, str, str]], counts) -> None:
    """One stderr line per input that held files that are not classified (by reason, a few names),
    and the counts in `counts` (the summary line says them)."""
    by_input: dict[str, dict[str, list[str]]] = {}
    for raw, path, reason in skipped:
        by_input.setdefault(raw, {}).setdefault(reason, []).append(path)
    for raw, reasons in by_input.items():
        parts = []
        for reason, paths in sorted(reasons.items()):
            counts.skip(reason, len(paths))
            names = ", ".join(os.path.basename(p) for p in paths[:3]) + (", ..." if len(paths) > 3 else "")
            parts.append(f"{len(paths)} {reason} ({names})")
        n = sum(len(p) for p in reasons.values())
        if any(p == raw for paths in reasons.values() for p in paths):
            continue  # an explicitly named metadata file: said when it was skipped
        log(f"{raw}: skipped {n} file{'s' if n != 1 else ''} that {'are' if n != 1 else 'is'} not classified: "
             + "; ".join(parts))
