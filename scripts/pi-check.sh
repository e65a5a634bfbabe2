#!/usr/bin/env bash
# aarch64 proof: the project's wheel, the aarch64 LiteRT wheel and the model's numbers on arm64 Linux.
#
#   sudo scripts/pi-check.sh [MODEL]     MODEL: a .tflite with its card [default: runs/ci/opt/int8.tflite,
#                                        else a tiny int8 model built here from tests/helpers.py]
#
# Builds (once; cached in $LEUKEDGE_ARM64_ROOTFS, default ~/.cache/leukedge/arm64-rootfs) an arm64
# Debian 12 userland with debootstrap, runs it under QEMU user emulation (qemu-user-static's binfmt
# handler, registered here as root), installs the wheel built from this checkout plus the aarch64
# ai-edge-litert wheel from PyPI (same version as on this host), runs the golden-set self-test and a
# few images on two emulated cores, Cortex-A72 (Raspberry Pi 4) and Cortex-A76 (Raspberry Pi 5), and
# prints P(positive) on x86_64 and on each side by side with the largest difference in output
# quantization steps. Environment: LEUKEDGE_PI_CPUS (default "cortex-a72 cortex-a76"),
# LEUKEDGE_PI_IMAGES (8), LEUKEDGE_PI_MAX_STEPS (2), LEUKEDGE_ARM64_ROOTFS, LEUKEDGE_DEBIAN_MIRROR.
#
# What it proves: the wheel installs and runs on aarch64 (Python 3.11, Debian 12 = Raspberry Pi OS
# bookworm's base), the aarch64 LiteRT runtime loads the model, and the aarch64 kernels XNNPACK picks
# for each core's instruction set reproduce the workstation's numbers (golden set, real images)
# within the stated steps. QEMU executes the aarch64 instructions exactly; rounding is the kernels'.
# What it cannot prove: speed or memory on a real Pi (QEMU emulates the instructions, not the Pi's
# cores, caches or memory bandwidth), nor camera/OS/thermal behaviour.
#
# Needs root, Debian's mirror and PyPI. When the machine refuses (not root, no binfmt_misc, no
# debootstrap, no network), it prints one "pi-check: skipped: ..." line and exits 0, so CI never
# fails on the environment; it exits 1 only when aarch64 disagrees with x86_64 or the self-test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
MODEL=${1:-}
ROOTFS=${LEUKEDGE_ARM64_ROOTFS:-$HOME/.cache/leukedge/arm64-rootfs}
MIRROR=${LEUKEDGE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PY=${PYTHON:-$REPO/.venv/bin/python}
MAX_STEPS=${LEUKEDGE_PI_MAX_STEPS:-2}   # allowed |dP| between x86_64 and aarch64, in output quantization steps
T0=$SECONDS

skip() { echo "pi-check: skipped: $*"; exit 0; }
say() { echo "pi-check: $*"; }

[ "$(uname -m)" = x86_64 ] || skip "host is $(uname -m); this check emulates aarch64 on an x86_64 host"
[ "$(id -u)" = 0 ] || skip "needs root (binfmt registration, debootstrap, chroot); run: sudo $0 ${MODEL}"
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

# -- 3. the project's wheel and the aarch64 LiteRT wheel -----------------------------------------
WORK="$ROOTFS/opt/pi-check"
rm -rf "$WORK"
mkdir -p "$WORK/wheels" "$WORK/model" "$WORK/images"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/wheels" "$REPO" > "$WORK/wheel.log" 2>&1 \
  || "$PY" -m pip wheel -q --no-deps -w "$WORK/wheels" "$REPO" > "$WORK/wheel.log" 2>&1 \
  || skip "cannot build the project's wheel on the host ($(tail -n1 "$WORK/wheel.log"))"
WHEEL=$(basename "$(ls "$WORK"/wheels/leukedge-*.whl | head -n1)")
LITERT=$("$PY" -c 'import importlib.metadata as m; print(m.version("ai-edge-litert"))')
say "installing $WHEEL and ai-edge-litert==$LITERT (aarch64) in the arm64 userland"
[ -x "$ROOTFS$VENV/bin/python" ] || arm python3 -m venv "$VENV"
arm "$VENV/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "/opt/pi-check/wheels/$WHEEL" \
  > "$WORK/pip.log" 2>&1 || skip "pip install of the wheel failed in the arm64 userland ($(tail -n1 "$WORK/pip.log"))"
T_PIP=$SECONDS
arm "$VENV/bin/pip" install -q --disable-pip-version-check "/opt/pi-check/wheels/$WHEEL" "ai-edge-litert==$LITERT" \
  > "$WORK/pip.log" 2>&1 || skip "pip install of the dependencies (PyPI) failed in the arm64 userland ($(tail -n1 "$WORK/pip.log"))"
say "installed in $((SECONDS - T_PIP)) s: $(arm "$VENV/bin/pip" list 2>/dev/null | grep -i -E '^(ai-edge-litert|numpy|pillow|cryptography) ' | tr -s ' ' | paste -sd, -)"

# -- 4. model, golden set, images -------------------------------------------------------------------
if [ -z "$MODEL" ] && [ -e runs/ci/opt/int8.tflite ]; then MODEL=runs/ci/opt/int8.tflite; fi
if [ -z "$MODEL" ]; then
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
  MODEL="$TINY/int8.tflite"
fi
[ -f "$MODEL" ] || skip "model $MODEL not found"
NAME=$(basename "$MODEL")
STEM=${NAME%.*}
for f in "$(dirname "$MODEL")/$NAME"*  "$(dirname "$MODEL")/$STEM.json"; do
  [ -f "$f" ] && cp "$f" "$WORK/model/"
done
M="$WORK/model/$NAME"

# a golden set for this copy when the card has none (the user's model folder is never written)
"$PY" - "$M" <<'EOF'
import json, sys
from leukedge.edge.card import card_path_for, find_card_for, load_card
from leukedge.edge.classifier import Classifier
clf = Classifier.load(sys.argv[1])
if not clf.card.golden:
    from leukedge.optimize.golden import make_golden
    clf.card.golden = make_golden(clf)
    old = find_card_for(sys.argv[1])
    clf.card.save(card_path_for(sys.argv[1]))
    if old != card_path_for(sys.argv[1]):
        old.unlink()
    print(f"pi-check: the card had no golden set; made one for the copy ({clf.card.golden['n']} inputs, "
          f"{clf.card.golden['positives']} positive)")
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
PROBE='
import json, platform, sys, time
from pathlib import Path
import numpy as np
from leukedge.edge.classifier import Classifier
from leukedge.edge.selftest import output_quantization, self_test
model, images = sys.argv[1], sorted(Path(sys.argv[2]).iterdir())
clf = Classifier.load(model, threads=1)
kind, scale = output_quantization(clf)
st = self_test(clf)
t = time.perf_counter()
preds = {p.name: clf.predict_one(p) for p in images}
per_image = (time.perf_counter() - t) / max(1, len(images))
print(json.dumps({"machine": platform.machine(), "runtime": f"{clf.runtime.name} {clf.runtime.version}",
                  "output": clf.card.output, "output_kind": kind, "output_scale": scale, "self_test": st.to_dict(),
                  "p": {k: (v.p_all if v.ok else None) for k, v in preds.items()},
                  "errors": {k: v.error for k, v in preds.items() if not v.ok}, "s_per_image": per_image}))
'
say "x86_64: running"
"$PY" -c "$PROBE" "$M" "$WORK/images" > "$WORK/x86_64.json" 2> "$WORK/x86_64.err" || { cat "$WORK/x86_64.err" >&2; exit 1; }

# QEMU user mode passes /proc/cpuinfo through from the x86_64 host, and LiteRT's CPU detection
# (the cpuinfo library) crashes on it (SIGSEGV in Interpreter()); a Pi's own cpuinfo is bound over it.
# Each emulated core is given with its ISA (QEMU_CPU), so XNNPACK picks the kernels it would pick on
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
RESULTS=()
for CPU in ${LEUKEDGE_PI_CPUS:-cortex-a72 cortex-a76}; do
  fake_cpuinfo "$CPU" > "$WORK/cpuinfo-$CPU"
  mount --bind "$WORK/cpuinfo-$CPU" "$ROOTFS/proc/cpuinfo" || skip "cannot bind a Pi's /proc/cpuinfo into the chroot"
  if arm "$VENV/bin/edge-classify" --help 2>/dev/null | grep -q -- '--self-test'; then
    say "aarch64 $CPU (emulated): edge-classify --self-test --model $NAME"
    arm QEMU_CPU="$CPU" "$VENV/bin/edge-classify" --self-test --model "/opt/pi-check/model/$NAME" || SELFTEST_RC=$?
  fi
  say "aarch64 $CPU (emulated): self-test and images"
  if ! arm QEMU_CPU="$CPU" "$VENV/bin/python" -c "$PROBE" "/opt/pi-check/model/$NAME" /opt/pi-check/images \
      > "$WORK/aarch64-$CPU.json" 2> "$WORK/aarch64-$CPU.err"; then
    umount "$ROOTFS/proc/cpuinfo"
    tail -n 5 "$WORK/aarch64-$CPU.err" >&2
    echo "pi-check: FAILED: the probe did not run on aarch64 ($CPU)"
    exit 1
  fi
  umount "$ROOTFS/proc/cpuinfo"
  RESULTS+=("$CPU=$WORK/aarch64-$CPU.json")
done

"$PY" - "$WORK/x86_64.json" "$MAX_STEPS" "$SELFTEST_RC" "$M" "$((SECONDS - T0))" "${RESULTS[@]}" <<'EOF'
import json, sys
x = json.load(open(sys.argv[1]))
max_steps, selftest_rc, model, secs = float(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
arms = {spec.split("=", 1)[0]: json.load(open(spec.split("=", 1)[1])) for spec in sys.argv[6:]}
scale = x["output_scale"] if x["output_kind"] == "integer" else None
in_steps = scale is not None and x["output"] == "probabilities"  # P is the output itself: compare in its steps
print(f"pi-check: model {model}: {x['output']} output, {x['output_kind']}" + (f", step {scale:g}" if scale else ""))
print(f"pi-check: x86_64 {x['runtime']} | aarch64 {next(iter(arms.values()))['runtime']} (QEMU user emulation)")
cols = list(arms)
print(f"{'image':52s} {'P x86_64':>9s} " + " ".join(f"{'P ' + c:>16s} {'steps' if in_steps else '|dP|':>7s}" for c in cols))
worst, bad = {c: 0.0 for c in cols}, []
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
        row += f"{pa:16.6f} " + (f"{d:7.1f} " if in_steps else f"{d:7.1e} ")
    print(row.rstrip())
for b in bad:
    print(f"pi-check: error: {b}")
ok = not bad and selftest_rc == 0
for m, label in [(x, "x86_64")] + [(arms[c], f"aarch64 {c}") for c in cols]:
    st = m["self_test"]
    ok &= bool(st["ok"])
    print(f"pi-check: self-test on {label}: {'passed' if st['ok'] else 'FAILED'}: {st['message']}")
unit = "output quantization steps" if in_steps else "|dP|"
limit = max_steps if in_steps else (1e-4 if scale is None else None)  # logit models: the self-test is the judge
for c in cols:
    print(f"pi-check: {c}: max |P(aarch64) - P(x86_64)| over {len(x['p'])} images: {worst[c]:.4g} {unit}; "
          f"emulated {arms[c]['s_per_image']:.2f} s/image (QEMU, says nothing about a Pi's speed)")
    if limit is not None:
        ok &= worst[c] <= limit + 1e-9
print(f"pi-check: {'PASSED' if ok else 'FAILED'}" + (f" (limit {limit:g} {unit})" if limit is not None else "")
      + f"; total {secs} s")
sys.exit(0 if ok else 1)
EOF
