#!/usr/bin/env bash
# Build llama.cpp (PyPI llama-cpp-python) into its own virtual environment for the benchmarks.
#
#   bench/setup_llamacpp.sh          # -> .cache/bench/llamacpp-venv (idempotent; ~6 min on 2 cores)
#
# llama.cpp is what CPU users run for a model this size, so bench/optimize.py measures it as a
# peer of slmops' int4/int8 targets, from the GGUF file the demo model comes from.
#
# The wheel builds from source with the system compiler, for the CPU it is built on: the
# benchmark runs where it was set up.  Not -march=native: that died with an illegal
# instruction on a VM whose CPU reports AMX that a process may not use.  So each instruction
# set is switched on from what /proc/cpuinfo reports (AVX2, FMA, F16C, AVX-512 and its VNNI,
# BF16 and VBMI), AMX always off; a fixed list of AVX-512 flags built a library that died on
# an AVX2-only EPYC.  Set LLAMACPP_CMAKE_ARGS to build for another CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${LLAMACPP_VENV:-.cache/bench/llamacpp-venv}
VERSION=${LLAMACPP_VERSION:-0.3.36}
SENTENCEPIECE_VERSION=0.2.1

# -DGGML_<NAME>=ON where this CPU reports the flag, OFF where it does not.
cpu_flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
ggml() {
  if [[ "$cpu_flags" == *" $2 "* ]]; then echo "-DGGML_$1=ON"; else echo "-DGGML_$1=OFF"; fi
}
detected="-DGGML_NATIVE=OFF $(ggml AVX avx) $(ggml AVX2 avx2) $(ggml FMA fma) $(ggml F16C f16c)"
detected+=" $(ggml AVX512 avx512f) $(ggml AVX512_VNNI avx512_vnni) $(ggml AVX512_BF16 avx512_bf16)"
detected+=" $(ggml AVX512_VBMI avx512vbmi) -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
CMAKE_ARGS=${LLAMACPP_CMAKE_ARGS:-"$detected -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"}

stamp="$VENV/.llamacpp-installed"
want=$(cat constraints.txt bench/setup_llamacpp.sh | sha256sum | cut -d' ' -f1)-$(printf '%s %s' "$VERSION" "$CMAKE_ARGS" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup_llamacpp: creating $VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
fi
echo "setup_llamacpp: building llama-cpp-python==$VERSION into $VENV (several minutes): $CMAKE_ARGS"
# Built for other instructions (or a build that did not take): pip would keep it as satisfied.
"$VENV/bin/python" -m pip uninstall --quiet --yes llama-cpp-python 2>/dev/null || true
"$VENV/bin/python" -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
CMAKE_ARGS="$CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
  "$VENV/bin/python" -m pip install --quiet --no-cache-dir --no-binary llama-cpp-python \
  "llama-cpp-python[server]==$VERSION" numpy 2>&1 | grep -v "^WARNING: Location" || true
# What bench/llamacpp_peer.py imports of slmops' measuring code (its specs are pydantic models),
# and what llama.cpp's convert_hf_to_gguf.py needs to turn the merged model into a GGUF file
# (torch alone first, so that pip takes the CPU build on disk).
"$VENV/bin/python" -m pip install --quiet -c constraints.txt torch 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip install --quiet -c constraints.txt numpy pydantic pyyaml transformers safetensors \
  "sentencepiece==$SENTENCEPIECE_VERSION" 2>&1 | grep -v "^WARNING: Location" || true
# The converter and its gguf-py are in the sdist, not in the wheel: keep them next to the venv.
sdist=$(mktemp -d)
"$VENV/bin/python" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$sdist" \
  2>&1 | grep -v "^WARNING: Location" || true
rm -rf "$VENV/convert" && mkdir -p "$VENV/convert"
tar xzf "$sdist"/llama_cpp_python-*.tar.gz -C "$VENV/convert" --strip-components=3 \
  "llama_cpp_python-$VERSION/vendor/llama.cpp/convert_hf_to_gguf.py" \
  "llama_cpp_python-$VERSION/vendor/llama.cpp/conversion" \
  "llama_cpp_python-$VERSION/vendor/llama.cpp/gguf-py"
rm -rf "$sdist"
test -f "$VENV/convert/convert_hf_to_gguf.py"
# Fail loudly if the build did not take, or built for instructions this CPU cannot run.
"$VENV/bin/python" -c "import llama_cpp; print('setup_llamacpp: llama.cpp', llama_cpp.__version__, llama_cpp.llama_print_system_info().decode())"
echo "$want" > "$stamp"
echo "setup_llamacpp: done"
