"""The machine a latency was measured on: processor, instruction-set features, engines, threads.

A speed figure means little without its machine. A VM's "model name" is often a generic string
("Intel(R) Xeon(R) Processor"), so the record keeps what decides which kernels an engine picks:
the instruction-set flags from `/proc/cpuinfo` that matter for int8 and float inference.

- x86_64: AVX2 and FMA (the baseline of every engine's fast path), AVX-512 (F, BW, VL), the int8
  dot-product instructions VNNI (AVX512_VNNI on Cascade Lake and later Xeons, AVX_VNNI on Alder Lake
  and later cores), AMX (AMX_INT8, AMX_BF16: Sapphire Rapids), AVX512_BF16, AVX512_FP16.
  Without VNNI an int8 convolution multiplies u8 x s8 pairs with VPMADDUBSW (a 16-bit intermediate
  that can saturate), which is why engines differ most there.
- aarch64: NEON (`asimd`), the dot-product instructions (`asimddp`, ARMv8.2: Cortex-A76/Pi 5, not
  Cortex-A72/Pi 4), int8 matrix multiply (`i8mm`, ARMv8.6), half-precision arithmetic (`asimdhp`).

Also records the environment variables that cap an engine's instruction set (oneDNN's
ONEDNN_MAX_CPU_ISA, read by OpenVINO's CPU plugin; OV_CPU_MAX_ISA), because a figure measured
under such a cap is not the machine's native figure.

Device-side: standard library only (no numpy), so `edge-classify` and the chooser can import it.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

# (name in the record, flag as /proc/cpuinfo spells it), in the order a reader wants them.
X86_FLAGS = (("avx2", "avx2"), ("fma", "fma"), ("avx512f", "avx512f"), ("avx512bw", "avx512bw"),
             ("avx512vl", "avx512vl"), ("avx512_vnni", "avx512_vnni"), ("avx_vnni", "avx_vnni"),
             ("avx512_bf16", "avx512_bf16"), ("avx512_fp16", "avx512_fp16"), ("amx_int8", "amx_int8"),
             ("amx_bf16", "amx_bf16"))
ARM_FLAGS = (("neon", "asimd"), ("dotprod", "asimddp"), ("i8mm", "i8mm"), ("fp16", "asimdhp"), ("sve", "sve"),
             ("bf16", "bf16"))
# Environment variables that cap the instruction set an engine dispatches to (see the module docstring).
ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "OV_CPU_MAX_ISA")
# ARM "CPU part" numbers (implementer 0x41, Arm Ltd.) of the cores leukedge's devices use.
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
             "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
             "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78", "0xd42": "Cortex-A78AE",
             "0xd4f": "Neoverse-V2", "0xd40": "Neoverse-V1", "0xd49": "Neoverse-N2"}


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def parse_cpuinfo(text: str) -> dict:
    """The facts of a `/proc/cpuinfo` text: {"model", "flags" (set of str), "vendor", "arm_part", "board"}.

    model: "model name" (x86), else the ARM core named from "CPU part" (e.g. "Cortex-A72"), else "".
    flags: the first processor's "flags" (x86) or "Features" (ARM) line. board: the "Model" line a
    Raspberry Pi's kernel adds (e.g. "Raspberry Pi 4 Model B Rev 1.4"), else "".
    """
    facts: dict = {"model": "", "flags": set(), "vendor": "", "arm_part": "", "board": ""}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "model name" and not facts["model"]:
            facts["model"] = value
        elif key in ("flags", "Features") and not facts["flags"]:
            facts["flags"] = set(value.split())
        elif key == "vendor_id" and not facts["vendor"]:
            facts["vendor"] = value
        elif key == "CPU part" and not facts["arm_part"]:
            facts["arm_part"] = value.lower()
        elif key == "Model" and not facts["board"]:
            facts["board"] = value
    if not facts["model"] and facts["arm_part"]:
        facts["model"] = ARM_PARTS.get(facts["arm_part"], f"ARM core part {facts['arm_part']}")
    return facts


def isa_features(flags: set[str], machine: str) -> dict[str, bool]:
    """{feature: present} for the architecture's inference-relevant flags (X86_FLAGS or ARM_FLAGS).

    machine: platform.machine() ("x86_64", "AMD64", "aarch64", "arm64"); any other returns {}.
    """
    m = machine.lower()
    table = X86_FLAGS if m in ("x86_64", "amd64", "i686") else ARM_FLAGS if m in ("aarch64", "arm64") else ()
    return {name: flag in flags for name, flag in table}


def isa_summary(features: dict[str, bool], caps: dict[str, str] | None = None) -> str:
    """A short line for a report: the best int8 path present, e.g. "AVX-512 VNNI + AMX" or "AVX2, no VNNI".

    caps: the ISA-cap variables in force (isa_caps()); they are appended, e.g. "(capped: ONEDNN_MAX_CPU_ISA=AVX2)".
    """
    f = features
    if "avx2" in f:
        parts = ["AVX-512" if f.get("avx512f") else "AVX2" if f.get("avx2") else "no AVX2"]
        vnni = f.get("avx512_vnni") or f.get("avx_vnni")
        parts.append("VNNI" if vnni else "no VNNI")
        if f.get("amx_int8"):
            parts.append("AMX")
        text = " ".join(parts[:1]) + ", " + ", ".join(parts[1:])
    elif "neon" in f:
        text = ", ".join(["NEON" if f.get("neon") else "no NEON", "dotprod" if f.get("dotprod") else "no dotprod",
                          "i8mm" if f.get("i8mm") else "no i8mm"])
    else:
        text = "unknown ISA"
    if caps:
        text += " (capped: " + ", ".join(f"{k}={v}" for k, v in caps.items()) + ")"
    return text


# Output-channel tile of the int8 convolution kernel XNNPACK (LiteRT's CPU delegate) picks on each
# processor class: a convolution costs by whole tiles of output channels, so channel pruning only
# saves time where a layer's filter count drops past a multiple of the tile. Measured on Intel Xeon
# (Sapphire Rapids), ai-edge-litert 2.3, one 3x3 int8 conv on 111x111x32: with AMX
# (xnn_qs8_qc8w_igemm_..._16x64c4__avx512amx) the time is flat from 8 to 64 filters, one step higher from
# 80 to 128 and another at 192; with AMX withheld (..._7x16c8__avx512vnni) it steps every 16 filters
# (the tile probes in benchmarks/results/slim-speed.md and slim-speed-no-amx.md). AVX2 and
# Arm entries follow the kernels XNNPACK's gemm config selects for them (4x8c8 AVX2; 2x8c8 NEON
# mlal on Cortex-A72, Pi 4; 4x16c4 NEON dot-product on Cortex-A76, Pi 5), not measured here.
INT8_CHANNEL_TILES = (("amx_int8", 64), ("avx512_vnni", 16), ("avx512bw", 16), ("dotprod", 16), ("i8mm", 16))
DEFAULT_INT8_CHANNEL_TILE = 8  # AVX2, AVX-VNNI, NEON without the dot-product instructions


def int8_channel_tile(features: dict[str, bool] | None = None) -> int:
    """Output channels per tile of XNNPACK's int8 convolution on a processor with `features`.

    features: isa_features() of the processor (None: this machine's, from machine_record()).
    Returns 64 (AMX), 16 (AVX-512, Arm dot-product or i8mm) or 8 (AVX2, plain NEON, anything else):
    the first match in INT8_CHANNEL_TILES (where the figures come from: see there). Never raises.
    """
    f = machine_record()["isa"] if features is None else features
    for flag, tile in INT8_CHANNEL_TILES:
        if f.get(flag):
            return tile
    return DEFAULT_INT8_CHANNEL_TILE


def isa_caps(environ: dict | None = None) -> dict[str, str]:
    """The ISA-cap variables set in the environment ({} when none): a figure measured under them is not native."""
    env = os.environ if environ is None else environ
    return {k: env[k] for k in ISA_CAP_VARIABLES if env.get(k)}


def usable_cores() -> int:
    """Cores this process may run on (sched_getaffinity, so a container's CPU set counts), >= 1."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_record(engine: str | None = None, engine_version: str | None = None, threads: int | None = None,
                   cpuinfo_text: str | None = None) -> dict:
    """The record every latency carries.

    engine, engine_version, threads: what ran (None leaves them out; a report with several engines
    puts them in each row instead). cpuinfo_text: a /proc/cpuinfo text to describe instead of this
    machine's (tests, or a record of another machine).
    Returns {"cpu", "board", "machine", "isa": {feature: bool}, "isa_summary", "isa_caps", "cores",
    "usable_cores", "os", "python", ["engine", "engine_version", "threads"]}. Never raises.
    """
    facts = parse_cpuinfo(_read("/proc/cpuinfo") if cpuinfo_text is None else cpuinfo_text)
    machine = platform.machine()
    features = isa_features(facts["flags"], machine)
    caps = isa_caps()
    record = {
        "cpu": facts["model"] or platform.processor() or machine,
        "board": facts["board"] or _read("/proc/device-tree/model").rstrip("\0").strip(),
        "machine": machine,
        "isa": features,
        "isa_summary": isa_summary(features, caps),
        "isa_caps": caps,
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
    }
    if engine is not None:
        record["engine"] = engine
    if engine_version is not None:
        record["engine_version"] = str(engine_version)
    if threads is not None:
        record["threads"] = int(threads)
    return record


def machine_line(record: dict | None = None) -> str:
    """One line naming the machine, e.g. "Intel(R) Xeon(R) Processor, x86_64, AVX-512, VNNI, AMX, 2 cores"."""
    r = record or machine_record()
    line = f"{r['cpu']}, {r['machine']}, {r['isa_summary']}, {r['usable_cores']} usable cores"
    if r.get("engine"):
        line += f"; {r['engine']} {r.get('engine_version', '')}".rstrip()
    if r.get("threads"):
        line += f", {r['threads']} thread{'s' if r['threads'] != 1 else ''}"
    return line
