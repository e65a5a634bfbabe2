"""The benchmark's F1-against-latency chart (`f1_vs_latency.png`): moved to `leukedge.reports.benchmark`, where
every step's reports live (issue 19). Kept as a re-export for older imports (tests/test_plots.py imports
`_fan_out` from here too)."""

from leukedge.reports.benchmark import (ENGINE_MARKERS, ENGINE_NAMES, PALETTE, _fan_out, f1_vs_latency,
                                        pareto_front, variant_engine, variant_family)

__all__ = ["ENGINE_MARKERS", "ENGINE_NAMES", "PALETTE", "_fan_out", "f1_vs_latency", "pareto_front",
           "variant_engine", "variant_family"]
