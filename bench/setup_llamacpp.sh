#!/usr/bin/env bash
# Build llama.cpp (PyPI llama-cpp-python) into its own virtual environment for the benchmarks.
#
#   bench/setup_llamacpp.sh          # -> .cache/bench/llamacpp-venv (idempotent; ~6 min on 2 cores)
#
# llama.cpp is what CPU users run for a model this size, so bench/optimize.py measures it as a
# peer of slmops' int4/int8 targets, from the GGUF file the demo model comes from.
#
# The wheel builds from source with the system compiler.  A native build (-march=native) died
# with an illegal instruction on this machine: its CPU reports AMX, which the VM does not let
# a process use.  So the CPU features are spelled out, AVX-512 (with VNNI, BF16, VBMI) on and
# the AMX ones off; set LLAMACPP_CMAKE_ARGS to build for another CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${LLAMACPP_VENV:-.cache/bench/llamacpp-venv}
VERSION=${LLAMACPP_VERSION:-0.3.36}
CMAKE_ARGS=${LLAMACPP_CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX512_VBMI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"}

stamp="$VENV/.llamacpp-installed"
want=$(printf '%s %s' "$VERSION" "$CMAKE_ARGS" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup_llamacpp: creating $VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
fi
echo "setup_llamacpp: building llama-cpp-python==$VERSION into $VENV (several minutes)"
"$VENV/bin/python" -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
CMAKE_ARGS="$CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
  "$VENV/bin/python" -m pip install --quiet --no-cache-dir --no-binary llama-cpp-python \
  "llama-cpp-python==$VERSION" numpy 2>&1 | grep -v "^WARNING: Location" || true
# Fail loudly if the build did not take, or built for instructions this CPU cannot run.
"$VENV/bin/python" -c "import llama_cpp; print('setup_llamacpp: llama.cpp', llama_cpp.__version__, llama_cpp.llama_print_system_info().decode())"
echo "$want" > "$stamp"
echo "setup_llamacpp: done"
