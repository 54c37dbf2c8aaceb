#!/usr/bin/env bash
# GPU benchmark, one prepared script for a machine with an NVIDIA GPU: LoRA and QLoRA training
# throughput (tokens/s, MFU) of a 1.4B-parameter model built from a config, and CUDA fp16/int4
# ONNX decode throughput.  Finishes in under 8 minutes on an H100/H200 and prints a table.
#
#   bench/gpu.sh                     # from the repo root, on the GPU machine
#   bench/gpu.sh --smoke             # a tiny model on the CPU: checks the script anywhere
#
# Python: $PYTHON, else .venv/bin/python, else python3 -- with a CUDA build of torch,
# transformers, peft (and slmops' own light dependencies: pydantic, pyyaml, rich, click).
# Optional: bitsandbytes (QLoRA), onnxruntime-genai-cuda (the ONNX part); without them those
# rows say "skipped" and why.  On a machine without network access, bring missing packages as
# wheels in .whl/ (pip download ... -d .whl on a connected machine): they are installed into
# /tmp/slmops-site first, ahead of what the image has.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/slmops-site .whl/*.whl
  export PYTHONPATH="/tmp/slmops-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec timeout 480 "$PYTHON" bench/gpu_bench.py "$@"
