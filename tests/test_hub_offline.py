"""No network: a hub dataset or model id that is not local fails in seconds, with one line.

Without these checks the hub libraries retry each request with back-off: ~25 s for a dataset and
~50 s for a model (tokenizer, then weights) before the same one-line error. The tests here take
offline mode away (``conftest`` sets ``HF_HUB_OFFLINE=1``, and the libraries froze it at import), so
the loaders have to find out for themselves that the hub cannot be reached. No model is loaded.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from rl_select import hub
from rl_select.data import load_hf
from rl_select.errors import MAX_MESSAGE, DataError, ModelError
from rl_select.tasks import get_task

LIMIT_S = 10.0
MODEL_ID = "rl-select-test/no-such-model"
HUB_TASK = get_task("mr")  # hub-only: no offline copy
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


@pytest.fixture
def online_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """As for a user who has not asked for offline mode: the variables unset, the libraries' flags off."""
    import datasets
    import huggingface_hub.constants

    for name in OFFLINE_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False, raising=False)


@pytest.fixture
def dead_endpoint(monkeypatch: pytest.MonkeyPatch, online_mode: None) -> str:
    """``HF_ENDPOINT`` at a local port nobody listens on (refused at once, on any machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    return url


def _timed(exc_type: type[Exception], fn, *args, **kwargs) -> tuple[str, float]:
    t0 = time.perf_counter()
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    seconds = time.perf_counter() - t0
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg, seconds


def _load_model(model_id: str) -> None:
    from rl_select.lm.hf import load_causal_lm

    load_causal_lm(model_id, dtype="fp32", device="cpu")


@pytest.fixture(scope="module", autouse=True)
def _imports_outside_the_timings() -> None:
    import rl_select.lm.hf  # noqa: F401  (torch + transformers: seconds of import, not of failing)


# --- the two loaders, no network ------------------------------------------------------------------


def test_hub_dataset_without_network_fails_in_seconds(dead_endpoint: str, tmp_path) -> None:
    msg, seconds = _timed(DataError, load_hf, HUB_TASK, cache_dir=tmp_path)
    print(f"hub dataset {HUB_TASK.hf.path!r}, hub unreachable: failed in {seconds:.2f} s")
    assert seconds < LIMIT_S
    assert f"cannot load dataset {HUB_TASK.hf.path!r}" in msg
    assert f"the Hugging Face hub at {dead_endpoint} is unreachable" in msg
    assert "--data DIR" in msg and "network access to the hub" in msg


def test_hub_model_without_network_fails_in_seconds(dead_endpoint: str) -> None:
    msg, seconds = _timed(ModelError, _load_model, MODEL_ID)
    print(f"hub model {MODEL_ID!r}, hub unreachable: failed in {seconds:.2f} s")
    assert seconds < LIMIT_S
    assert msg.startswith(f"cannot load model {MODEL_ID!r}: not a local folder nor cached")
    assert f"the Hugging Face hub at {dead_endpoint} is unreachable" in msg
    assert "expected a local folder, 'bundled' or hub access" in msg
    assert len(msg.replace(dead_endpoint, "").replace(repr(MODEL_ID), "")) < MAX_MESSAGE, msg


@pytest.mark.parametrize("kind", ["dataset", "model"])
def test_this_machines_own_hub_access(kind: str, online_mode: None, monkeypatch: pytest.MonkeyPatch,
                                      tmp_path) -> None:
    """The default endpoint (or this machine's HF_ENDPOINT) as it is here: only where it is unreachable."""
    reason = hub.hub_unreachable()
    if reason is None:
        pytest.skip(f"this machine reaches the hub at {hub.hub_endpoint()}")
    if kind == "dataset":
        msg, seconds = _timed(DataError, load_hf, HUB_TASK, cache_dir=tmp_path)
    else:
        msg, seconds = _timed(ModelError, _load_model, MODEL_ID)
    print(f"hub {kind}, {reason}: failed in {seconds:.2f} s")
    assert seconds < LIMIT_S and reason in msg


@pytest.fixture
def stalled_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every DNS lookup hangs (as a resolver with no answer does) until the test ends."""
    release = threading.Event()

    def stall(*args, **kwargs):
        release.wait(60)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", stall)
    yield
    release.set()


def test_a_hanging_dns_lookup_is_cut_off(stalled_dns: None, online_mode: None, monkeypatch: pytest.MonkeyPatch,
                                         tmp_path) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.invalid")
    t0 = time.perf_counter()
    reason = hub.hub_unreachable(timeout=1.0)
    assert time.perf_counter() - t0 < 3.0
    assert reason == "the Hugging Face hub at https://hub.example.invalid is unreachable (no answer within 1 s)"
    msg, seconds = _timed(DataError, load_hf, HUB_TASK, cache_dir=tmp_path)
    print(f"hub dataset, DNS hangs: failed in {seconds:.2f} s")
    assert seconds < LIMIT_S and "no answer within 3 s" in msg


# --- offline asked for: no probe, the cache only, at once -------------------------------------------


def test_offline_variables_go_straight_to_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import rl_select.lm.hf_load as hf_mod

    def no_probe(*args, **kwargs):
        raise AssertionError("offline mode was asked for: the hub must not be probed")

    monkeypatch.setattr(hub, "hub_unreachable", no_probe)
    monkeypatch.setattr(hf_mod, "hub_unreachable", no_probe)
    for name in OFFLINE_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg, seconds = _timed(DataError, load_hf, HUB_TASK, cache_dir=tmp_path)
    assert seconds < LIMIT_S
    assert "HF_HUB_OFFLINE=1 is set" in msg and msg.endswith("(unset HF_HUB_OFFLINE)")
    msg, seconds = _timed(ModelError, _load_model, MODEL_ID)
    assert seconds < LIMIT_S
    assert f"{MODEL_ID!r}" in msg and "HF_HUB_OFFLINE=1 is set" in msg and msg.endswith("(unset HF_HUB_OFFLINE)")
    assert len(msg.replace(repr(MODEL_ID), "")) < MAX_MESSAGE, msg


def test_offline_env_reads_the_variables_as_the_libraries_do(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OFFLINE_VARS:
        monkeypatch.delenv(name, raising=False)
    assert hub.offline_env() is None and hub.offline_env(datasets=True) is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert hub.offline_env() is None
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "yes")
    assert hub.offline_env() == "TRANSFORMERS_OFFLINE=yes" and hub.offline_env(datasets=True) is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.offline_env() == "HF_HUB_OFFLINE=1" and hub.offline_env(datasets=True) == "HF_HUB_OFFLINE=1"
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")  # datasets: its own variable wins
    assert hub.offline_env(datasets=True) is None
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "TRUE")
    assert hub.offline_env(datasets=True) == "HF_DATASETS_OFFLINE=TRUE"


# --- no network, but a cached copy: it still loads -------------------------------------------------


def test_unreachable_hub_still_loads_a_cached_dataset(dead_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    import huggingface_hub.constants

    def cached_load(path: str, name: str | None = None, **kwargs) -> object:
        # datasets would serve this from its cache: offline mode is on for both libraries, just for the call
        assert datasets.config.HF_HUB_OFFLINE is True and huggingface_hub.constants.HF_HUB_OFFLINE is True
        split = {"text": ["a fine film", "a dull film"], "label": [1, 0]}
        return datasets.DatasetDict({s: datasets.Dataset.from_dict(split) for s in ("train", "test")})

    monkeypatch.setattr(datasets, "load_dataset", cached_load)
    train, test = load_hf(HUB_TASK)
    assert [e.label for e in train] == ["positive", "negative"] and len(test) == 2
    assert datasets.config.HF_HUB_OFFLINE is False and huggingface_hub.constants.HF_HUB_OFFLINE is False


def test_model_load_is_local_only_exactly_when_the_hub_is_unreachable(dead_endpoint: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import rl_select.lm.hf_load as hf_mod

    seen: list[bool] = []

    class Recorder:
        @staticmethod
        def from_pretrained(source, **kwargs):
            seen.append(kwargs["local_files_only"])
            raise OSError(f"{source} is not here")

    monkeypatch.setattr(hf_mod, "AutoTokenizer", Recorder)
    msg, _ = _timed(ModelError, _load_model, MODEL_ID)
    assert seen == [True] and "unreachable" in msg
    monkeypatch.setattr(hf_mod, "hub_unreachable", lambda *a, **k: None)  # a network: the ordinary hub loading
    msg, _ = _timed(ModelError, _load_model, MODEL_ID)
    assert seen == [True, False] and f"{MODEL_ID} is not here" in msg
