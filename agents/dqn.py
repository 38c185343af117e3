"""Masked DQN on stable-baselines3 with the candidate-scoring Q-network.

Three pieces, as SB3's ``dqn/dqn.py`` beside ``dqn/policies.py``:

* :class:`CandidateQPolicy` — an SB3 policy whose ``q_net`` and ``q_net_target`` ARE
  :class:`~rl_select.mdp.qnet.CandidateQNet` instances over the Dict observation (``"state"``,
  ``"candidates"``, ``"action_mask"``); its greedy choice is the argmax of
  :func:`~rl_select.mdp.qnet.masked_q`.
* :class:`MaskedDQN` — ``DQN`` with masks done properly, not by reward penalties:

  - exploration (the warm-up before ``learning_starts`` and every epsilon draw) samples uniformly
    among the VALID actions (``_sample_action`` and ``predict`` are overridden);
  - the greedy choice masks (the policy above);
  - the TD target's max runs over the NEXT observation's ``"action_mask"`` as stored in SB3's
    ``DictReplayBuffer`` (``train`` is overridden; :func:`agents.base.masked_td_target`). A terminal
    row's all-False mask gives 0 and is multiplied by ``(1 - done)``; values are finite, never NaN.

* :class:`DQNAgent` — the :class:`agents.base.Agent` wrapper: ``learn(env, total_timesteps, seed)``,
  ``act``, and ``save`` / ``load`` of ONE safetensors file (the ``CandidateQNet`` state_dict + JSON
  hyper-parameters), which needs neither SB3 nor gymnasium to load.

Checkpoints: :meth:`DQNAgent.save_checkpoint` uses SB3's own ``save`` (a zip with a pickled part,
holding the replay-free algorithm state and optimizer) to resume training; load those only from
trusted places. Anything shipped or shared goes through :meth:`DQNAgent.save`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import DQN
from stable_baselines3.common.buffers import DictReplayBuffer
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch.nn import functional as F

from agents.base import (
    OBS_KEYS,
    QNetAgent,
    masked_td_target,
)
from agents.registry import AgentSettings, AgentTags, register_agent
from rl_select.errors import SelectionError
from rl_select.mdp.qnet import CandidateQNet, masked_q


def _check_obs_space(space: spaces.Space) -> tuple[int, int, int]:
    """``(state_dim, n_candidates, cand_dim)`` of a contract-conforming Dict space, else a clear error."""
    if not isinstance(space, spaces.Dict) or any(k not in space.spaces for k in OBS_KEYS):
        raise SelectionError(
            f"MaskedDQN needs a Dict observation with keys {list(OBS_KEYS)} (see docs/mdp.md); got {space}"
        )
    state, cands, mask = space["state"], space["candidates"], space["action_mask"]
    if len(state.shape or ()) != 1 or len(cands.shape or ()) != 2:
        raise SelectionError(f"expected 'state' (S,) and 'candidates' (N, C); got {state.shape} and {cands.shape}")
    n = cands.shape[0]
    if tuple(mask.shape or ()) != (n + 1,):
        raise SelectionError(f"'action_mask' has shape {mask.shape}; expected ({n + 1},) for {n} candidates + STOP")
    return state.shape[0], n, cands.shape[1]


def sample_valid_actions(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniform draw among the valid actions of each row.

    Args:
        masks: Bool (or 0/1), shape ``(B, A)``.
        rng: The generator.

    Returns:
        int64 actions, shape ``(B,)``.

    Raises:
        SelectionError: If a row has no valid action.
    """
    m = np.asarray(masks).astype(bool)
    out = np.empty(m.shape[0], dtype=np.int64)
    for i, row in enumerate(m):
        valid = np.flatnonzero(row)
        if valid.size == 0:
            raise SelectionError("no valid action: an action mask is all False (the episode is over; reset the env)")
        out[i] = valid[rng.integers(valid.size)]
    return out


class CandidateQPolicy(BasePolicy):
    """SB3 policy: ``q_net`` / ``q_net_target`` are :class:`CandidateQNet`; greedy choice is masked.

    Args:
        observation_space: The contract's Dict space.
        action_space: ``Discrete(N + 1)``.
        lr_schedule: Learning-rate schedule (``lr_schedule(1)`` is the initial rate).
        hidden: Hidden widths of the Q-network's MLPs.
        optimizer_class: Optimizer (Adam, as SB3's DQN).
        optimizer_kwargs: Extra optimizer arguments.
    """

    q_net: CandidateQNet
    q_net_target: CandidateQNet

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        lr_schedule: Schedule,
        hidden: Sequence[int] = (64, 64),
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            observation_space,
            action_space,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            normalize_images=False,
        )
        state_dim, n, cand_dim = _check_obs_space(observation_space)
        if not isinstance(action_space, spaces.Discrete) or int(action_space.n) != n + 1:
            raise SelectionError(f"action space {action_space} must be Discrete({n + 1}) for {n} candidates + STOP")
        self.hidden = tuple(int(h) for h in hidden)
        self.q_net = CandidateQNet(state_dim, cand_dim, self.hidden).to(self.device)
        self.q_net_target = CandidateQNet(state_dim, cand_dim, self.hidden).to(self.device)
        self.q_net_target.load_state_dict(self.q_net.state_dict())
        self.q_net_target.train(False)
        self.optimizer = self.optimizer_class(self.q_net.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def q_values(self, obs: PyTorchObs, *, target: bool = False) -> th.Tensor:
        """Unmasked Q-values of a batch, shape ``(B, N + 1)``.

        Args:
            obs: Dict of tensors: ``"state"`` (B, S), ``"candidates"`` (B, N, C), ``"action_mask"`` (B, N + 1).
            target: Use ``q_net_target``.
        """
        assert isinstance(obs, dict)
        net = self.q_net_target if target else self.q_net
        return net(obs["state"].float(), obs["candidates"].float())

    def forward(self, obs: PyTorchObs, deterministic: bool = True) -> th.Tensor:
        return self._predict(obs, deterministic=deterministic)

    def _predict(self, observation: PyTorchObs, deterministic: bool = True) -> th.Tensor:
        """Greedy valid actions, shape ``(B,)`` (argmax of the masked Q-values)."""
        assert isinstance(observation, dict)
        q = masked_q(self.q_values(observation), observation["action_mask"].bool())
        return q.argmax(dim=1).reshape(-1)

    def set_training_mode(self, mode: bool) -> None:
        self.q_net.train(mode)
        self.training = mode

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            hidden=self.hidden,
            lr_schedule=self._dummy_schedule,
            optimizer_class=self.optimizer_class,
            optimizer_kwargs=self.optimizer_kwargs,
        )
        return data


class MaskedDQN(DQN):
    """SB3 ``DQN`` that never explores, chooses or bootstraps through a masked action.

    Takes every ``DQN`` argument; the defaults that differ: ``policy=CandidateQPolicy``,
    ``gamma=1.0`` (finite horizon), ``replay_buffer_class=DictReplayBuffer`` (masks of the next
    observation reach the TD target), ``device="cpu"``. Exploration draws come from a
    ``numpy.random.Generator`` seeded with ``seed`` (not the global seeder).
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {"CandidateQPolicy": CandidateQPolicy}
    policy: CandidateQPolicy
    q_net: CandidateQNet
    q_net_target: CandidateQNet

    def __init__(self, policy: str | type[BasePolicy] = CandidateQPolicy, env: Any = None, **kwargs: Any) -> None:
        kwargs.setdefault("gamma", 1.0)
        kwargs.setdefault("replay_buffer_class", DictReplayBuffer)
        kwargs.setdefault("device", "cpu")
        self._explore_rng = np.random.default_rng(kwargs.get("seed"))
        super().__init__(policy, env, **kwargs)

    def _setup_model(self) -> None:
        _check_obs_space(self.observation_space)
        super()._setup_model()

    def set_random_seed(self, seed: int | None = None) -> None:
        super().set_random_seed(seed)
        if seed is not None:
            self._explore_rng = np.random.default_rng(seed)

    # ------------------------------------------------------------------------------ exploration

    def _masks_of(self, observation: Mapping[str, Any]) -> tuple[np.ndarray, bool]:
        """``(masks (B, N + 1) bool, vectorized)`` from a single or batched observation."""
        m = np.asarray(observation["action_mask"]).astype(bool)
        return (m, True) if m.ndim == 2 else (m.reshape(1, -1), False)

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Epsilon-greedy over VALID actions (per row); greedy = masked argmax.

        Returns:
            ``(actions, state)``; actions have shape ``(B,)`` for a batch, ``()`` for one observation.
        """
        if not isinstance(observation, Mapping):
            raise SelectionError("MaskedDQN.predict needs the Dict observation (with 'action_mask')")
        actions, state = self.policy.predict(observation, state, episode_start, deterministic=True)
        if not deterministic and self.exploration_rate > 0:
            masks, vectorized = self._masks_of(observation)
            acts = np.array(actions).reshape(-1).copy()
            explore = self._explore_rng.random(acts.shape[0]) < self.exploration_rate
            if explore.any():
                acts[explore] = sample_valid_actions(masks[explore], self._explore_rng)
            actions = acts if vectorized else acts.reshape(())
        return actions, state

    def _sample_action(
        self, learning_starts: int, action_noise: ActionNoise | None = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Warm-up: uniform among valid actions; afterwards :meth:`predict` (epsilon-greedy, masked)."""
        assert self._last_obs is not None, "self._last_obs was not set"
        assert isinstance(self._last_obs, dict)
        if self.num_timesteps < learning_starts:
            masks, _ = self._masks_of(self._last_obs)
            action = sample_valid_actions(masks, self._explore_rng)
        else:
            action, _ = self.predict(self._last_obs, deterministic=False)
            action = np.asarray(action).reshape(n_envs)
        return action, action

    # ------------------------------------------------------------------------------------- train

    def td_target(
        self,
        next_observations: dict[str, th.Tensor],
        rewards: th.Tensor,
        dones: th.Tensor,
        discounts: th.Tensor | float,
    ) -> th.Tensor:
        """``r + discount * (1 - done) * max_{a' valid in s'} Q_target(s', a')``, shape of ``rewards`` (B, 1)."""
        with th.no_grad():
            next_q = self.policy.q_values(next_observations, target=True)
            return masked_td_target(rewards, dones, next_q, next_observations["action_mask"], discounts)

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        """SB3's DQN update with the masked target (the next state's ``action_mask`` from the buffer)."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        losses = []
        for _ in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            discounts = data.discounts if data.discounts is not None else self.gamma
            target = self.td_target(data.next_observations, data.rewards, data.dones, discounts)  # type: ignore[arg-type]
            current = self.policy.q_values(data.observations)  # type: ignore[arg-type]
            current = th.gather(current, dim=1, index=data.actions.long())
            loss = F.smooth_l1_loss(current, target)
            losses.append(loss.item())
            self.policy.optimizer.zero_grad()
            loss.backward()
            th.nn.utils.clip_grad_norm_(self.policy.q_net.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()
        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", float(np.mean(losses)) if losses else float("nan"))

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_explore_rng"]


@register_agent
class DQNAgent(QNetAgent):
    """The :class:`~agents.base.Agent` wrapper around :class:`MaskedDQN`.

    Args:
        hidden: Hidden widths of the Q-network.
        seed: Seed for SB3 (network init, env seeding) and the exploration generator; ``learn``'s
            ``seed`` overrides it.
        device: Torch device.
        **dqn_kwargs: Any other ``DQN`` argument (``learning_rate``, ``buffer_size``,
            ``learning_starts``, ``batch_size``, ``target_update_interval``, ``exploration_fraction``,
            ``exploration_initial_eps``, ``exploration_final_eps``, ``train_freq``, ...). JSON-able.

    Attributes:
        model: The :class:`MaskedDQN` once ``learn`` ran (``None`` after ``load``).
        qnet: The online :class:`CandidateQNet` (after ``learn`` or ``load``).
        summary: Training summary.
    """

    name = "dqn"
    tags = AgentTags(learns_from="env", fixed_pool=False, exports_policy=True,
                     env_episodes=lambda settings, k: math.ceil(settings.train_steps / max(k, 1)))
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "learning_rate": 1e-3,
        "buffer_size": 50_000,
        "learning_starts": 200,
        "batch_size": 64,
        "train_freq": 1,
        "gradient_steps": 1,
        "target_update_interval": 500,
        "exploration_fraction": 0.5,
        "exploration_initial_eps": 1.0,
        "exploration_final_eps": 0.05,
        "gamma": 1.0,
    }

    def __init__(
        self, *, hidden: Sequence[int] = (64, 64), seed: int | None = 0, device: str = "cpu", **dqn_kwargs: Any
    ) -> None:
        self.hidden = tuple(int(h) for h in hidden)
        self.seed = seed
        self.device = device
        self.dqn_kwargs = {**self.DEFAULTS, **dqn_kwargs}
        self.model: MaskedDQN | None = None
        self.qnet: CandidateQNet | None = None
        self.summary: dict[str, Any] = {}

    @classmethod
    def train_from(cls, source: Any, settings: AgentSettings, *, seed: int, env: Any = None,
                   progress: bool = False) -> Self:
        """``settings.train_steps`` env steps in ``source``, learning from step ``min(200, train_steps / 4)``."""
        agent = cls(hidden=settings.hidden, seed=seed, learning_starts=min(200, settings.train_steps // 4))
        return agent.learn(source, total_timesteps=settings.train_steps, progress_bar=progress)

    def config(self) -> dict[str, Any]:
        """The constructor's arguments as JSON."""
        return {"hidden": list(self.hidden), "seed": self.seed, "device": self.device, **self.dqn_kwargs}

    def learn(self, env: Any, total_timesteps: int, seed: int | None = None, **learn_kwargs: Any) -> Self:
        """Train with :class:`MaskedDQN` in ``env`` (built on the first call, continued afterwards).

        Args:
            env: A contract-conforming Gymnasium env (or an SB3 VecEnv of them).
            total_timesteps: Environment steps for this call.
            seed: Overrides the constructor's seed (first call only).
            **learn_kwargs: Passed to ``MaskedDQN.learn`` (``callback``, ``log_interval``, ...).

        Returns:
            ``self``.
        """
        if self.model is None:
            seed = self.seed if seed is None else seed
            self.model = MaskedDQN(
                CandidateQPolicy,
                env,
                policy_kwargs={"hidden": self.hidden},
                seed=seed,
                device=self.device,
                **self.dqn_kwargs,
            )
            if self.qnet is not None:  # continue from loaded weights
                self.model.q_net.load_state_dict(self.qnet.state_dict())
                self.model.q_net_target.load_state_dict(self.qnet.state_dict())
            reset = True
        else:
            self.model.set_env(env)
            reset = False
        self.model.learn(total_timesteps, reset_num_timesteps=reset, **learn_kwargs)
        self.qnet = self.model.q_net
        self.summary = {
            "timesteps": int(self.model.num_timesteps),
            "updates": int(self.model._n_updates),
            "episodes": int(self.model._episode_num),
            "seed": self.model.seed,
        }
        return self

    def save_checkpoint(self, path: str | Path) -> Path:
        """SB3's own ``save`` (zip; its data part may hold pickled objects): for resuming training only."""
        if self.model is None:
            raise SelectionError("no SB3 model to checkpoint: call learn() first")
        self.model.save(path)
        return Path(path) if str(path).endswith(".zip") else Path(f"{path}.zip")

    @classmethod
    def load_checkpoint(cls, path: str | Path, env: Any = None) -> DQNAgent:
        """Resume from :meth:`save_checkpoint` (trusted files only: SB3 may unpickle)."""
        model = MaskedDQN.load(path, env=env, device="cpu")
        agent = cls(hidden=model.policy.hidden, seed=model.seed, device=str(model.device))
        agent.model, agent.qnet = model, model.q_net
        return agent
