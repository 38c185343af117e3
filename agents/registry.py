"""The agent registry: each agent class declares its name and what it needs, like the selectors'.

``@register_agent`` adds a class to :data:`AGENTS` under ``cls.name``; the class declares ``tags``
(:class:`AgentTags`: online env or logged rollouts, a fixed pool, a policy to export, its episodes in the
training env) and builds itself from the run's agent settings (``Agent.train_from``). Training and the
ablation estimates read these instead of branching on agent names.

The built-in agents register when their modules are imported, which :func:`agent_class` and
:func:`load_agents` do on first use; this module itself needs neither torch nor stable-baselines3.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from rl_select.errors import ConfigError

if TYPE_CHECKING:
    from agents.base import Agent

BUILTIN_MODULES = ("agents.tabular_q", "agents.dqn", "agents.offline")
"""Modules whose agents register on import (their order is the registry's)."""


class AgentSettings(Protocol):
    """The run settings an agent reads (``RunConfig.agent``)."""

    episodes: int
    train_steps: int
    hidden: list[int]
    cql_alpha: float
    val_episodes: int
    q_target: str


@dataclass(frozen=True, kw_only=True)
class AgentTags:
    """An agent's declaration: where it learns from and what it produces. Every field is required.

    Attributes:
        learns_from: ``"env"`` (plays episodes in the training env) or ``"rollouts"`` (learns from logged
            random episodes, collected into one rollout store per task first).
        fixed_pool: Its env keeps one fixed candidate pool of one task (the state is the ordered tuple of
            pool indices), so it trains on a single task.
        exports_policy: It exports a :class:`~rl_select.mdp.policy.SelectorPolicy` (a Q-network over
            candidate features) for the policy selectors.
        env_episodes: ``env_episodes(settings, k)``: episodes it plays in the training env, each costing an
            episode's LM rows (logged rollouts not included): the training-rows estimate.
    """

    learns_from: Literal["env", "rollouts"]
    fixed_pool: bool
    exports_policy: bool
    env_episodes: Callable[[AgentSettings, int], int]


AGENTS: dict[str, type[Agent]] = {}
"""Registered agents by name (``Agent.name``), in registration order."""


def register_agent(cls: type[Agent]) -> type[Agent]:
    """Class decorator: add ``cls`` to :data:`AGENTS` under ``cls.name``.

    Raises:
        ConfigError: The name is taken by another class, or the class declares no ``tags`` of its own.
    """
    if cls.name in AGENTS and AGENTS[cls.name] is not cls:
        raise ConfigError(f"agent name {cls.name!r} is already registered by {AGENTS[cls.name]}")
    if not isinstance(vars(cls).get("tags"), AgentTags):
        raise ConfigError(f"agent {cls.name!r} ({cls.__qualname__}) declares no tags; expected a class attribute "
                          "tags = AgentTags(...)")
    AGENTS[cls.name] = cls
    return cls


def load_agents() -> dict[str, type[Agent]]:
    """:data:`AGENTS`, the built-in agents registered."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return AGENTS


def agent_class(name: str) -> type[Agent]:
    """The agent class registered as ``name``.

    Raises:
        ConfigError: An unknown name, with the known ones.
    """
    known = load_agents()
    if name not in known:
        raise ConfigError(f"unknown agent {name!r}; expected one of {list(known)}")
    return known[name]
