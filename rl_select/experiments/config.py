"""Run configuration: every run is a function of one :class:`RunConfig`.

A config comes from defaults, then an optional TOML file (``[run]`` table or top-level keys), then
command-line overrides; the resolved config is written into the run folder as ``config.toml``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from rl_select.errors import ConfigError


@dataclass
class RunConfig:
    """All knobs of an evaluation or baselines run.

    Attributes:
        task: Built-in task name, or a path to a JSON/TOML task spec.
        data: Folder with train/test files (``None``: ``../shared/data/<task>`` or the hub).
        model: ``"bundled"`` (SmolLM2-135M-Instruct), a local folder or a hub id; with the ``openai``
            backend, the served model's name.
        backend: ``hf`` (transformers, in process) or ``openai`` (an OpenAI-compatible ``/v1/completions``
            server such as vLLM). The API key is read from ``RL_SELECT_API_KEY`` / ``OPENAI_API_KEY`` only,
            so it never lands in a config file or a run folder.
        base_url: The server for the ``openai`` backend (else ``RL_SELECT_BASE_URL``).
        max_concurrency / timeout / max_retries: ``openai`` backend: requests in flight at once, seconds
            allowed per response, retries of a request after a time-out, 429 or 5xx.
        dtype: ``auto`` | ``bf16`` | ``fp32`` | ``fp16``.
        device: ``auto`` | ``cpu`` | ``cuda`` ...
        mode: ``direct`` or ``channel`` scoring.
        calibrate: Contextual calibration of label probabilities.
        length_norm: Divide label log-probs by their token count.
        batch_size: Query rows per forward pass.
        k: Number of demonstrations.
        n_pool / n_val / n_test: Split sizes (``n_test = 0`` keeps the whole test file).
        stratify: Balance labels in pool and val.
        seeds: Seeds; each gives its own splits and selector randomness.
        selectors: Selector names (see ``rl_select.selectors.SELECTORS``).
        selector_args: Per-selector keyword arguments, e.g. ``{"random_search": {"n_candidates": 8}}``;
            by default greedy tries 8 seeded candidates per step (k * 8 prompts on val) to bound its cost.
        cache: SQLite score cache path (``""``: the default path; ``"none"``: no cache).
        out: Parent folder of run folders.
        n_candidates: Candidates N per MDP episode (0: ``n_pool``).
        train_pool: Size of the candidate split that training episodes draw their N candidates from.
        feature_set: ``active`` (label-free) or ``labelled`` MDP features.
        reward: ``marginal`` (per-step gain in val accuracy) or ``terminal``.
        allow_stop / min_len: Offer a STOP action after at least ``min_len`` demos.
        agent: ``tabular`` | ``dqn`` | ``offline``.
        episodes: Rollouts to collect (offline) or episodes to learn (tabular).
        train_steps: Gradient steps (offline) or environment steps (dqn).
        hidden: Hidden widths of the candidate-scoring Q-network.
        train_tasks: Tasks to train on at once (transfer); empty: ``[task]``.
        store: Rollout store path (``""``: ``<out>/rollouts/<task>-<env settings>.jsonl``).
        policy: A trained ``.safetensors`` policy; ``evaluate``/``baselines`` add it as selector ``policy``.
        executor: ``local`` (in process) or ``ray`` (collection and evaluation units on Ray actors, each with
            its own LM; same results, same store and cache).
        ray_address: Ray cluster to join (``auto``, ``ray://host:10001``); empty: ``$RL_SELECT_RAY_ADDRESS``,
            ``$RAY_ADDRESS``, else a local Ray with ``workers`` CPUs.
        workers: Ray actors.
    """

    task: str = "sst2"
    data: str | None = None
    model: str = "bundled"
    backend: str = "hf"
    base_url: str = ""
    max_concurrency: int = 4
    timeout: float = 60.0
    max_retries: int = 5
    dtype: str = "auto"
    device: str = "auto"
    mode: str = "direct"
    calibrate: bool = False
    length_norm: bool = False
    batch_size: int = 16
    k: int = 4
    n_pool: int = 16
    n_val: int = 32
    n_test: int = 200
    stratify: bool = True
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    selectors: list[str] = field(
        default_factory=lambda: ["zero_shot", "random", "knn", "max_entropy", "random_search", "greedy"]
    )
    selector_args: dict[str, dict[str, Any]] = field(default_factory=lambda: {"greedy": {"max_candidates": 8}})
    cache: str = ""
    out: str = "runs"
    # --- the selection MDP and its agents (collect / train / policy) ---
    n_candidates: int = 0
    train_pool: int = 512
    feature_set: str = "active"
    reward: str = "marginal"
    allow_stop: bool = False
    min_len: int = 0
    agent: str = "offline"
    episodes: int = 64
    train_steps: int = 2000
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    train_tasks: list[str] = field(default_factory=list)
    store: str = ""
    policy: str = ""
    executor: str = "local"
    ray_address: str = ""
    workers: int = 2

    def validate(self) -> RunConfig:
        """Check values; raise :class:`ConfigError` naming the bad one."""
        if self.k < 0:
            raise ConfigError(f"k={self.k} is negative; expected k >= 0")
        for name in ("n_pool", "n_val", "n_test", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (1 if name == "batch_size" else 0):
                raise ConfigError(f"{name}={value!r}; expected a non-negative integer")
        if self.mode not in ("direct", "channel"):
            raise ConfigError(f"mode={self.mode!r}; expected 'direct' or 'channel'")
        if not self.seeds:
            raise ConfigError("seeds is empty; expected at least one seed")
        if self.backend not in ("hf", "openai"):
            raise ConfigError(f"backend={self.backend!r}; expected 'hf' or 'openai'")
        if self.backend == "openai" and not (self.base_url or os.environ.get("RL_SELECT_BASE_URL")):
            raise ConfigError("backend='openai' needs a server: pass --base-url URL or set $RL_SELECT_BASE_URL")
        if self.feature_set not in ("active", "labelled"):
            raise ConfigError(f"feature_set={self.feature_set!r}; expected 'active' or 'labelled'")
        if self.reward not in ("marginal", "terminal"):
            raise ConfigError(f"reward={self.reward!r}; expected 'marginal' or 'terminal'")
        if self.agent not in ("tabular", "dqn", "offline"):
            raise ConfigError(f"agent={self.agent!r}; expected 'tabular', 'dqn' or 'offline'")
        if not (isinstance(self.max_concurrency, int) and self.max_concurrency >= 1 and isinstance(
                self.max_retries, int) and self.max_retries >= 0 and isinstance(self.timeout, (int, float))
                and self.timeout > 0):
            raise ConfigError(f"max_concurrency={self.max_concurrency!r}, timeout={self.timeout!r}, max_retries="
                              f"{self.max_retries!r}; expected max_concurrency >= 1, timeout > 0, max_retries >= 0")
        if self.executor not in ("local", "ray"):
            raise ConfigError(f"executor={self.executor!r}; expected 'local' or 'ray'")
        for name in ("episodes", "train_steps", "train_pool", "workers"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r}; expected a positive integer")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def dump(self, path: Path) -> None:
        """Write the resolved config as TOML."""
        path.write_text(tomli_w.dumps(self.to_dict()))


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults < TOML file < overrides (``None`` values in overrides are ignored)."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist; expected a TOML file")
        try:
            doc = tomllib.loads(p.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {str(p)!r} is not valid TOML: {exc}") from None
        values.update(doc.get("run", doc))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}; expected some of {sorted(known)}")
    return RunConfig(**values).validate()
