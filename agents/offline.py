"""CQL-regularised DQN trained from logged rollouts (no env or LM call while training).

Zhang et al. (2022) learn demonstration selection offline from random-policy rollouts; this is that
recipe with the candidate-scoring :class:`~rl_select.mdp.qnet.CandidateQNet`, written as one readable loop
(CleanRL's ``dqn.py`` style) in :meth:`OfflineCQLAgent.learn`:

* TD loss: L1 (Zhang et al.; ``loss="smooth_l1"`` for Huber) between ``Q(s, a_data)`` and the masked
  target ``r + gamma * (1 - done) * max_{a' valid in s'} Q_target(s', a')``, ``gamma = 1``;
* CQL regulariser: ``logsumexp_{a valid in s} Q(s, a) - Q(s, a_data)``, weight ``cql_alpha``;
* AdamW; target network with a periodic hard update;
* best checkpoint by a validation score (see below), restored at the end.

Validation (the choice, documented): a true validation *return* needs the greedy policy to act, which
an offline dataset cannot answer. So:

* if ``learn`` gets an ``env``, the score is the mean return of greedy episodes in it (seeds
  ``eval_seed + j``). Those episodes DO query the LM (through the env's cached reward); training
  steps never do;
* otherwise the score is MINUS the training objective (L1 TD error + ``cql_alpha`` * CQL gap) on
  held-out EPISODES (``val_fraction`` of the store, split by episode with the seed), evaluated with
  the same target network. It picks the checkpoint that generalises best to unseen rollouts; it is
  not a return estimate (the predicted greedy value of a CQL network is deliberately pessimistic).

Determinism: the same episodes + the same seed give bit-identical weights on one machine (network
init under ``torch.manual_seed`` inside ``fork_rng``, batches from a local ``torch.Generator``, the
split from a local ``numpy`` generator, deterministic algorithms switched on while training).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F
from tqdm.auto import tqdm

from agents.base import (
    QNetAgent,
    evaluate,
    masked_td_target,
)
from agents.registry import AgentSettings, AgentTags, register_agent
from agents.rollout_store import Episode, RolloutStore
from agents.rollouts import stack_episodes
from rl_select.errors import DataError
from rl_select.mdp.qnet import CandidateQNet, masked_q

Batch = dict[str, Tensor]

Q_TARGETS: tuple[str, ...] = ("td", "mc")
"""Regression targets of the offline agent: the TD bootstrap, or the logged Monte-Carlo return-to-go."""


def eval_interval(train_steps: int) -> int:
    """Gradient steps between checkpoint checks when a run trains ``train_steps`` steps (about 8 checks)."""
    return max(1, train_steps // 8)


def eval_checks(train_steps: int) -> int:
    """Checkpoint checks in ``train_steps`` steps at :func:`eval_interval` (the last step always checks)."""
    interval = eval_interval(train_steps)
    return train_steps // interval + (1 if train_steps % interval else 0)


def cql_dqn_loss(
    qnet: CandidateQNet, target_net: CandidateQNet, b: Batch, *, gamma: float, cql_alpha: float, loss: str = "l1",
    target: str = "td",
) -> tuple[Tensor, Tensor, Tensor]:
    """The offline objective on one batch.

    Args:
        qnet: Online network.
        target_net: Target network (no gradient).
        b: Transitions: ``state`` (B, S), ``cands`` (B, N, C), ``mask`` (B, N + 1), ``action`` (B,),
            ``reward`` (B,), ``done`` (B,), ``next_state``, ``next_cands``, ``next_mask``.
        gamma: Discount.
        cql_alpha: Weight of the CQL term.
        loss: ``"l1"`` or ``"smooth_l1"``.
        target: ``"td"``: the masked max bootstrap above; ``"mc"``: the logged return-to-go ``b["rtg"]``
            (the value of the logging policy, so the greedy policy is one step of policy improvement over
            it; no bootstrap, so every step of a terminal-reward episode learns from its final reward
            at once).

    Returns:
        ``(total, td, cql)`` scalars.
    """
    with torch.no_grad():
        if target == "mc":
            goal = b["rtg"]
        else:
            next_q = target_net(b["next_state"], b["next_cands"])
            goal = masked_td_target(b["reward"], b["done"], next_q, b["next_mask"], gamma)
    q = qnet(b["state"], b["cands"])  # (B, N + 1)
    q_data = q.gather(1, b["action"].unsqueeze(1)).squeeze(1)
    td = F.l1_loss(q_data, goal) if loss == "l1" else F.smooth_l1_loss(q_data, goal)
    cql = (torch.logsumexp(masked_q(q, b["mask"]), dim=1) - q_data).mean()
    return td + cql_alpha * cql, td, cql


@register_agent
class OfflineCQLAgent(QNetAgent):
    """CQL-regularised DQN on a :class:`~agents.rollout_store.RolloutStore`.

    Args:
        hidden: Hidden widths of the Q-network.
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        batch_size: Transitions per gradient step.
        gradient_steps: Number of gradient steps.
        cql_alpha: Weight of the CQL regulariser (0 gives plain offline DQN).
        gamma: Discount (1.0: finite horizon).
        target_update_interval: Hard-copy the online net to the target every this many steps.
        eval_interval: Validate (and maybe keep a checkpoint) every this many steps, and at the end.
        val_fraction: Share of episodes held out for the offline validation score.
        eval_episodes: Greedy episodes per validation when an env is given.
        eval_seed: First ``env.reset`` seed of those episodes.
        loss: ``"l1"`` (Zhang et al.) or ``"smooth_l1"``.
        max_grad_norm: Gradient clipping.
        seed: Seed of the init, the batches and the split.
        device: Torch device.

    Attributes:
        qnet: The trained :class:`CandidateQNet` (best checkpoint), after ``learn`` or ``load``.
        summary: Training summary (metric, best step and score, history of validations).
    """

    name = "offline"
    tags = AgentTags(learns_from="rollouts", fixed_pool=False, exports_policy=True,
                     env_episodes=lambda settings, k: settings.val_episodes * eval_checks(settings.train_steps))

    def __init__(
        self,
        *,
        hidden: Sequence[int] = (64, 64),
        learning_rate: float = 3e-4,
        weight_decay: float = 1e-4,
        batch_size: int = 64,
        gradient_steps: int = 2000,
        cql_alpha: float = 1.0,
        gamma: float = 1.0,
        target_update_interval: int = 200,
        eval_interval: int = 200,
        val_fraction: float = 0.1,
        eval_episodes: int = 8,
        eval_seed: int = 10_000,
        loss: str = "l1",
        target: str = "td",
        max_grad_norm: float = 10.0,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        if loss not in ("l1", "smooth_l1"):
            raise ValueError(f"loss={loss!r}; expected 'l1' or 'smooth_l1'")
        if target not in Q_TARGETS:
            raise ValueError(f"target={target!r}; expected one of {list(Q_TARGETS)}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction} must be in [0, 1)")
        for nm, v in (("batch_size", batch_size), ("gradient_steps", gradient_steps),
                      ("target_update_interval", target_update_interval), ("eval_interval", eval_interval)):
            if int(v) < 1:
                raise ValueError(f"{nm}={v} must be >= 1")
        self.hidden = tuple(int(h) for h in hidden)
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = int(batch_size)
        self.gradient_steps = int(gradient_steps)
        self.cql_alpha = cql_alpha
        self.gamma = gamma
        self.target_update_interval = int(target_update_interval)
        self.eval_interval = int(eval_interval)
        self.val_fraction = val_fraction
        self.eval_episodes = int(eval_episodes)
        self.eval_seed = int(eval_seed)
        self.loss = loss
        self.target = target
        self.max_grad_norm = max_grad_norm
        self.seed = int(seed)
        self.device = device
        self.qnet: CandidateQNet | None = None
        self.summary: dict[str, Any] = {}

    def config(self) -> dict[str, Any]:
        """The constructor's arguments as JSON."""
        return {
            "hidden": list(self.hidden), "learning_rate": self.learning_rate, "weight_decay": self.weight_decay,
            "batch_size": self.batch_size, "gradient_steps": self.gradient_steps, "cql_alpha": self.cql_alpha,
            "gamma": self.gamma, "target_update_interval": self.target_update_interval,
            "eval_interval": self.eval_interval, "val_fraction": self.val_fraction,
            "eval_episodes": self.eval_episodes, "eval_seed": self.eval_seed, "loss": self.loss, "target": self.target,
            "max_grad_norm": self.max_grad_norm, "seed": self.seed, "device": self.device,
        }

    # ------------------------------------------------------------------------------------ data

    def _split(self, episodes: Sequence[Episode], seed: int) -> tuple[list[Episode], list[Episode]]:
        """``(train, held_out)`` by episode; no hold-out with fewer than 2 episodes or ``val_fraction == 0``."""
        n_val = int(round(self.val_fraction * len(episodes)))
        if len(episodes) < 2 or n_val == 0:
            return list(episodes), []
        n_val = min(n_val, len(episodes) - 1)
        perm = np.random.default_rng(seed).permutation(len(episodes))
        val_ids = set(perm[:n_val].tolist())
        return ([ep for i, ep in enumerate(episodes) if i not in val_ids],
                [ep for i, ep in enumerate(episodes) if i in val_ids])

    def _tensors(self, episodes: Sequence[Episode]) -> Batch:
        arrays = stack_episodes(episodes)
        return {k: torch.as_tensor(v, device=self.device) for k, v in arrays.items()}

    @classmethod
    def train_from(cls, source: Any, settings: AgentSettings, *, seed: int, env: Any = None,
                   progress: bool = False) -> Self:
        """``settings.train_steps`` gradient steps on the episodes ``source``; with ``settings.val_episodes``,
        checkpoints chosen by that many greedy episodes in ``env`` about 8 times, else by the held-out TD loss."""
        n_val = settings.val_episodes
        agent = cls(hidden=settings.hidden, gradient_steps=settings.train_steps, seed=seed,
                    cql_alpha=settings.cql_alpha, target=settings.q_target,
                    eval_interval=eval_interval(settings.train_steps), eval_episodes=max(1, n_val))
        return agent.learn(source, env=env if n_val else None, progress=progress)

    # ----------------------------------------------------------------------------------- learn

    def learn(
        self,
        store: RolloutStore | str | Path | Sequence[Episode],
        *,
        env: Any = None,
        seed: int | None = None,
        progress: bool = False,
    ) -> Self:
        """Train from logged episodes; keep the best checkpoint by the validation score.

        Args:
            store: A :class:`RolloutStore`, its path, or a list of :class:`Episode`.
            env: Optional env for the validation score (greedy episodes); see the module docstring.
            seed: Overrides the constructor's seed.
            progress: Show a tqdm bar over gradient steps.

        Returns:
            ``self`` with :attr:`qnet` set to the best checkpoint.
        """
        seed = self.seed if seed is None else int(seed)
        if isinstance(store, (str, Path)):
            store = RolloutStore(store)
        episodes = store.load() if isinstance(store, RolloutStore) else list(store)
        if not episodes:
            raise DataError("no episodes to train on: the rollout store is empty")
        train_eps, val_eps = self._split(episodes, seed)
        train = self._tensors(train_eps)
        val = self._tensors(val_eps) if val_eps else None
        metric = "env_return" if env is not None else ("heldout_loss" if val is not None else "none")
        n_train = train["action"].shape[0]
        state_dim, cand_dim = train["state"].shape[1], train["cands"].shape[2]

        prev_det = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                qnet = CandidateQNet(state_dim, cand_dim, self.hidden).to(self.device)
            target_net = copy.deepcopy(qnet).eval()
            optimizer = torch.optim.AdamW(qnet.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
            gen = torch.Generator().manual_seed(seed)
            self.qnet = qnet  # greedy evaluation below acts through self

            def validate() -> float:
                if env is not None:
                    qnet.eval()
                    score = evaluate(self, env, n_episodes=self.eval_episodes, seed=self.eval_seed)
                    qnet.train()
                    return score
                if val is None:
                    return 0.0
                with torch.no_grad():
                    total, _, _ = cql_dqn_loss(qnet, target_net, val, gamma=self.gamma, cql_alpha=self.cql_alpha,
                                               loss=self.loss, target=self.target)
                return -float(total)

            best_score, best_step, best_state = -float("inf"), 0, copy.deepcopy(qnet.state_dict())
            history: list[dict[str, float]] = []
            for step in tqdm(range(1, self.gradient_steps + 1), desc="offline CQL-DQN steps", disable=not progress):
                idx = torch.randint(n_train, (self.batch_size,), generator=gen).to(self.device)
                batch = {k: v[idx] for k, v in train.items()}
                loss, td, cql = cql_dqn_loss(qnet, target_net, batch, gamma=self.gamma, cql_alpha=self.cql_alpha,
                                             loss=self.loss, target=self.target)
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(qnet.parameters(), self.max_grad_norm)
                optimizer.step()
                if step % self.target_update_interval == 0:
                    target_net.load_state_dict(qnet.state_dict())
                if step % self.eval_interval == 0 or step == self.gradient_steps:
                    score = validate()
                    history.append({"step": step, "loss": loss.item(), "td": td.item(), "cql": cql.item(),
                                    "score": score})
                    # "none": no validation possible, so the last checkpoint wins (>=).
                    if score > best_score or metric == "none":
                        best_score, best_step, best_state = score, step, copy.deepcopy(qnet.state_dict())
        finally:
            torch.use_deterministic_algorithms(prev_det)
        qnet.load_state_dict(best_state)
        qnet.eval()
        self.summary = {
            "episodes": len(episodes), "train_episodes": len(train_eps), "val_episodes": len(val_eps),
            "transitions": int(n_train), "val_metric": metric, "best_step": best_step,
            "best_score": best_score, "seed": seed, "history": history,
        }
        return self
