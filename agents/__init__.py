"""Learners that choose few-shot demonstrations: tabular Q, masked DQN (SB3), offline CQL-DQN.

Every agent implements :class:`agents.base.Agent` (``learn`` / ``act`` / ``save`` / ``load``) and registers
with :func:`~agents.registry.register_agent`, declaring what it needs (:class:`~agents.registry.AgentTags`);
``AGENTS`` (name -> class) and :func:`agent_class` load the built-in agents on first use.
Names are imported lazily, so ``import agents.rollouts`` (used by collection workers) does not pull in
torch or stable-baselines3.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from agents.registry import AgentTags, agent_class, load_agents, register_agent

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
    "Episode": "agents.rollout_store",
    "RolloutStore": "agents.rollout_store",
    "collect": "agents.rollouts",
    "collect_random": "agents.rollouts",
}

__all__ = [
    "AGENTS",
    "AgentTags",
    "agent_class",
    "load_agents",
    "register_agent",
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
    from agents.rollout_store import Episode, RolloutStore
    from agents.rollouts import collect, collect_random
    from agents.tabular_q import TabularQAgent, exhaustive_best


def __getattr__(name: str) -> Any:
    if name == "AGENTS":  # the registry, its built-in agents registered
        return load_agents()
    if name not in _EXPORTS:
        raise AttributeError(f"module 'agents' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
