#!/usr/bin/env bash
# Quick start 2/2: set everything up and run the whole test suite (what CI runs).
#   scripts/test.sh [pytest args]     e.g. scripts/test.sh -k storage, scripts/test.sh --slow
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
