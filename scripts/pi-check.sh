#!/usr/bin/env bash
# aarch64 proof: the project's wheel, the aarch64 engines and every optimized variant's numbers on arm64 Linux.
#
#   sudo scripts/pi-check.sh [MODEL_OR_FOLDER ...]
#        each argument: a .tflite or .onnx with its card, or an optimize folder (every *.tflite and *.onnx
#        in it that has a card) [default: runs/ci/opt/int8.tflite, else a tiny int8 model built here
#        from tests/helpers.py]
#
# Builds (once; cached in $LEUKEDGE_ARM64_ROOTFS, default ~/.cache/leukedge/arm64-rootfs) an arm64
# Debian 12 userland with debootstrap, runs it under QEMU user emulation (qemu-user-static's binfmt
# handler, registered here as root), installs the wheel built from this checkout plus the aarch64
# engine wheels from PyPI at the versions this host has: ai-edge-litert always; onnxruntime and
# openvino when an .onnx model is given (OpenVINO's aarch64 wheel needs glibc 2.35: Debian 12 has
# 2.36). For every model and every engine that runs it (LiteRT for .tflite; ONNX Runtime and OpenVINO
# for .onnx, edge.engines), it runs the golden-set self-test and a few images on two emulated cores,
# Cortex-A72 (Raspberry Pi 4) and Cortex-A76 (Raspberry Pi 5), and prints P(positive) on x86_64 and
# on each side by side. Environment: LEUKEDGE_PI_CPUS (default "cortex-a72 cortex-a76"),
# LEUKEDGE_PI_IMAGES (8), LEUKEDGE_PI_MAX_STEPS (2), LEUKEDGE_PI_QDQ_MAX_DP (0.05),
# LEUKEDGE_ARM64_ROOTFS, LEUKEDGE_DEBIAN_MIRROR.
#
# Agreement with x86_64, the same engine on both sides:
#   integer-output probability models (LiteRT int8): |dP| within LEUKEDGE_PI_MAX_STEPS output steps;
#   other float-output models: |dP| <= 1e-4; integer logit models: the golden-set self-test judges;
#   QDQ int8 .onnx (the card has onnx.quantization): the int8 arithmetic inside differs by design between
#   x86 (MLAS, oneDNN) and ARM kernels while the output is float, so the self-test's 1e-4 float rule
#   cannot hold: every decision (images and golden set) must agree and |dP| <= LEUKEDGE_PI_QDQ_MAX_DP
#   (0.05: the golden set's margin from the threshold, optimize.golden.DEFAULT_MARGIN, so an agreeing
#   golden decision is not luck). The 1e-4 self-test verdict is printed beside it.
#
# What it proves: the wheel installs and runs on aarch64 (Python 3.11, Debian 12 = Raspberry Pi OS
# bookworm's base), the aarch64 engines load each model, and the aarch64 kernels each engine picks
# for each core's instruction set reproduce the workstation's numbers (golden set, real images)
# within the rules above. QEMU executes the aarch64 instructions exactly; rounding is the kernels'.
# What it cannot prove: speed or memory on a real Pi (QEMU emulates the instructions, not the Pi's
# cores, caches or memory bandwidth: the emulated s/image it prints is never a speed), nor
# camera/OS/thermal behaviour. Which engine and variant is fastest on a Pi: run edge-choose there.
#
# Needs root, Debian's mirror and PyPI. When the machine refuses (not root, no binfmt_misc, no
# debootstrap, no network), it prints one "pi-check: skipped: ..." line and exits 0, so CI never
# fails on the environment; an engine whose aarch64 wheel does not install is reported as not
# checked. It exits 1 only when aarch64 disagrees with x86_64 or a self-test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
ARGS=("$@")
ROOTFS=${LEUKEDGE_ARM64_ROOTFS:-$HOME/.cache/leukedge/arm64-rootfs}
MIRROR=${LEUKEDGE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PY=${PYTHON:-$REPO/.venv/bin/python}
MAX_STEPS=${LEUKEDGE_PI_MAX_STEPS:-2}   # allowed |dP| between x86_64 and aarch64, in output quantization steps
QDQ_MAX_DP=${LEUKEDGE_PI_QDQ_MAX_DP:-0.05}  # allowed |dP| for QDQ int8 .onnx models (see above)
T0=$SECONDS

skip() { echo "pi-check: skipped: $*"; exit 0; }
say() { echo "pi-check: $*"; }

[ "$(uname -m)" = x86_64 ] || skip "host is $(uname -m); this check emulates aarch64 on an x86_64 host"
[ "$(id -u)" = 0 ] || skip "needs root (binfmt registration, debootstrap, chroot); run: sudo $0 ${ARGS[*]:-}"
[ -x "$PY" ] || skip "no project venv at $PY (run scripts/bootstrap.sh first)"

# -- 1. qemu-user-static + debootstrap, binfmt handler ---------------------------------------------
HANDLER=/usr/libexec/qemu-binfmt/aarch64-binfmt-P
CONF=/usr/lib/binfmt.d/qemu-aarch64.conf
if ! command -v debootstrap >/dev/null || [ ! -e "$CONF" ]; then
  say "installing qemu-user-static and debootstrap (apt-get)"
  { apt-get install -y -q qemu-user-static debootstrap >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q qemu-user-static debootstrap >/dev/null 2>&1; }; } \
    || skip "cannot apt-get install qemu-user-static debootstrap"
fi
[ -e "$CONF" ] || skip "$CONF missing after installing qemu-user-static"
BINFMT=/proc/sys/fs/binfmt_misc
if [ ! -e "$BINFMT/register" ]; then
  mount -t binfmt_misc binfmt_misc "$BINFMT" 2>/dev/null || skip "cannot mount binfmt_misc (container without the privilege?)"
fi
if [ ! -e "$BINFMT/qemu-aarch64" ]; then
  # the F flag makes the kernel open the handler now, so it works inside the chroot too
  grep -v '^#' "$CONF" | head -n1 > "$BINFMT/register" 2>/dev/null \
    || skip "the kernel refused the qemu-aarch64 binfmt registration"
fi
grep -q enabled "$BINFMT/qemu-aarch64" 2>/dev/null || skip "the qemu-aarch64 binfmt handler is registered but disabled"
say "binfmt: $(head -n1 "$BINFMT/qemu-aarch64"), interpreter $(sed -n 's/^interpreter //p' "$BINFMT/qemu-aarch64")"

# -- 2. arm64 Debian 12 userland (cached) ------------------------------------------------------------
VENV=/opt/leukedge-venv
if [ ! -e "$ROOTFS/.leukedge-ready" ]; then
  say "building arm64 Debian 12 userland in $ROOTFS (debootstrap from $MIRROR; a few minutes)"
  rm -rf "$ROOTFS.part"
  mkdir -p "$(dirname "$ROOTFS")"
  debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$ROOTFS.part" "$MIRROR" > "$(dirname "$ROOTFS")/debootstrap.log" 2>&1 \
    || skip "debootstrap --arch=arm64 failed (log: $(dirname "$ROOTFS")/debootstrap.log: $(tail -n1 "$(dirname "$ROOTFS")/debootstrap.log"))"
  rm -rf "$ROOTFS"
  mv "$ROOTFS.part" "$ROOTFS"
  touch "$ROOTFS/.leukedge-ready"
fi

MOUNTS=()
cleanup() {
  local m
  for ((i=${#MOUNTS[@]}-1; i>=0; i--)); do umount -l "${MOUNTS[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
for m in proc dev sys; do
  mountpoint -q "$ROOTFS/$m" || { mount --rbind "/$m" "$ROOTFS/$m" && mount --make-rslave "$ROOTFS/$m" && MOUNTS+=("$ROOTFS/$m"); }
done
cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
# trust what the host trusts (a site's TLS-inspecting proxy CA, say): its CA bundle, for pip in the chroot
HOST_CA=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
ARM_CA=/etc/ssl/certs/ca-certificates.crt
if [ -f "$HOST_CA" ]; then
  mkdir -p "$ROOTFS/opt/pi-check-ca" && cp -L "$HOST_CA" "$ROOTFS/opt/pi-check-ca/host-ca.crt" && ARM_CA=/opt/pi-check-ca/host-ca.crt
fi
arm() { chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root LANG=C.UTF-8 PYTHONUNBUFFERED=1 \
          PIP_CERT="$ARM_CA" SSL_CERT_FILE="$ARM_CA" PIP_DEFAULT_TIMEOUT=180 "$@"; }
[ "$(arm uname -m)" = aarch64 ] || skip "the arm64 userland does not run (uname -m says $(arm uname -m))"
say "arm64 userland: $(arm cat /etc/debian_version), $(arm python3 -V)"

# -- 3. the models to check -------------------------------------------------------------------------
WORK="$ROOTFS/opt/pi-check"
rm -rf "$WORK"
mkdir -p "$WORK/wheels" "$WORK/model" "$WORK/images"
has_card() { [ -f "$1.json" ] || [ -f "${1%.*}.json" ]; }
MODELS=()
if [ ${#ARGS[@]} -eq 0 ] && [ -e runs/ci/opt/int8.tflite ]; then ARGS=(runs/ci/opt/int8.tflite); fi
for a in "${ARGS[@]}"; do
  if [ -d "$a" ]; then
    found=0
    for f in "$a"/*.tflite "$a"/*.onnx; do
      [ -f "$f" ] || continue
      case $f in *.float-tmp.onnx) continue ;; esac
      has_card "$f" && { MODELS+=("$f"); found=1; }
    done
    [ $found = 1 ] || skip "folder $a holds no .tflite or .onnx model with its card"
  elif [ -f "$a" ]; then
    MODELS+=("$a")
  else
    skip "model $a not found"
  fi
done
if [ ${#MODELS[@]} -eq 0 ]; then
  say "no model given and no runs/ci/opt/int8.tflite: building a tiny int8 model (tests/helpers.py)"
  TINY="$WORK/tiny"
  mkdir -p "$TINY"
  TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=3 "$PY" - "$TINY" >/dev/null 2>&1 <<'EOF'
import sys, numpy as np
sys.path.insert(0, "tests")
from pathlib import Path
from helpers import export_tflite, fit_briefly, tiny_model
from leukedge.edge.preprocess import Preprocessing, normalize
from leukedge.train.synth import _cell
rng = np.random.default_rng(0)
imgs = np.stack([_cell(rng, 64, blast=bool(i % 2)) for i in range(64)])
x = normalize(imgs, Preprocessing(size=64, mean=(128.0,) * 3, std=(128.0,) * 3))
y = np.arange(64) % 2
export_tflite(fit_briefly(tiny_model(64), x, y, epochs=6), Path(sys.argv[1]), "int8", calib=x[:24])
EOF
  MODELS=("$TINY/int8.tflite")
fi
# Each model is copied with its card, golden set and signature into its own folder model/<i>/ (two
# optimize folders may both hold an int8.tflite); the user's folders are never written.
NEED_ONNX=0
for i in "${!MODELS[@]}"; do
  M=${MODELS[$i]}
  NAME=$(basename "$M")
  STEM=${NAME%.*}
  mkdir -p "$WORK/model/$i"
  for f in "$(dirname "$M")/$NAME"* "$(dirname "$M")/$STEM.json"; do
    [ -f "$f" ] && cp "$f" "$WORK/model/$i/"
  done
  case $NAME in *.onnx) NEED_ONNX=1 ;; esac
done
say "models: ${#MODELS[@]} (${MODELS[*]})"

# -- 4. the project's wheel and the aarch64 engine wheels ------------------------------------------
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/wheels" "$REPO" > "$WORK/wheel.log" 2>&1 \
  || "$PY" -m pip wheel -q --no-deps -w "$WORK/wheels" "$REPO" > "$WORK/wheel.log" 2>&1 \
  || skip "cannot build the project's wheel on the host ($(tail -n1 "$WORK/wheel.log"))"
WHEEL=$(basename "$(ls "$WORK"/wheels/leukedge-*.whl | head -n1)")
host_version() { "$PY" -c 'import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass' "$1"; }
LITERT=$(host_version ai-edge-litert)
say "installing $WHEEL and ai-edge-litert==$LITERT (aarch64) in the arm64 userland"
[ -x "$ROOTFS$VENV/bin/python" ] || arm python3 -m venv "$VENV"
arm "$VENV/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "/opt/pi-check/wheels/$WHEEL" \
  > "$WORK/pip.log" 2>&1 || skip "pip install of the wheel failed in the arm64 userland ($(tail -n1 "$WORK/pip.log"))"
T_PIP=$SECONDS
arm "$VENV/bin/pip" install -q --disable-pip-version-check "/opt/pi-check/wheels/$WHEEL" "ai-edge-litert==$LITERT" \
  > "$WORK/pip.log" 2>&1 || skip "pip install of the dependencies (PyPI) failed in the arm64 userland ($(tail -n1 "$WORK/pip.log"))"
# Engines for .onnx models: the host's versions, so both sides run the same engine release. One that
# does not install (no aarch64 wheel for this Python, glibc too old) is reported and left out.
HOST_ENGINES="litert"
ARM_ENGINES="litert"
if [ $NEED_ONNX = 1 ]; then
  for pair in onnxruntime:onnxruntime openvino:openvino; do
    dist=${pair%%:*}; engine=${pair##*:}
    v=$(host_version "$dist")
    if [ -z "$v" ]; then
      say "not checked: $engine (not installed on this host: pip install 'leukedge[${engine/onnxruntime/onnx}]')"
      continue
    fi
    HOST_ENGINES="$HOST_ENGINES $engine"
    if arm "$VENV/bin/pip" install -q --disable-pip-version-check "$dist==$v" > "$WORK/pip-$engine.log" 2>&1; then
      ARM_ENGINES="$ARM_ENGINES $engine"
    else
      say "not checked: $engine on aarch64 ($dist==$v did not install: $(tail -n1 "$WORK/pip-$engine.log"))"
    fi
  done
fi
say "installed in $((SECONDS - T_PIP)) s: $(arm "$VENV/bin/pip" list 2>/dev/null | grep -i -E '^(ai-edge-litert|onnxruntime|openvino|numpy|pillow|cryptography) ' | tr -s ' ' | paste -sd, -)"

# a golden set for each copy whose card has none (the user's model folders are never written)
"$PY" - "$WORK"/model/*/*.tflite "$WORK"/model/*/*.onnx <<'EOF'
import sys
from pathlib import Path
from leukedge.edge.card import card_path_for, find_card_for
from leukedge.edge.classifier import Classifier
for m in sys.argv[1:]:
    if not Path(m).is_file():
        continue  # an unmatched glob
    clf = Classifier.load(m)
    if not clf.card.golden:
        from leukedge.optimize.golden import make_golden
        clf.card.golden = make_golden(clf)
        old = find_card_for(m)
        clf.card.save(card_path_for(m))
        if old != card_path_for(m):
            old.unlink()
        print(f"pi-check: {Path(m).name}: the card had no golden set; made one for the copy "
              f"({clf.card.golden['n']} inputs, {clf.card.golden['positives']} positive)")
EOF

DATA=$REPO/../shared/data
N_IMAGES=${LEUKEDGE_PI_IMAGES:-8}
if [ -d "$DATA" ] && [ -n "$(find "$DATA" -type f \( -iname '*.bmp' -o -iname '*.jpg' -o -iname '*.png' \) -print -quit)" ]; then
  SOURCE="real images from $DATA"
  # the same few images every run: evenly spaced through each dataset's sorted file list
  "$PY" - "$DATA" "$WORK/images" "$N_IMAGES" <<'EOF'
import shutil, sys
from pathlib import Path
data, dest, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
sets = [d for d in sorted(data.iterdir()) if d.is_dir()]
for d in sets:
    files = sorted(p for p in d.rglob("*") if p.suffix.lower() in (".bmp", ".jpg", ".jpeg", ".png"))
    k = max(1, n // len(sets))
    for p in (files[int(i * len(files) / k)] for i in range(min(k, len(files)))):
        shutil.copy(p, dest / "_".join(p.relative_to(data).parts))
EOF
else
  SOURCE="generated synthetic cells (no ../shared/data here)"
  "$PY" -m leukedge.cli data synth "$WORK/synth" --train-images 12 --val-images 2 --size 128 >/dev/null
  find "$WORK/synth" -type f -iname '*.bmp' | sort | head -n "$N_IMAGES" | while read -r f; do cp "$f" "$WORK/images/"; done
fi
say "images: $(ls "$WORK/images" | wc -l) ($SOURCE)"

# -- 5. run on both machines -------------------------------------------------------------------------
# One run = one model with one engine, one thread: the golden-set self-test and P(positive) of every image.
PROBE='
import json, platform, sys, time
from pathlib import Path
from leukedge.edge.load_engine import load_classifier
from leukedge.edge.selftest import output_quantization, self_test
model, images, engine = sys.argv[1], sorted(Path(sys.argv[2]).iterdir()), sys.argv[3]
clf = load_classifier(model, engine=engine, threads=1)
kind, scale = output_quantization(clf)
st = self_test(clf)
t = time.perf_counter()
preds = {p.name: clf.predict_one(p) for p in images}
per_image = (time.perf_counter() - t) / max(1, len(images))
print(json.dumps({"machine": platform.machine(), "engine": engine, "runtime": f"{clf.runtime.name} {clf.runtime.version}",
                  "format": clf.card.model_format, "qdq": bool((clf.card.onnx or {}).get("quantization")),
                  "output": clf.card.output, "output_kind": kind, "output_scale": scale, "self_test": st.to_dict(),
                  "p": {k: (v.p_all if v.ok else None) for k, v in preds.items()},
                  "label": {k: (v.label if v.ok else None) for k, v in preds.items()},
                  "errors": {k: v.error for k, v in preds.items() if not v.ok}, "s_per_image": per_image}))
'
engines_for() { case $1 in *.tflite) echo litert ;; *.onnx) echo onnxruntime openvino ;; esac; }
has() { case " $1 " in *" $2 "*) return 0 ;; esac; return 1; }
RUNS=()   # "i engine" pairs measured on x86_64
for i in "${!MODELS[@]}"; do
  NAME=$(basename "${MODELS[$i]}")
  for engine in $(engines_for "$NAME"); do
    has "$HOST_ENGINES" "$engine" || continue
    say "x86_64: $NAME on $engine"
    "$PY" -c "$PROBE" "$WORK/model/$i/$NAME" "$WORK/images" "$engine" > "$WORK/x86_64-$i-$engine.json" \
      2> "$WORK/x86_64-$i-$engine.err" || { tail -n 5 "$WORK/x86_64-$i-$engine.err" >&2; echo "pi-check: FAILED: $NAME on $engine did not run on x86_64"; exit 1; }
    RUNS+=("$i $engine")
  done
done

# QEMU user mode passes /proc/cpuinfo through from the x86_64 host, and LiteRT's CPU detection
# (the cpuinfo library) crashes on it (SIGSEGV in Interpreter()); a Pi's own cpuinfo is bound over it.
# Each emulated core is given with its ISA (QEMU_CPU), so each engine picks the kernels it would pick on
# that Pi: Cortex-A72 = Raspberry Pi 4 (ARMv8.0), Cortex-A76 = Raspberry Pi 5 (ARMv8.2, dot product).
fake_cpuinfo() {  # $1 = cortex-a72 | cortex-a76
  local part feats hw model i
  case $1 in
    cortex-a76) part=0xd0b; hw=BCM2712; model="Raspberry Pi 5 Model B"
      feats="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;
    *) part=0xd08; hw=BCM2835; model="Raspberry Pi 4 Model B"; feats="fp asimd evtstrm crc32 cpuid" ;;
  esac
  for i in 0 1 2 3; do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\n' "$i" "$feats"
    printf 'CPU variant\t: 0x%s\nCPU part\t: %s\nCPU revision\t: 1\n\n' "$([ "$1" = cortex-a76 ] && echo 4 || echo 0)" "$part"
  done
  printf 'Hardware\t: %s\nModel\t\t: %s (emulated)\n' "$hw" "$model"
}
SELFTEST_RC=0
RESULTS=()   # "cpu i engine path" of every aarch64 run
for CPU in ${LEUKEDGE_PI_CPUS:-cortex-a72 cortex-a76}; do
  fake_cpuinfo "$CPU" > "$WORK/cpuinfo-$CPU"
  mount --bind "$WORK/cpuinfo-$CPU" "$ROOTFS/proc/cpuinfo" || skip "cannot bind a Pi's /proc/cpuinfo into the chroot"
  for run in "${RUNS[@]}"; do
    i=${run%% *}; engine=${run#* }
    NAME=$(basename "${MODELS[$i]}")
    if ! has "$ARM_ENGINES" "$engine"; then
      continue
    fi
    # the device command itself, for the models whose self-test rule holds across architectures (not QDQ .onnx)
    if [ "$engine" = litert ] && arm "$VENV/bin/edge-classify" --help 2>/dev/null | grep -q -- '--self-test'; then
      say "aarch64 $CPU (emulated): edge-classify --self-test --model $NAME"
      arm QEMU_CPU="$CPU" "$VENV/bin/edge-classify" --self-test --model "/opt/pi-check/model/$i/$NAME" || SELFTEST_RC=$?
    fi
    say "aarch64 $CPU (emulated): $NAME on $engine: self-test and images"
    OUT="$WORK/aarch64-$CPU-$i-$engine.json"
    if ! arm QEMU_CPU="$CPU" "$VENV/bin/python" -c "$PROBE" "/opt/pi-check/model/$i/$NAME" /opt/pi-check/images "$engine" \
        > "$OUT" 2> "${OUT%.json}.err"; then
      umount "$ROOTFS/proc/cpuinfo"
      tail -n 5 "${OUT%.json}.err" >&2
      echo "pi-check: FAILED: $NAME on $engine did not run on aarch64 ($CPU)"
      exit 1
    fi
    RESULTS+=("$CPU $i $engine $OUT")
  done
  umount "$ROOTFS/proc/cpuinfo"
done

"$PY" - "$WORK" "$MAX_STEPS" "$QDQ_MAX_DP" "$SELFTEST_RC" "$((SECONDS - T0))" "$ARM_ENGINES" "${RESULTS[@]}" <<'EOF'
import json, sys
from pathlib import Path
work, max_steps, qdq_max_dp, selftest_rc, secs, arm_engines = (Path(sys.argv[1]), float(sys.argv[2]),
                                                              float(sys.argv[3]), int(sys.argv[4]), sys.argv[5],
                                                              sys.argv[6].split())
runs = {}  # (i, engine) -> {cpu: result}
for spec in sys.argv[7:]:
    cpu, i, engine, path = spec.split(" ", 3)
    runs.setdefault((i, engine), {})[cpu] = json.load(open(path))
ok = selftest_rc == 0
checked = 0
for x_path in sorted(work.glob("x86_64-*.json")):
    _, i, engine = x_path.stem.split("-", 2)
    x = json.loads(x_path.read_text())
    model = next((work / "model" / i).glob("*.tflite"), None) or next((work / "model" / i).glob("*.onnx"))
    arms = runs.get((i, engine), {})
    print(f"\npi-check: {model.name} on {engine}: {x['output']} output, {x['output_kind']}"
          + (f", step {x['output_scale']:g}" if x["output_kind"] == "integer" else "")
          + (", QDQ int8 inside" if x["qdq"] else ""))
    if not arms:
        print(f"pi-check: NOT CHECKED on aarch64: {engine} is not installed there")
        continue
    checked += 1
    scale = x["output_scale"] if x["output_kind"] == "integer" else None
    in_steps = scale is not None and x["output"] == "probabilities"  # P is the output itself: compare in its steps
    print(f"pi-check: x86_64 {x['runtime']} | aarch64 {next(iter(arms.values()))['runtime']} (QEMU user emulation)")
    cols = list(arms)
    print(f"{'image':52s} {'P x86_64':>9s} " + " ".join(f"{'P ' + c:>16s} {'steps' if in_steps else '|dP|':>7s}" for c in cols))
    worst, bad, flips = {c: 0.0 for c in cols}, [], {c: 0 for c in cols}
    for name, px in x["p"].items():
        row = f"{name[-52:]:52s} " + (f"{px:9.6f} " if px is not None else f"{'error':>9s} ")
        for c in cols:
            pa = arms[c]["p"].get(name)
            if px is None or pa is None:
                bad.append(f"{name} ({c}): {x['errors'].get(name) or arms[c]['errors'].get(name)}")
                row += f"{'error':>16s} {'':>7s} "
                continue
            d = abs(pa - px) / (scale if in_steps else 1.0)
            worst[c] = max(worst[c], d)
            flips[c] += arms[c]["label"].get(name) != x["label"].get(name)
            row += f"{pa:16.6f} " + (f"{d:7.1f} " if in_steps else f"{d:7.1e} ")
        print(row.rstrip())
    for b in bad:
        print(f"pi-check: error: {b}")
    ok &= not bad
    for m, label in [(x, "x86_64")] + [(arms[c], f"aarch64 {c}") for c in cols]:
        st = m["self_test"]
        if x["qdq"]:  # see the script's header: decisions must agree; the 1e-4 output rule is shown, not required
            passed = st.get("agreement") == 1.0 and (st.get("max_abs_delta_p") or 0.0) <= qdq_max_dp
            print(f"pi-check: self-test on {label}: {'passed' if passed else 'FAILED'} (QDQ rule: every golden decision "
                  f"agrees, |dP| <= {qdq_max_dp:g}; the 1e-4 output rule {'holds' if st['ok'] else 'does not'}): "
                  f"{st['message']}")
        else:
            passed = bool(st["ok"])
            print(f"pi-check: self-test on {label}: {'passed' if passed else 'FAILED'}: {st['message']}")
        ok &= passed
    if x["qdq"]:
        unit, limit = "|dP|", qdq_max_dp
    else:
        unit = "output quantization steps" if in_steps else "|dP|"
        limit = max_steps if in_steps else (1e-4 if scale is None else None)  # integer logits: the self-test judges
    for c in cols:
        print(f"pi-check: {c}: max |P(aarch64) - P(x86_64)| over {len(x['p'])} images: {worst[c]:.4g} {unit}, "
              f"{flips[c]} decision(s) differ; emulated {arms[c]['s_per_image']:.2f} s/image (QEMU, says nothing "
              "about a Pi's speed)")
        if limit is not None:
            ok &= worst[c] <= limit + 1e-9
        if x["qdq"]:
            ok &= flips[c] == 0
print(f"\npi-check: {'PASSED' if ok else 'FAILED'}: {checked} model/engine pair(s) checked on aarch64 "
      f"(engines there: {', '.join(arm_engines)}); total {secs} s")
sys.exit(0 if ok else 1)
EOF
