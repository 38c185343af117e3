"""Learners that choose few-shot demonstrations: tabular Q, masked DQN (SB3), offline CQL-DQN.

Every agent implements :class:`agents.base.Agent` (``learn`` / ``act`` / ``save`` / ``load``).
Names are imported lazily, so ``import agents.rollouts`` (used by collection workers) does not pull in
torch or stable-baselines3.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

AGENTS: dict[str, str] = {
    "tabular": "agents.tabular_q:TabularQAgent",
    "dqn": "agents.dqn:DQNAgent",
    "offline": "agents.offline:OfflineCQLAgent",
}
"""The agent registry: config name (= ``Agent.name``) -> ``"module:class"``. Adding an agent is one entry."""


def agent_class(name: str) -> type:
    """The agent class registered as ``name``.

    Raises:
        ConfigError: An unknown name, with the known ones.
    """
    from rl_select.errors import ConfigError

    if name not in AGENTS:
        raise ConfigError(f"unknown agent {name!r}; expected one of {list(AGENTS)}")
    module, cls = AGENTS[name].split(":")
    return getattr(importlib.import_module(module), cls)


_EXPORTS = {
    "Agent": "agents.base",
    "ArtifactError": "agents.base",
    "evaluate": "agents.base",
    "run_episode": "agents.base",
    "TabularQAgent": "agents.tabular_q",
    "exhaustive_best": "agents.tabular_q",
    "CandidateQPolicy": "agents.dqn",
    "MaskedDQN": "agents.dqn",
    "DQNAgent": "agents.dqn",
    "OfflineCQLAgent": "agents.offline",
    "Episode": "agents.rollouts",
    "RolloutStore": "agents.rollouts",
    "collect": "agents.rollouts",
    "collect_random": "agents.rollouts",
}

__all__ = [
    "AGENTS",
    "agent_class",
    "Agent",
    "ArtifactError",
    "CandidateQPolicy",
    "DQNAgent",
    "Episode",
    "MaskedDQN",
    "OfflineCQLAgent",
    "RolloutStore",
    "TabularQAgent",
    "collect",
    "collect_random",
    "evaluate",
    "exhaustive_best",
    "run_episode",
]

if TYPE_CHECKING:  # pragma: no cover
    from agents.base import Agent, ArtifactError, evaluate, run_episode
    from agents.dqn import CandidateQPolicy, DQNAgent, MaskedDQN
    from agents.offline import OfflineCQLAgent
    from agents.rollouts import Episode, RolloutStore, collect, collect_random
    from agents.tabular_q import TabularQAgent, exhaustive_best


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'agents' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
