#!/usr/bin/env bash
# Quick start 1/2: set everything up and fine-tune SmolLM2-135M-Instruct locally, end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/prepare_demo_model.sh
exec .venv/bin/slmops run examples/01-finetune-lora.yaml "$@"
