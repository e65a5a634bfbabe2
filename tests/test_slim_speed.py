"""The slim speed benchmark's pieces that need no timing: its rows, its report, and withholding AMX."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from leukedge.benchmarks import slim_speed


def test_tile_rows_are_planned_for_the_tile_and_named_after_it():
    rows = slim_speed.variants_for(16)
    tiled = [r for r in rows if len(r) > 4]
    assert [r[0] for r in tiled] == ["slim60-int8.t16", "slim50-int8.t16", "slim60-int8@160.t16", "slim50-int8@160.t16"]
    assert all(r[4] == 16 for r in tiled)
    assert slim_speed.variants_for(8) == slim_speed.BASE_VARIANTS  # the portable rounding already is an 8 tile
    assert slim_speed.DEFAULT_VARIANTS[0][0] == "int8"  # the baseline comes first


def _row(name, tile, px, macs, ms1, ms2):
    return {"variant": name, "tile": tile, "input_size": px, "macs": macs, "params": 1e6, "bytes": 1e6,
            "macs_kept": 1.0 if name == "int8" else 0.5, "runtime": "ai-edge-litert 2.3.0",
            "ms_1t": {"median": ms1, "q1": ms1, "q3": ms1, "ns_per_mac": ms1 * 1e6 / macs},
            "ms_2t": {"median": ms2, "q1": ms2, "q3": ms2, "ns_per_mac": ms2 * 1e6 / macs}}


def test_the_report_names_the_tile_and_a_withheld_amx():
    rows = [_row("int8", 0, 224, 2.8e9, 6.0, 4.0), _row("slim50-int8.t16", 16, 224, 1.2e9, 3.0, 2.0)]
    slim_speed.summarize(rows, [1, 2])
    result = {"machine": {"cpu": "Test CPU", "usable_cores": 2}, "cpu_flags": ["avx512_vnni"], "rows": rows,
              "threads": [1, 2], "runs": 30, "when": "2026-12-07", "verdicts": ["v"], "amx_withheld": True,
              "tile_probe": {"input": [111, 111, 32], "threads": 1, "tile_expected": 16,
                             "ms": {"8": 0.2, "16": 0.2, "32": 0.4}}}
    text = slim_speed.markdown(result)
    assert "**AMX withheld**" in text
    assert "| slim50-int8.t16 | 16 | 224 |" in text and "| 2.00 |" in text  # 6.0 / 3.0 ms side by side
    assert "| 2.50 |" in text  # time per MAC in picoseconds: 3.0 ms / 1.2 GMAC
    assert "int8_channel_tile says 16" in text and "16: 0.200" in text


def test_an_unknown_row_is_refused_with_the_known_ones(capsys):
    with pytest.raises(SystemExit) as exc:
        slim_speed.main(["--variants", "int8,nope", "--runs", "30", "--tile", "16"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown nope" in err and "slim50-int8.t16" in err


@pytest.mark.skipif(sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"),
                    reason="AMX and arch_prctl are Linux x86_64")
def test_withholding_amx_refuses_only_the_amx_request():
    """In a child process (the filter cannot be undone): arch_prctl(ARCH_REQ_XCOMP_PERM) fails with EPERM,
    while arch_prctl(ARCH_GET_FS) and everything else still work."""
    code = """
import ctypes, os
from leukedge.benchmarks.machine import withhold_amx
libc = ctypes.CDLL(None, use_errno=True)
fs = ctypes.c_ulong()
assert libc.syscall(158, 0x1003, ctypes.byref(fs)) == 0  # ARCH_GET_FS, before
withhold_amx()
assert libc.syscall(158, 0x1003, ctypes.byref(fs)) == 0  # still allowed after
r = libc.syscall(158, 0x1023, 18)  # ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
assert r == -1 and ctypes.get_errno() == 1, (r, ctypes.get_errno())
print(os.getpid() > 0)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_withholding_amx_elsewhere_is_a_clear_error(monkeypatch):
    from leukedge.benchmarks import machine

    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    with pytest.raises(machine.AmxError, match="needs Linux on x86_64"):
        machine.withhold_amx()
