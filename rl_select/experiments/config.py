"""Run configuration: every run is a function of one :class:`RunConfig`, made of typed sections.

A config comes from defaults, then an optional TOML file, then command-line overrides; the resolved
config is written into the run folder as ``config.toml``. The file's tables are the sections::

    task = "sst2"            # top level: what is run, on which data, for which seeds
    k = 4
    seeds = [0, 1, 2]

    [lm]                     # rl_select.lm.spec.ScorerSpec: the frozen LM's scorer
    model = "bundled"
    calibrate = true

    [splits]                 # SplitsConfig: split sizes
    n_pool = 16
    n_val = 32

    [selectors]              # SelectorsConfig: the baselines' names and arguments
    names = ["zero_shot", "random"]
    [selectors.args.random_search]
    n_prompts = 8

    [mdp]                    # MDPConfig: the selection MDP
    [agent]                  # AgentConfig: the learner and its rollouts
    [executor]               # ExecutorConfig: in process or on Ray

Every value is checked by the module that owns its value set (the scorer spec by ``rl_select.lm.spec``,
feature sets by ``rl_select.mdp.feature_spec``, reward modes by the env, agents by the agent registry,
selectors by the selector registry). ``None`` means unset. Older flat files (all keys at the top level or
under ``[run]``) still load: each flat key is read into its section (:data:`FLAT_KEYS`).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from rl_select.errors import ConfigError, one_of, read_utf8
from rl_select.lm.spec import ScorerSpec

DEFAULT_SELECTORS = ("zero_shot", "random", "knn", "max_entropy", "random_search", "greedy")


def _positive(where: str, value: Any, *, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{where}={value!r}; expected an integer >= {minimum}")


@dataclass
class SplitsConfig:
    """Split sizes per seed (see :func:`rl_select.data.make_splits`).

    Attributes:
        n_pool: Candidate pool the selectors choose demonstrations from.
        n_val: Reward-validation rows (labelled; the MDP's reward and the search baselines' score).
        n_test: Held-out test rows (``0``: the whole test file).
        stratify: Balance labels in pool and val.
        train_pool: Train rows that MDP training episodes draw their candidates from.
    """

    n_pool: int = 16
    n_val: int = 32
    n_test: int = 200
    stratify: bool = True
    train_pool: int = 512

    def validate(self) -> None:
        for name in ("n_pool", "n_val", "n_test"):
            _positive(f"splits.{name}", getattr(self, name), minimum=0)
        _positive("splits.train_pool", self.train_pool)


@dataclass
class SelectorsConfig:
    """The baselines a grid runs.

    Attributes:
        names: Selector names (``rl_select.selectors.SELECTORS``); ``name:label`` runs one selector
            several times with different arguments.
        args: Per-name keyword arguments, e.g. ``{"random_search": {"n_prompts": 8}}``; by default greedy
            tries 8 seeded candidates per step (k * 8 prompts on val) to bound its cost.
    """

    names: list[str] = field(default_factory=lambda: list(DEFAULT_SELECTORS))
    args: dict[str, dict[str, Any]] = field(default_factory=lambda: {"greedy": {"max_candidates": 8}})

    def validate(self) -> None:
        from rl_select.selectors import SELECTORS

        if not isinstance(self.names, (list, tuple)) or not all(isinstance(n, str) for n in self.names):
            raise ConfigError(f"selectors.names={self.names!r:.60}; expected a list of selector names")
        if not isinstance(self.args, Mapping) or not all(isinstance(a, Mapping) for a in self.args.values()):
            raise ConfigError(f"selectors.args={self.args!r:.60}; expected a table of tables (selector -> settings)")
        unknown = sorted({n for n in [*self.names, *self.args] if n.split(":")[0] not in SELECTORS})
        if unknown:
            raise ConfigError(f"selectors {unknown} are not selectors; expected some of "
                              f"{one_of(sorted(SELECTORS), unknown[0].split(':')[0])}")


@dataclass
class MDPConfig:
    """The selection MDP (``envs.DemoSelectionEnv``).

    Attributes:
        n_candidates: Candidates N offered per episode (``None``: ``splits.n_pool``).
        feature_set: ``active`` (label-free), ``labelled``, ``zeroshot`` or ``table`` (candidate features from
            the one-off row table; see :meth:`rl_select.mdp.feature_spec.FeatureSpec.lm_rows`).
        reward: ``marginal`` (per-step gain in val accuracy) or ``terminal``.
        allow_stop: Offer a STOP action.
        min_len: Fewest demonstrations before STOP is allowed.
    """

    n_candidates: int | None = None
    feature_set: str = "active"
    reward: str = "marginal"
    allow_stop: bool = False
    min_len: int = 0

    def validate(self) -> None:
        from rl_select.mdp.episode import REWARD_MODES
        from rl_select.mdp.feature_spec import FEATURE_SETS

        if self.n_candidates is not None:
            _positive("mdp.n_candidates", self.n_candidates)
        if self.feature_set not in FEATURE_SETS:
            raise ConfigError(f"mdp.feature_set={self.feature_set!r}; expected one of {list(FEATURE_SETS)}")
        if self.reward not in REWARD_MODES:
            raise ConfigError(f"mdp.reward={self.reward!r}; expected one of {list(REWARD_MODES)}")
        _positive("mdp.min_len", self.min_len, minimum=0)


RETURN_NORMS: tuple[str, ...] = ("none", "task")
"""Values of ``agent.return_norm``."""


@dataclass
class AgentConfig:
    """The learner and its rollouts.

    Attributes:
        name: An agent of the registry (``agents.AGENTS``, e.g. ``offline``).
        episodes: Rollouts to collect (offline) or episodes to learn (tabular).
        train_steps: Gradient steps (offline) or environment steps (dqn).
        hidden: Hidden widths of the candidate-scoring Q-network.
        train_tasks: Tasks to train on at once (transfer); ``None``: the run's task.
        store: Rollout store path (``None``: ``<out>/rollouts/<task>-<env settings>.jsonl``).
        cql_alpha: Weight of the offline agent's CQL regulariser (0: plain offline DQN).
        val_episodes: The offline agent's checkpoint choice: greedy episodes in the training env per check
            (they query the LM for their reward), or 0 for the held-out TD objective (no LM).
        q_target: The offline agent's regression target: ``td`` (bootstrapped max) or ``mc`` (the logged
            return-to-go: the random policy's value, improved on greedily).
        rollout_seed: Seed of the rollouts (and of their pool / reward split); ``None``: the run's seed.
            Pinning it lets every seed of a grid, and every transfer policy, learn from one store per task.
        return_norm: The offline agent's view of the logged returns: ``none`` (as logged) or ``task`` (each
            training task's returns as z-scores within that task, :func:`agents.rollouts.standardize_returns`),
            so a policy trained on several tasks learns what beats a task's typical prompt, not which task
            is easier.
        probe_critic: The offline agent also fits the probe critic (:mod:`rl_select.mdp.critic`, used by
            ``policy_probe``) on the same episodes: each episode's final prompt is scored on its task's val
            texts (the terminal reward's rows: cache hits where the store was collected with this cache).
        critic_episodes: The first N stored episodes per task the critic fits on (``None``: ``episodes``).
    """

    name: str = "offline"
    episodes: int = 64
    train_steps: int = 2000
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    train_tasks: list[str] | None = None
    store: str | None = None
    cql_alpha: float = 1.0
    val_episodes: int = 3
    q_target: str = "td"
    rollout_seed: int | None = None
    return_norm: str = "none"
    probe_critic: bool = False
    critic_episodes: int | None = None

    def validate(self) -> None:
        from agents.registry import load_agents

        agents = load_agents()
        if self.name not in agents:
            raise ConfigError(f"agent.name={self.name!r}; expected one of {list(agents)}")
        _positive("agent.episodes", self.episodes)
        _positive("agent.train_steps", self.train_steps)
        _positive("agent.val_episodes", self.val_episodes, minimum=0)
        if not isinstance(self.cql_alpha, (int, float)) or isinstance(self.cql_alpha, bool) or self.cql_alpha < 0:
            raise ConfigError(f"agent.cql_alpha={self.cql_alpha!r}; expected a number >= 0")
        if self.rollout_seed is not None:
            _positive("agent.rollout_seed", self.rollout_seed, minimum=0)
        from agents.offline import Q_TARGETS

        if self.q_target not in Q_TARGETS:
            raise ConfigError(f"agent.q_target={self.q_target!r}; expected one of {list(Q_TARGETS)}")
        if self.return_norm not in RETURN_NORMS:
            raise ConfigError(f"agent.return_norm={self.return_norm!r}; expected one of {list(RETURN_NORMS)}")
        if not isinstance(self.probe_critic, bool):
            raise ConfigError(f"agent.probe_critic={self.probe_critic!r}; expected true or false")
        if self.critic_episodes is not None:
            _positive("agent.critic_episodes", self.critic_episodes, minimum=2)
        if self.probe_critic and agents[self.name].tags.learns_from != "rollouts":
            learners = " or ".join(n for n, c in agents.items() if c.tags.learns_from == "rollouts")
            raise ConfigError(f"agent.probe_critic = true with agent.name={self.name!r}; expected an agent that "
                              f"learns from rollout stores ({learners}): the critic learns from them")
        if not self.hidden or not all(isinstance(h, int) and h > 0 for h in self.hidden):
            raise ConfigError(f"agent.hidden={self.hidden!r}; expected positive layer widths, e.g. [64, 64]")


@dataclass
class ExecutorConfig:
    """Where collection and evaluation units run.

    Attributes:
        kind: ``local`` (in process) or ``ray`` (units on Ray actors, each with its own LM; same results,
            same store and cache).
        address: Ray cluster to join (``auto``, ``ray://host:10001``); ``None``: ``$RL_SELECT_RAY_ADDRESS``,
            ``$RAY_ADDRESS``, else a local Ray with ``workers`` CPUs.
        workers: Ray actors.
    """

    kind: str = "local"
    address: str | None = None
    workers: int = 2

    def validate(self) -> None:
        from rl_select.experiments.executors import EXECUTORS

        if self.kind not in EXECUTORS:
            raise ConfigError(f"executor.kind={self.kind!r}; expected one of {list(EXECUTORS)}")
        _positive("executor.workers", self.workers)


SECTIONS: dict[str, type] = {
    "lm": ScorerSpec, "splits": SplitsConfig, "selectors": SelectorsConfig, "mdp": MDPConfig,
    "agent": AgentConfig, "executor": ExecutorConfig,
}
"""The config tables and their types."""

TOP_LEVEL = ("task", "data", "k", "seeds", "cache", "out", "policy")

FLAT_KEYS: dict[str, tuple[str, str]] = {
    **{f.name: ("lm", f.name) for f in dataclasses.fields(ScorerSpec) if f.name != "model_fingerprint"},
    **{f.name: ("splits", f.name) for f in dataclasses.fields(SplitsConfig)},
    "selectors": ("selectors", "names"), "selector_args": ("selectors", "args"),
    **{f.name: ("mdp", f.name) for f in dataclasses.fields(MDPConfig)},
    "agent": ("agent", "name"), "episodes": ("agent", "episodes"), "train_steps": ("agent", "train_steps"),
    "hidden": ("agent", "hidden"), "train_tasks": ("agent", "train_tasks"), "store": ("agent", "store"),
    "cql_alpha": ("agent", "cql_alpha"), "val_episodes": ("agent", "val_episodes"),
    "rollout_seed": ("agent", "rollout_seed"), "q_target": ("agent", "q_target"),
    "return_norm": ("agent", "return_norm"), "probe_critic": ("agent", "probe_critic"),
    "critic_episodes": ("agent", "critic_episodes"),
    "executor": ("executor", "kind"), "ray_address": ("executor", "address"), "workers": ("executor", "workers"),
}
"""Flat key (older config files, command-line flags) -> ``(table, key)``."""

_UNSET = ("", "none")  # older flat files' sentinels for "unset" (cache keeps "none": no cache)


@dataclass
class RunConfig:
    """All knobs of a run.

    Attributes:
        task: Built-in task name, or a path to a JSON/TOML task spec.
        data: Folder with train/test files (``None``: ``../shared/data/<task>`` or the hub).
        k: Number of demonstrations (the selectors' and the MDP's budget).
        seeds: Seeds; each gives its own splits and selector randomness.
        cache: SQLite score cache path (``None``: the default path; ``"none"``: no cache).
        out: Parent folder of run folders.
        policy: Trained ``.safetensors`` policies; ``evaluate``/``baselines`` add each as a selector.
        lm: The frozen LM's scorer (:class:`~rl_select.lm.spec.ScorerSpec`).
        splits: Split sizes.
        selectors: Baselines and their arguments.
        mdp: The selection MDP.
        agent: The learner.
        executor: Where units run.
    """

    task: str = "sst2"
    data: str | None = None
    k: int = 4
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    cache: str | None = None
    out: str = "runs"
    policy: list[str] | None = None
    lm: ScorerSpec = field(default_factory=ScorerSpec)
    splits: SplitsConfig = field(default_factory=SplitsConfig)
    selectors: SelectorsConfig = field(default_factory=SelectorsConfig)
    mdp: MDPConfig = field(default_factory=MDPConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    def validate(self) -> RunConfig:
        """Check every section; raise :class:`ConfigError` naming the bad value."""
        for name in ("task", "data", "cache", "out"):
            value = getattr(self, name)
            if not isinstance(value, (str, os.PathLike)) and (value is not None or name in ("task", "out")):
                raise ConfigError(f"{name}={value!r:.60}; expected a {'name or ' * (name == 'task')}path as text")
        if self.policy is not None and (not isinstance(self.policy, (list, tuple)) or not all(
                isinstance(p, (str, os.PathLike)) for p in self.policy)):
            raise ConfigError(f"policy={self.policy!r:.60}; expected a list of policy file paths")
        _positive("k", self.k, minimum=0)  # 0: a zero-shot prompt file; selectors refuse it (check_plan)
        if not isinstance(self.seeds, (list, tuple)) or not self.seeds or not all(
                isinstance(s, int) and not isinstance(s, bool) for s in self.seeds):
            raise ConfigError(f"seeds={self.seeds!r}; expected a non-empty list of integers")
        for name in SECTIONS:
            section = getattr(self, name)
            if name != "lm":  # a ScorerSpec checks itself when it is made
                section.validate()
        if self.lm.backend == "openai" and not (self.lm.base_url or os.environ.get("RL_SELECT_BASE_URL")):
            raise ConfigError("backend='openai' needs a server: pass --base-url URL or set $RL_SELECT_BASE_URL")
        if self.mdp.min_len > self.k:
            raise ConfigError(f"mdp.min_len={self.mdp.min_len}; expected 0 <= min_len <= k={self.k}")
        return self

    @property
    def n_candidates(self) -> int:
        """Candidates per MDP episode: ``mdp.n_candidates`` or, unset, ``splits.n_pool``."""
        return self.mdp.n_candidates or self.splits.n_pool

    @property
    def rollout_seed(self) -> int:
        """The seed rollouts are collected with: ``agent.rollout_seed`` or ``seeds[0]``."""
        return self.seeds[0] if self.agent.rollout_seed is None else int(self.agent.rollout_seed)

    @property
    def train_tasks(self) -> list[str]:
        """The tasks an agent trains on: ``agent.train_tasks`` or ``[task]``."""
        return list(self.agent.train_tasks or [self.task])

    # --- records ------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Nested JSON/TOML values (``None`` left out); :meth:`from_dict` reads it back."""
        out: dict[str, Any] = {k: getattr(self, k) for k in TOP_LEVEL if getattr(self, k) is not None}
        out["seeds"] = list(self.seeds)
        for name in SECTIONS:
            section = getattr(self, name)
            d = section.to_dict() if isinstance(section, ScorerSpec) else dataclasses.asdict(section)
            out[name] = {k: v for k, v in d.items() if v is not None}
        return out

    def dump(self, path: Path) -> None:
        """Write the resolved config as TOML."""
        path.write_text(tomli_w.dumps(self.to_dict()))

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *, where: str = "config") -> RunConfig:
        """A validated config from nested tables and/or flat keys (see :data:`FLAT_KEYS`).

        Raises:
            ConfigError: An unknown key or table (named, with the known ones), or a bad value.
        """
        top: dict[str, Any] = {}
        tables: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for key, value in doc.items():
            if key in SECTIONS and isinstance(value, Mapping):
                tables[key].update(value)
            elif key in TOP_LEVEL:
                top[key] = value
            elif key in FLAT_KEYS:
                table, name = FLAT_KEYS[key]
                tables[table][name] = value
            else:
                known = sorted([*TOP_LEVEL, *(f"[{s}]" for s in SECTIONS)])
                raise ConfigError(f"{where}: unknown key {key!r}; expected one of {one_of(known, key)}")
        top = {k: None if (v in _UNSET and k != "cache") or (k == "cache" and v == "") else v for k, v in top.items()}
        if isinstance(top.get("policy"), str):
            top["policy"] = [p for p in top["policy"].split(",") if p]
        sections: dict[str, Any] = {}
        for name, cls_ in SECTIONS.items():
            values = {k: (None if v in _UNSET and k in ("store", "address", "base_url") else v)
                      for k, v in tables[name].items()}
            if name == "mdp" and values.get("n_candidates") == 0:
                values["n_candidates"] = None
            if name == "agent" and values.get("train_tasks") == []:
                values["train_tasks"] = None
            known = [f.name for f in dataclasses.fields(cls_)]
            unknown = sorted(set(values) - set(known))
            if unknown:
                raise ConfigError(f"{where}: [{name}] has unknown key {unknown[0]!r}; expected some of "
                                  f"{one_of(known, unknown[0])}")
            try:
                sections[name] = cls_(**values)
            except TypeError as exc:
                raise ConfigError(f"{where}: [{name}] {exc}") from None
        return cls(**top, **sections).validate()

    def updated(self, **overrides: Any) -> RunConfig:
        """A validated copy with flat or nested overrides (``None`` values ignored)."""
        return merge(self.to_dict(), overrides)


def _merge_into(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in FLAT_KEYS and key not in TOP_LEVEL and not (key in SECTIONS and isinstance(value, Mapping)):
            table, name = FLAT_KEYS[key]
            out.setdefault(table, {})[name] = value
        elif key in SECTIONS and isinstance(value, Mapping):
            out.setdefault(key, {}).update(value)
        else:
            out[key] = value
    return out


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> RunConfig:
    """``base`` (nested or flat) with ``overrides`` on top, as a validated :class:`RunConfig`."""
    flat_base = _merge_into({}, base)
    return RunConfig.from_dict(_merge_into(flat_base, overrides))


def load_config(path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Defaults < TOML file < overrides (``None`` values in overrides are ignored).

    Raises:
        ConfigError: A missing or invalid file, an unknown key, a bad value.
    """
    doc: dict[str, Any] = {}
    where = "config"
    if path is not None:
        p = Path(path)
        where = f"config file {str(p)!r}"
        if not p.is_file():
            said = "is a folder" if p.is_dir() else "does not exist"
            raise ConfigError(f"{where} {said}; expected a TOML file")
        try:
            doc = tomllib.loads(read_utf8(p, where, ConfigError, expected="a TOML file"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where} is not valid TOML: {exc}") from None
        doc = dict(doc.get("run", doc)) if isinstance(doc.get("run"), Mapping) else doc
    return RunConfig.from_dict(_merge_into(_merge_into({}, doc), overrides or {}), where=where)
