"""`edge-classify`'s console script and `python -m leukedge.edge.cli`: the device app lives in edge.app."""

from __future__ import annotations

from .app.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
