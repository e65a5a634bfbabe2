#!/usr/bin/env bash
# The main job on a fresh machine: set up, then data -> train -> optimize -> edge-classify -> benchmark.
# Usage: scripts/run.sh [DATA] [--out DIR] [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/leukedge flow "$@"
