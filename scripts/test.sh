#!/usr/bin/env bash
# The test suite on a fresh machine: set up, then the fast tests (heavy ones: scripts/test.sh -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
