#!/usr/bin/env bash
# Install Microsoft Olive (PyPI olive-ai) into its own virtual environment for the benchmarks.
#
#   bench/setup_olive.sh          # -> .cache/bench/olive-venv (idempotent)
#
# Olive gets the same torch, transformers, peft, onnxruntime and onnxruntime-genai versions as
# slmops (constraints.txt), so that a difference in a figure comes from the tool, not from a
# library version.  Its own venv keeps Olive's dependencies (optimum, torchmetrics,
# onnxscript...) out of slmops' environment.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${OLIVE_VENV:-.cache/bench/olive-venv}
OLIVE_VERSION=${OLIVE_VERSION:-0.13.0}

stamp="$VENV/.olive-installed"
want=$(cat constraints.txt bench/setup_olive.sh | sha256sum | cut -d' ' -f1)-$OLIVE_VERSION
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup_olive: creating $VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
fi
echo "setup_olive: installing olive-ai==$OLIVE_VERSION into $VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip setuptools wheel 2>&1 | grep -v "^WARNING: Location" || true
# torch first, alone: pip then takes the CPU build this machine has on disk.
"$VENV/bin/python" -m pip install --quiet -c constraints.txt torch 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip install --quiet -c constraints.txt \
  "olive-ai[lora,cpu,auto-opt]==$OLIVE_VERSION" transformers peft accelerate datasets \
  onnxruntime onnxruntime-genai onnx gguf 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/olive" --help > /dev/null  # fail loudly if the install did not take
echo "$want" > "$stamp"
echo "setup_olive: done"
