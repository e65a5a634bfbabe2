"""What machine and software a benchmark ran on: the device's machine record plus the workstation's packages.

The record itself (processor, instruction-set features, ISA caps, cores) is `leukedge.edge.machine`,
so that the device's chooser and every benchmark name a machine the same way.
"""

from __future__ import annotations

import sys

from leukedge.edge.machine import machine_record, parse_cpuinfo


def cpu_model() -> str:
    """The processor's model name ("model name" on x86, the ARM core from "CPU part"), else platform's guess."""
    return machine_record()["cpu"]


def machine_info(runtime=None) -> dict:
    """`leukedge.edge.machine.machine_record()` plus numpy, Pillow, the TFLite runtime and TensorFlow versions.

    runtime: an `edge.runtime.Runtime` (name, version) to record as "tflite_runtime", or None.
    """
    import numpy
    import PIL

    info = machine_record()
    info.update(numpy=numpy.__version__, pillow=PIL.__version__)
    if runtime is not None:
        info["tflite_runtime"] = f"{runtime.name} {runtime.version}"
    if "tensorflow" in sys.modules:
        info["tensorflow"] = sys.modules["tensorflow"].__version__
    return info


class AmxError(RuntimeError):
    """AMX could not be withheld: not Linux x86_64, or the kernel refused the seccomp filter."""


# arch_prctl's request for the AMX tile-data state (Linux >= 5.16, arch/x86/include/uapi/asm/prctl.h).
ARCH_REQ_XCOMP_PERM = 0x1023
_SYS_ARCH_PRCTL_X86_64 = 158
_AUDIT_ARCH_X86_64 = 0xC000003E


def withhold_amx() -> None:
    """Refuse this process (and the threads and children it starts from now on) the AMX tile state.

    Linux makes a process ask for AMX with arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) before it may use
    it; XNNPACK (LiteRT's CPU delegate) and oneDNN (TensorFlow, OpenVINO) ask once, and use their
    AVX-512 VNNI kernels when the answer is no. A seccomp filter makes that one request fail with
    EPERM and lets every other system call through, so the same machine measures the AVX-512 VNNI
    processor class (Cascade Lake, Ice Lake) beside its own. Call it before any engine is loaded;
    it cannot be undone. A benchmark run under it must say so (slim_speed records "amx_withheld").
    Raises AmxError off Linux x86_64 or when prctl fails.
    """
    import ctypes
    import platform

    if sys.platform != "linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        raise AmxError(f"withholding AMX needs Linux on x86_64, not {sys.platform} {platform.machine()}")

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    ld_w_abs, jeq_k, ret_k = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
    allow, refuse = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    # struct seccomp_data: nr at 0, arch at 4, args[0] at 16 (its low 32 bits on little-endian)
    program = [(ld_w_abs, 0, 0, 4), (jeq_k, 0, 5, _AUDIT_ARCH_X86_64),
               (ld_w_abs, 0, 0, 0), (jeq_k, 0, 3, _SYS_ARCH_PRCTL_X86_64),
               (ld_w_abs, 0, 0, 16), (jeq_k, 0, 1, ARCH_REQ_XCOMP_PERM),
               (ret_k, 0, 0, refuse), (ret_k, 0, 0, allow)]
    filters = (SockFilter * len(program))(*[SockFilter(*insn) for insn in program])
    prog = SockFprog(len(program), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0 or \
            libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(prog), 0, 0) != 0:
        raise AmxError(f"prctl refused the seccomp filter: errno {ctypes.get_errno()}")


__all__ = ["AmxError", "cpu_model", "machine_info", "machine_record", "parse_cpuinfo", "withhold_amx"]
