#!/usr/bin/env bash
# Quick start 2/2: set everything up and run the whole test suite (what CI runs).
#   scripts/test.sh [pytest args]     e.g. scripts/test.sh -k storage, scripts/test.sh --slow
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# Two workers, each taking whole files (a module's fixtures are built once): much of the suite
# waits on an operator, a fake KFP or a server, and the other worker computes meanwhile.
# `-n 0` after it runs everything in one process (pdb, -s).
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
