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
#
#   bench/gpu.sh --prepare-wheels    # on a connected machine: what a bare CUDA image lacks, into .whl/
#
# (--prepare-wheels fetches slmops' light dependencies, datasets and bitsandbytes for Python
# 3.12 on manylinux x86_64, no torch: about 60 MB.  onnxruntime-genai-cuda needs
# onnxruntime-gpu, about 300 MB more: add it by hand where the transfer allows.)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare-wheels" ]; then
  mkdir -p .whl
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_35_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl \
    pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 bitsandbytes==0.50.2 trl==1.16.0 \
    click==8.5.1 rich==15.0.0 boto3==1.44.8 botocore==1.44.8
  exit 0
fi

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/slmops-site .whl/*.whl
  export PYTHONPATH="/tmp/slmops-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec timeout 480 "$PYTHON" bench/gpu_bench.py "$@"
