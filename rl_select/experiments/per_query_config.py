"""The settings of a per-query run (:class:`PerQueryRunConfig`, one JSON file) and the checks every stage runs
before it loads anything."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rl_select.errors import ConfigError, one_of, read_utf8
from rl_select.lm.spec import ScorerSpec
from rl_select.mdp.per_query import PER_QUERY_REWARDS, FeatureView
from rl_select.mdp.per_query_policy import MODES
from rl_select.tasks import resolve_task


@dataclass
class PerQueryRunConfig:
    """The settings of one per-query run (every stage reads the same)."""

    train_tasks: list[str] = field(default_factory=lambda: ["sst2", "agnews", "trec", "subj", "rte", "cb",
                                                            "sst5", "mpqa", "atis"])
    eval_tasks: list[str] = field(default_factory=lambda: ["sst2", "agnews", "trec", "subj"])
    n_pool: int = 100
    n_val: int = 100
    n_test: int = 500
    m: int = 16
    k: int = 4
    n_queries: int = 1000
    episodes: int = 2000
    collect_seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    feature_set: str = "full"
    reward: str = "correct"
    train_steps: int = 3000
    cql_alpha: float = 0.1
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    cache: str | None = None
    modes: list[str] = field(default_factory=lambda: ["greedy", "critic", "verify"])
    adapt_episodes: int = 600
    adapt_repeat: int = 8
    stacker_queries: int = 300
    """Training queries per task whose four hand-written prompts are answered by the LM to fit the verify mode's
    answer stacker (:mod:`~rl_select.mdp.per_query_stacker`); 0: no stacker."""
    policy_run: str | None = None
    """Another run folder whose leave-one-task-out policies ``evaluate`` uses as they are (nothing is trained
    here): e.g. the pool-100 policies evaluated with a 1,000-example pool."""

    def __post_init__(self) -> None:
        """Refuse a value of the wrong type or range (one line naming the field), before any stage starts."""
        def integer(name: str, least: int) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ConfigError(f"per-query config {name}={value!r}; expected an integer >= {least}")

        def names(name: str, item: type, least: int | None = None) -> None:
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not value or not all(
                    isinstance(v, item) and not isinstance(v, bool) and (least is None or v >= least) for v in value):
                what = "strings" if item is str else f"integers >= {least}" if least is not None else "integers"
                raise ConfigError(f"per-query config {name}={value!r:.60}; expected a non-empty list of {what}")

        for name in ("n_pool", "n_test", "m", "k", "n_queries", "episodes", "train_steps", "adapt_repeat"):
            integer(name, 1)
        for name in ("n_val", "collect_seed", "adapt_episodes", "stacker_queries"):
            integer(name, 0)
        if self.k > self.m:
            raise ConfigError(f"per-query config k={self.k} exceeds m={self.m}; expected k <= m")
        names("train_tasks", str)
        names("eval_tasks", str)
        names("seeds", int, 0)
        names("hidden", int, 1)
        if not isinstance(self.feature_set, str):
            raise ConfigError(f"per-query config feature_set={self.feature_set!r:.60}; expected a name")
        FeatureView.of(self.feature_set)
        check_rewards([self.reward])
        names("modes", str)
        bad = [mode for mode in self.modes if mode not in MODES]
        if bad:
            raise ConfigError(f"per-query config modes={self.modes!r:.60}; {bad[0]!r} is not one of {list(MODES)}")
        if not isinstance(self.cql_alpha, (int, float)) or isinstance(self.cql_alpha, bool) or self.cql_alpha < 0:
            raise ConfigError(f"per-query config cql_alpha={self.cql_alpha!r}; expected a number >= 0")
        if self.policy_run is not None and not isinstance(self.policy_run, str):
            raise ConfigError(f"per-query config policy_run={self.policy_run!r:.60}; expected a run folder path")
        if self.cache is not None and not isinstance(self.cache, str):
            raise ConfigError(f"per-query config cache={self.cache!r}; expected a file path or 'none'")

    @classmethod
    def from_file(cls, path: str | Path | None) -> PerQueryRunConfig:
        """The settings in a JSON file of these fields (``None``: the defaults).

        Raises:
            ConfigError: Unreadable or not UTF-8, not a JSON object, an unknown field (named, with the
                closest valid ones), or a bad value (one line each).
        """
        if path is None:
            return cls()
        where = f"per-query config {str(path)!r}"
        try:
            fields = json.loads(read_utf8(Path(path), where, ConfigError, expected="a JSON object"))
        except ValueError as exc:
            raise ConfigError(f"{where} is not JSON ({str(exc).splitlines()[0]}); expected an object of "
                              "PerQueryRunConfig fields") from None
        if not isinstance(fields, dict):
            raise ConfigError(f"{where} holds {type(fields).__name__}; expected a JSON object of PerQueryRunConfig "
                              "fields")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(fields) - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown field {unknown[0]!r}; expected some of {one_of(known, unknown[0])}")
        return cls(**fields)

    def scorer_spec(self) -> ScorerSpec:
        """The bundled model, calibrated (the reference protocol)."""
        return ScorerSpec(model="bundled", calibrate=True)


def check_rewards(rewards: Sequence[str]) -> None:
    """Refuse a reward that is not a per-query terminal reward (one line)."""
    for reward in rewards:
        if reward not in PER_QUERY_REWARDS:
            raise ConfigError(f"per-query reward {reward!r}; expected one of {list(PER_QUERY_REWARDS)}")


def check_task_name(name: str) -> None:
    """Refuse, without loading it, a task :func:`task_of` cannot find (see :func:`~rl_select.tasks.resolve_task`)."""
    if not isinstance(name, str):
        raise ConfigError(f"per-query task {name!r}; expected a task name")
    resolve_task(name)
