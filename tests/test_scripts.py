"""The shell scripts' embedded Python names modules that exist: a moved module once broke pi-check only in CI's
last step (`from leukedge.edge.engines import load_classifier` after load_classifier moved)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh")) + [ROOT / ".ci" / "run"]


def _imports(text: str):
    for module, names in re.findall(r"from (leukedge[\w.]*) import ([\w, ]+)", text):
        yield module, [n.strip() for n in names.split(",") if n.strip()]
    for module in re.findall(r"-m (leukedge[\w.]*)", text):
        yield module, []


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_leukedge_import_in_a_script_resolves(script):
    found = list(_imports(script.read_text()))
    for module, names in found:
        mod = importlib.import_module(module)
        for name in names:
            assert hasattr(mod, name), f"{script.name}: {module} has no {name}"
