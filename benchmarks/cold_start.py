"""Cold start of `edge-classify` side by side with a bare "import LiteRT, load, decode, invoke" script.

    python -m leukedge.benchmarks.cold_start MODEL IMAGE [--runs 9] [--out results.json]

Both run as fresh processes on the same model and image, alternating, `runs` times each; the
medians and their ratio are printed (issue target: edge-classify within 1.2x of the bare script).
The bare script is what any device program must do at least: import numpy, Pillow and the
runtime, load and allocate the model, decode and resize the image, invoke once. edge-classify adds
the card (parse, validate, SHA-256 check through the verified-hash cache), the lookup table, the
quality checks, its option parser (argparse) and its output row. A verbose run (`-X importtime`)
is parsed for the largest imports so a regression shows where it comes from.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BARE = """
import sys, numpy as np
from PIL import Image
from ai_edge_litert.interpreter import Interpreter
m, img = sys.argv[1], sys.argv[2]
it = Interpreter(model_path=m, num_threads=2); it.allocate_tensors()
d = it.get_input_details()[0]; s = int(d['shape'][1])
x = np.asarray(Image.open(img).convert('RGB').resize((s, s), Image.BILINEAR))
sc, zp = d['quantization']
x = (np.clip(np.rint(((x.astype(np.float32) - 128) / 128) / sc) + zp, -128, 127).astype(d['dtype'])
     if d['dtype'] != np.float32 else ((x - 128) / 128).astype(np.float32))
it.set_tensor(d['index'], x[None]); it.invoke()
print(it.get_tensor(it.get_output_details()[0]['index'])[0])
"""


# A device install compiles bytecode (pip does); an environment with PYTHONDONTWRITEBYTECODE would
# charge edge-classify for compiling its own modules at every start, and the bare script nothing.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _time(cmd: list[str]) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    took = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}: {r.stderr.strip()[-300:]}")
    return took


def largest_imports(model: str, image: str, top: int = 8) -> list[tuple[str, float]]:
    """(module, cumulative import ms) of the slowest top-level imports of one edge-classify run."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "leukedge.edge.cli", "-q", "-m", model, image],
                       capture_output=True, text=True, env=ENV)
    rows = []
    for line in r.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cum, name = line.split(":", 1)[1].split("|")
            if cum.strip().isdigit() and not name.startswith("  "):  # top-level imports only
                rows.append((name.strip(), int(cum) / 1000))
    return sorted(rows, key=lambda r: -r[1])[:top]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("image")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    edge = [sys.executable, "-m", "leukedge.edge.cli", "-q", "-m", a.model, a.image]
    bare = [sys.executable, "-c", BARE, a.model, a.image]
    python_only = [sys.executable, "-c", "pass"]
    _time(edge), _time(bare)  # warm the page cache, the pyc files and the verified-hash cache
    t_edge, t_bare, t_py = [], [], []
    for _ in range(a.runs):
        t_edge.append(_time(edge))
        t_bare.append(_time(bare))
        t_py.append(_time(python_only))
    res = {"model": a.model, "image": a.image, "runs": a.runs,
           "edge_classify_s": statistics.median(t_edge), "bare_script_s": statistics.median(t_bare),
           "python_startup_s": statistics.median(t_py)}
    res["ratio"] = res["edge_classify_s"] / res["bare_script_s"]
    res["largest_imports_ms"] = largest_imports(a.model, a.image)
    print(f"cold start, median of {a.runs}: edge-classify {res['edge_classify_s']:.3f} s, bare LiteRT script "
          f"{res['bare_script_s']:.3f} s, ratio {res['ratio']:.2f} (target <= 1.2); python alone {res['python_startup_s']:.3f} s")
    print("largest imports (ms): " + ", ".join(f"{n} {ms:.0f}" for n, ms in res["largest_imports_ms"]))
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=2)
    return res


if __name__ == "__main__":
    main()
