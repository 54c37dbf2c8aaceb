#!/usr/bin/env bash
# Install OpenVINO GenAI and optimum-intel into their own virtual environment for the benchmarks.
#
#   bench/setup_openvino.sh          # -> .cache/bench/openvino-venv (idempotent; ~3 min)
#
# OpenVINO GenAI is Intel's runtime for int4 language models on CPUs; bench/optimize.py
# measures it as a peer of slmops' CPU targets: the merged model exported by optimum-intel
# (`optimum-cli export openvino --weight-format int4|int8`) and run by openvino_genai's
# LLMPipeline, as its users do.  Its own venv: optimum-intel pins transformers below 5.6, while
# slmops is tested with the version constraints.txt names.  torch comes from constraints.txt
# (the CPU build on disk), the rest at the versions below.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${OPENVINO_VENV:-.cache/bench/openvino-venv}
OPENVINO_GENAI_VERSION=${OPENVINO_GENAI_VERSION:-2026.4.1.0}
OPTIMUM_INTEL_VERSION=${OPTIMUM_INTEL_VERSION:-2.2.0}

stamp="$VENV/.openvino-installed"
want=$(cat constraints.txt bench/setup_openvino.sh | sha256sum | cut -d' ' -f1)-$OPENVINO_GENAI_VERSION-$OPTIMUM_INTEL_VERSION
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup_openvino: creating $VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
fi
echo "setup_openvino: installing openvino-genai==$OPENVINO_GENAI_VERSION, optimum-intel==$OPTIMUM_INTEL_VERSION into $VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
torch=$(grep '^torch==' constraints.txt)
"$VENV/bin/python" -m pip install --quiet "$torch" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip install --quiet "$torch" "openvino-genai==$OPENVINO_GENAI_VERSION" \
  "optimum-intel[openvino]==$OPTIMUM_INTEL_VERSION" pydantic 2>&1 | grep -v "^WARNING: Location" || true
# optimum-intel pulls torchvision, whose PyPI build does not load beside the CPU torch (its ops
# fail to register, and transformers' model classes with them); only vision models need it.
"$VENV/bin/python" -m pip uninstall --quiet --yes torchvision 2>&1 | grep -v "^WARNING" || true
# What bench/openvino_peer.py imports of slmops' measuring code, and the tools it runs: fail loudly.
"$VENV/bin/python" -c "import openvino_genai, optimum.intel, pydantic, torch; from transformers import PreTrainedModel"
"$VENV/bin/optimum-cli" export openvino --help >/dev/null
echo "$want" > "$stamp"
