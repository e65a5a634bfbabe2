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


__all__ = ["cpu_model", "machine_info", "machine_record", "parse_cpuinfo"]
