"""The one agent interface, and the helpers every agent shares.

* :class:`Agent` — ``learn`` / ``act`` / ``save`` / ``load``. ``act`` is greedy and never returns a
  masked action: the public :meth:`Agent.act` checks the mask before and the answer after calling the
  subclass's ``_act`` (as SB3's callbacks wrap ``_on_step``).
* Artifacts are ONE ``.safetensors`` file: the tensors, plus a JSON document in the file's metadata
  (format, format version, agent name, hyper-parameters, training summary, sha256 of the tensor
  bytes). Loading never executes code (no pickle); a file that fails its checks raises
  :class:`ArtifactError`. Read the JSON with :func:`read_artifact_meta`.
* :func:`greedy_action`, :func:`obs_to_tensors`, :func:`masked_td_target` — the masked greedy choice
  and the masked TD target shared by the DQN and offline agents.
* :func:`run_episode` / :func:`evaluate` — roll a policy out in an env that follows
  ``docs/mdp.md`` (Dict observation with ``"state"``, ``"candidates"``, ``"action_mask"``).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor

from rl_select.artifacts import tensors_sha256, write_safetensors
from rl_select.errors import RLSelectError, SelectionError
from rl_select.qnet import CandidateQNet, masked_q

ARTIFACT_FORMAT = "rl_select.agent"
ARTIFACT_VERSION = 1
OBS_KEYS = ("state", "candidates", "action_mask")


class ArtifactError(RLSelectError):
    """An agent file is missing, not an rl_select agent artifact, of another agent, or corrupt."""


# ----------------------------------------------------------------------------------------------------- interface


class Agent(ABC):
    """A learner that picks the next demonstration (or STOP) from an observation and its action mask.

    Subclasses set :attr:`name` and implement ``learn``, ``_act``, ``save`` and ``load``.
    """

    name: ClassVar[str] = "agent"

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
    masked values are the finite :data:`~rl_select.qnet.MASKED_Q`, so nothing becomes NaN.

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


def save_artifact(path: str | Path, *, agent: str, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Path:
    """Write tensors and a JSON document to one safetensors file, atomically (temp file + rename).

    Args:
        path: Target file (``.safetensors`` is conventional, not enforced).
        agent: The agent's :attr:`Agent.name`; :func:`load_artifact` checks it.
        tensors: Named tensors (copied to CPU, made contiguous).
        meta: JSON-serialisable hyper-parameters and training summary.

    Returns:
        The path written.
    """
    doc = {
        "format": ARTIFACT_FORMAT,
        "format_version": ARTIFACT_VERSION,
        "agent": agent,
        "sha256": tensors_sha256(tensors),
        **dict(meta),
    }
    return write_safetensors(path, tensors, {"format": ARTIFACT_FORMAT, "rl_select": json.dumps(doc, sort_keys=True)})


def read_artifact_meta(path: str | Path) -> dict[str, Any]:
    """The JSON document of an agent artifact (without reading the tensors)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"agent file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise ArtifactError(f"{str(path)!r} is not a safetensors file: {e}") from e
    if metadata.get("format") != ARTIFACT_FORMAT or "rl_select" not in metadata:
        raise ArtifactError(
            f"{str(path)!r} is not an rl_select agent file (metadata format {metadata.get('format')!r})"
        )
    try:
        doc = json.loads(metadata["rl_select"])
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{str(path)!r} has unreadable agent metadata: {e}") from e
    if doc.get("format_version") != ARTIFACT_VERSION:
        raise ArtifactError(
            f"{str(path)!r} has agent format version {doc.get('format_version')!r}; this code reads {ARTIFACT_VERSION}"
        )
    return doc


def load_artifact(path: str | Path, *, agent: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read and check a file written by :func:`save_artifact`.

    Args:
        path: The file.
        agent: The expected agent name.

    Returns:
        ``(tensors, meta)``.

    Raises:
        ArtifactError: Missing file, not an agent artifact, another agent's file, other format
            version, or tensors that do not match the recorded sha256.
    """
    doc = read_artifact_meta(path)
    if doc.get("agent") != agent:
        raise ArtifactError(f"{str(path)!r} holds a {doc.get('agent')!r} agent; expected {agent!r}")
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if tensors_sha256(tensors) != doc.get("sha256"):
        raise ArtifactError(f"{str(path)!r}: tensor bytes do not match the recorded sha256; the file is corrupt")
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
        """One safetensors file: the ``CandidateQNet`` state_dict + JSON config and summary."""
        if self.qnet is None:
            raise SelectionError(f"nothing to save: {type(self).__name__} has not learned yet")
        meta = {"config": self.config(), "qnet": qnet_config(self.qnet), "summary": self.summary}
        return save_artifact(path, agent=self.name, tensors=self.qnet.state_dict(), meta=meta)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read :meth:`save`'s file; ``act`` works at once, ``learn`` continues from these weights."""
        tensors, meta = load_artifact(path, agent=cls.name)
        agent = cls(**meta["config"])
        agent.qnet = qnet_from_config(meta["qnet"], tensors).to(agent.device).eval()
        agent.summary = dict(meta.get("summary", {}))
        return agent


def qnet_config(qnet: CandidateQNet) -> dict[str, Any]:
    """JSON hyper-parameters that rebuild ``qnet`` (see :func:`qnet_from_config`)."""
    return {"state_dim": qnet.state_dim, "cand_dim": qnet.cand_dim, "hidden": list(qnet.hidden)}


def qnet_from_config(cfg: Mapping[str, Any], state_dict: Mapping[str, Tensor] | None = None) -> CandidateQNet:
    """Build a :class:`CandidateQNet` from :func:`qnet_config`'s dict and optionally load weights (strict)."""
    try:
        net = CandidateQNet(int(cfg["state_dim"]), int(cfg["cand_dim"]), tuple(int(h) for h in cfg["hidden"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"bad Q-network config {dict(cfg)!r}: {e}") from e
    if state_dict is not None:
        try:
            net.load_state_dict(dict(state_dict), strict=True)
        except RuntimeError as e:
            raise ArtifactError(f"Q-network weights do not match config {dict(cfg)!r}: {e}") from e
    return net


# ------------------------------------------------------------------------------------------------ evaluation


@dataclass
class EpisodeResult:
    """One rolled-out episode.

    Attributes:
        ret: Sum of rewards.
        actions: Actions taken, in order (``N`` is STOP).
        chosen: ``info["chosen"]`` at the end (pool indices), if the env reports it.
        lm_queries: ``info["lm_queries"]`` at the end, if reported.
    """

    ret: float
    actions: list[int] = field(default_factory=list)
    chosen: list[int] = field(default_factory=list)
    lm_queries: int | None = None


ActFn = Callable[[Mapping[str, Any], np.ndarray, Sequence[int]], int]


def run_episode(env: Any, act: ActFn, *, seed: int | None = None, max_steps: int = 10_000) -> EpisodeResult:
    """Roll one episode out with ``act(obs, mask, chosen)``.

    Args:
        env: A Gymnasium env following the MDP contract.
        act: Chooses an action from the observation, its bool mask (from ``obs["action_mask"]``), and
            the ordered chosen indices so far.
        seed: Passed to ``env.reset``.
        max_steps: Safety limit.

    Returns:
        The episode's :class:`EpisodeResult`.
    """
    obs, info = env.reset(seed=seed)
    res = EpisodeResult(ret=0.0)
    chosen: list[int] = list(info.get("chosen", []))
    for _ in range(max_steps):
        mask = np.asarray(obs["action_mask"]).astype(bool)
        a = int(act(obs, mask, chosen))
        res.actions.append(a)
        obs, r, terminated, truncated, info = env.step(a)
        res.ret += float(r)
        n = mask.shape[0] - 1
        chosen = list(info["chosen"]) if "chosen" in info else chosen + ([a] if a < n else [])
        if terminated or truncated:
            break
    res.chosen = chosen
    res.lm_queries = info.get("lm_queries")
    return res


def evaluate(agent: Agent, env: Any, *, n_episodes: int = 1, seed: int = 0) -> float:
    """Mean return of ``agent``'s greedy episodes; episode ``j`` resets with ``seed + j``."""
    if n_episodes < 1:
        raise ValueError(f"n_episodes={n_episodes} must be >= 1")
    total = 0.0
    for j in range(n_episodes):
        total += run_episode(env, lambda o, m, c: agent.act(o, m, chosen=c), seed=seed + j).ret
    return total / n_episodes
