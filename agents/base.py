"""The one agent interface, and the helpers every agent shares.

* :class:`Agent` — ``learn`` / ``act`` / ``save`` / ``load``; ``tags`` (:class:`~agents.registry.AgentTags`)
  declares what it learns from, and ``train_from`` builds and trains it from the run's agent settings.
  ``act`` is greedy and never returns a masked action: the public :meth:`Agent.act` checks the mask before
  and the answer after calling the subclass's ``_act`` (as SB3's callbacks wrap ``_on_step``).
* Checkpoints are the one artifact format of :mod:`rl_select.mdp.artifacts` (``kind = "agent"``: agent
  name, hyper-parameters, training summary, and for Q-network agents the same ``"qnet"`` entry the
  exported policy has). Loading never executes code (no pickle); a file that fails its checks raises
  :class:`~rl_select.errors.ArtifactError`.
* :func:`greedy_action`, :func:`obs_to_tensors`, :func:`masked_td_target` — the masked greedy choice
  and the masked TD target shared by the DQN and offline agents.
* :func:`evaluate` — mean greedy return of an agent in an env that follows ``docs/mdp.md`` (Dict
  observation with ``"state"``, ``"candidates"``, ``"action_mask"``), through the one rollout loop
  :func:`rl_select.mdp.rollout.run_episode` (re-exported here with :class:`EpisodeResult`).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from torch import Tensor

from agents.registry import AgentSettings, AgentTags
from rl_select.errors import ArtifactError as ArtifactError
from rl_select.errors import SelectionError
from rl_select.mdp.artifacts import qnet_document, qnet_from_document, read_artifact, write_artifact
from rl_select.mdp.qnet import CandidateQNet, masked_q
from rl_select.mdp.rollout import ActFn as ActFn
from rl_select.mdp.rollout import EpisodeResult as EpisodeResult
from rl_select.mdp.rollout import run_episode as run_episode

OBS_KEYS = ("state", "candidates", "action_mask")


# ----------------------------------------------------------------------------------------------------- interface


class Agent(ABC):
    """A learner that picks the next demonstration (or STOP) from an observation and its action mask.

    Subclasses set :attr:`name` and :attr:`tags`, implement ``learn``, ``_act``, ``save`` and ``load``, and
    register with :func:`~agents.registry.register_agent`.
    """

    name: ClassVar[str] = "agent"
    tags: ClassVar[AgentTags]

    @classmethod
    @abstractmethod
    def train_from(cls, source: Any, settings: AgentSettings, *, seed: int, env: Any = None,
                   progress: bool = False) -> Self:
        """A new agent built from the run's agent ``settings`` and trained on ``source``.

        Args:
            source: The training env (``tags.learns_from == "env"``) or the logged episodes (``"rollouts"``).
            settings: The run's agent settings (``RunConfig.agent``).
            seed: The run's seed.
            env: An env to validate in, for agents that learn from rollouts (``None``: none).
            progress: Show a progress bar.
        """

    @abstractmethod
    def learn(self, *args: Any, **kwargs: Any) -> Self:
        """Train the agent (from an env or from logged rollouts, see the subclass) and return it."""

    def act(self, obs: Mapping[str, Any], mask: np.ndarray, *, chosen: Sequence[int] | None = None) -> int:
        """The greedy action; never a masked one.

        Args:
            obs: One (unbatched) observation: ``"state"`` (S,), ``"candidates"`` (N, C),
                ``"action_mask"`` (N + 1,).
            mask: Valid actions, bool, shape ``(N + 1,)`` (the env's ``action_masks()``).
            chosen: The ordered pool indices chosen so far (the env's ``info["chosen"]``); needed by
                agents whose state is the ordered tuple (tabular), ignored by the others.

        Returns:
            An action ``a`` with ``mask[a]`` True (``a == N`` is STOP).

        Raises:
            SelectionError: If no action is valid (the episode is over).
        """
        mask = check_mask(mask)
        action = int(self._act(obs, mask, chosen))
        if not (0 <= action < mask.shape[0]) or not mask[action]:
            raise AssertionError(f"{type(self).__name__} chose masked action {action}; this is a bug")
        return action

    @abstractmethod
    def _act(self, obs: Mapping[str, Any], mask: np.ndarray, chosen: Sequence[int] | None) -> int:
        """The greedy action for a checked ``mask`` (bool, (N + 1,), at least one True)."""

    @abstractmethod
    def save(self, path: str | Path) -> Path:
        """Write the agent as one safetensors file (weights + JSON metadata); return the path."""

    @classmethod
    @abstractmethod
    def load(cls, path: str | Path) -> Self:
        """Read an agent written by :meth:`save` (no code is executed)."""


def check_mask(mask: Any) -> np.ndarray:
    """Return ``mask`` as a 1-D bool array; raise if it is not 1-D or has no valid action.

    Args:
        mask: Action mask of shape ``(N + 1,)``; bool or 0/1 integers.

    Returns:
        Bool array, shape ``(N + 1,)``.
    """
    m = np.asarray(mask)
    if m.ndim != 1:
        raise ValueError(f"action mask has shape {m.shape}; expected (N + 1,) for one observation")
    m = m.astype(bool)
    if not m.any():
        raise SelectionError("no valid action: the action mask is all False (the episode is over; reset the env)")
    return m


# ------------------------------------------------------------------------------------------ shared Q-net helpers


def obs_to_tensors(obs: Mapping[str, Any], device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor]:
    """Batched tensors from one observation or a batch of them.

    Args:
        obs: ``"state"`` (S,) or (B, S); ``"candidates"`` (N, C) or (B, N, C); ``"action_mask"``
            (N + 1,) or (B, N + 1). Numpy arrays or tensors.
        device: Where to put the tensors.

    Returns:
        ``(state (B, S) float32, cands (B, N, C) float32, mask (B, N + 1) bool)``.
    """
    missing = [k for k in OBS_KEYS if k not in obs]
    if missing:
        raise KeyError(f"observation lacks {missing}; expected a Dict observation with keys {list(OBS_KEYS)}")
    state, cands, mask = (torch.as_tensor(np.asarray(v)) if not isinstance(v, Tensor) else v
                          for v in (obs["state"], obs["candidates"], obs["action_mask"]))
    if state.ndim == 1:
        state, cands, mask = state.unsqueeze(0), cands.unsqueeze(0), mask.unsqueeze(0)
    return state.to(device, torch.float32), cands.to(device, torch.float32), mask.to(device).bool()


@torch.no_grad()
def greedy_action(qnet: CandidateQNet, obs: Mapping[str, Any], mask: np.ndarray) -> int:
    """``argmax`` of the masked Q-values for one observation (ties: lowest index).

    Args:
        qnet: The Q-network.
        obs: One observation (see :func:`obs_to_tensors`).
        mask: Valid actions, bool, shape ``(N + 1,)``; used instead of ``obs["action_mask"]``.

    Returns:
        A valid action index.
    """
    device = next(qnet.parameters()).device
    state, cands, _ = obs_to_tensors(obs, device)
    q = qnet(state, cands)[0]
    m = torch.as_tensor(np.asarray(mask, dtype=bool), device=device)
    if q.shape != m.shape:
        raise ValueError(f"Q-values have shape {tuple(q.shape)} but the mask {tuple(m.shape)}; expected N + 1 each")
    return int(torch.argmax(masked_q(q, m)).item())


def masked_max(q: Tensor, mask: Tensor) -> Tensor:
    """Max over the valid actions of each row; 0 for a row with no valid action.

    Args:
        q: Q-values, shape ``(B, A)``.
        mask: Valid actions, shape ``(B, A)``.

    Returns:
        Shape ``(B,)``; finite (never NaN), also for all-masked rows.
    """
    m = mask.bool()
    best = masked_q(q, m).max(dim=1).values
    return torch.where(m.any(dim=1), best, torch.zeros_like(best))


def masked_td_target(
    rewards: Tensor, dones: Tensor, next_q: Tensor, next_mask: Tensor, gamma: float | Tensor
) -> Tensor:
    """One-step TD target ``r + gamma * (1 - done) * max_{a' valid in s'} Q(s', a')``.

    The max only runs over the NEXT state's valid actions (its ``"action_mask"`` from the replay
    buffer). A terminal next state's all-False mask gives 0, and ``(1 - done)`` zeroes it anyway;
    masked values are the finite :data:`~rl_select.mdp.qnet.MASKED_Q`, so nothing becomes NaN.

    Args:
        rewards: Shape ``(B,)`` or ``(B, 1)``.
        dones: 1.0 where the transition ended the episode (terminated, not truncated), same shape.
        next_q: Target-network Q-values of the next state, shape ``(B, A)``.
        next_mask: Valid actions of the next state, shape ``(B, A)``.
        gamma: Discount (1.0 for our finite-horizon MDP), a float or a tensor like ``rewards``.

    Returns:
        Targets with the shape of ``rewards``.
    """
    best = masked_max(next_q, next_mask).reshape(rewards.shape)
    return rewards + (1.0 - dones) * gamma * best



# ------------------------------------------------------------------------------------------------- artifacts


def save_agent(path: str | Path, *, agent: str, tensors: Mapping[str, Tensor], doc: Mapping[str, Any]) -> Path:
    """Write an agent's tensors and JSON document in the one artifact format (``kind = "agent"``).

    Args:
        path: Target file (``.safetensors`` is conventional, not enforced).
        agent: The agent's :attr:`Agent.name`; :func:`load_agent` checks it.
        tensors: Named tensors (copied to CPU, made contiguous).
        doc: JSON-serialisable hyper-parameters and training summary.

    Returns:
        The path written.
    """
    return write_artifact(path, kind="agent", tensors=tensors, doc={**dict(doc), "agent": agent})


def load_agent(path: str | Path, *, agent: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read and check a file written by :func:`save_agent`.

    Returns:
        ``(tensors, doc)``.

    Raises:
        ArtifactError: Missing file, not an rl_select artifact, not an agent's, another agent's, another
            format version, or tensors that do not match the recorded sha256.
    """
    tensors, doc = read_artifact(path, kind="agent", what="agent file")
    if doc.get("agent") != agent:
        raise ArtifactError(f"agent file {str(path)!r} holds a {doc.get('agent')!r} agent; expected {agent!r}")
    return tensors, doc


class QNetAgent(Agent):
    """An agent whose learned weights are one :class:`CandidateQNet` ``self.qnet`` (DQN, offline CQL-DQN):
    greedy acting, saving and loading are the same for all of them.

    Subclasses set ``qnet``, ``summary`` and ``device``, and implement ``learn`` and ``config()`` (the JSON
    keyword arguments that rebuild the agent).
    """

    qnet: CandidateQNet | None
    summary: dict[str, Any]
    device: Any

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments (JSON) that rebuild this agent."""

    def _act(self, obs: Mapping[str, Any], mask: np.ndarray, chosen: Sequence[int] | None) -> int:
        if self.qnet is None:
            raise SelectionError(f"{type(self).__name__} has no Q-network yet; call learn() or load() first")
        self.qnet.eval()
        return greedy_action(self.qnet, obs, mask)

    def save(self, path: str | Path) -> Path:
        """A checkpoint: the ``CandidateQNet`` state_dict + JSON config and summary (``kind = "agent"``).

        The exported :class:`~rl_select.mdp.policy.SelectorPolicy` stores the same network the same way
        (:mod:`rl_select.mdp.artifacts`); :meth:`from_policy` continues from one.
        """
        if self.qnet is None:
            raise SelectionError(f"nothing to save: {type(self).__name__} has not learned yet")
        doc = {"config": self.config(), "qnet": qnet_document(self.qnet), "summary": self.summary}
        return save_agent(path, agent=self.name, tensors=self.qnet.state_dict(), doc=doc)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read :meth:`save`'s file; ``act`` works at once, ``learn`` continues from these weights."""
        tensors, doc = load_agent(path, agent=cls.name)
        agent = cls(**doc["config"])
        agent.qnet = qnet_from_document(doc["qnet"], tensors, where=f"agent file {str(path)!r}").to(agent.device)
        agent.summary = dict(doc.get("summary", {}))
        return agent

    @classmethod
    def from_policy(cls, policy: Any) -> Self:
        """An agent holding an exported policy's network (``policy.training["agent_config"]`` rebuilds it)."""
        agent = cls(**dict(policy.training.get("agent_config", {})))
        agent.qnet = copy.deepcopy(policy.qnet).to(agent.device).eval()
        agent.summary = dict(policy.training.get("summary", {}))
        return agent


# ------------------------------------------------------------------------------------------------ evaluation

# The rollout loop is rl_select.mdp.rollout.run_episode (one loop for evaluation, collection, tabular
# Q-learning and the exported policy); ActFn / EpisodeResult / run_episode stay importable from here.


def evaluate(agent: Agent, env: Any, *, n_episodes: int = 1, seed: int = 0) -> float:
    """Mean return of ``agent``'s greedy episodes (:func:`run_episode`); episode ``j`` resets with ``seed + j``.

    Args:
        agent: The agent; acts with ``agent.act(obs, mask, chosen=chosen)``.
        env: An env following ``docs/mdp.md`` (or anything :func:`run_episode` accepts).
        n_episodes: Episodes to average, ``>= 1``.
        seed: Reset seed of the first episode.

    Returns:
        The mean undiscounted return.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes={n_episodes} must be >= 1")
    total = 0.0
    for j in range(n_episodes):
        total += run_episode(env, lambda o, m, c: agent.act(o, m, chosen=c), seed=seed + j).ret
    return total / n_episodes
