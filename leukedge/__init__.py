"""leukedge: ALL screening from one segmented blood-cell image, trained on a workstation, run on the edge."""

__version__ = "0.1.0"
