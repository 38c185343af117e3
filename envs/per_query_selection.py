"""The per-query selection MDP as a Gymnasium environment (``rl_select/PerQuerySelection-v0``).

Thin adapter over :mod:`rl_select.mdp.per_query` (neighbourhoods, features, rewards) and the shared
:class:`~rl_select.mdp.episode.EpisodeRule`: the env only adds spaces, the seeded draw of each episode's
query, and the scorer call that rewards a finished prompt (or, with the ``"gain"`` reward, each prefix).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.demo_selection import MaskedDiscrete
from rl_select.embeddings import Embedder
from rl_select.errors import ConfigError, SelectionError
from rl_select.lm.base import Scorer
from rl_select.mdp.episode import NOT_RESET, EpisodeRule
from rl_select.mdp.per_query import GAIN_REWARD, PER_QUERY_REWARDS, FeatureView, reward_of, step_gain
from rl_select.mdp.per_query_table import PoolTable, QueryContexts
from rl_select.metrics import label_ids
from rl_select.types import Example


class PerQuerySelectionEnv(gym.Env[dict[str, np.ndarray], np.int64]):
    """Build one query's prompt from its ``M`` nearest pool examples, one demonstration per step.

    ## Description

    Each episode is one query, drawn with ``self.np_random`` from ``queries`` (or given as
    ``reset(options={"query": i})``). The candidates are the query's ``M`` nearest pool examples (cosine of
    sentence embeddings, most similar first). Each step appends one candidate; after ``k`` steps the frozen
    LM scores the query under the finished prompt (ONE scorer row, plus the content-free rows of a calibrated
    scorer), which gives the reward.

    ## Action Space

    ``Discrete(M + 1)`` (:class:`~envs.demo_selection.MaskedDiscrete`): action ``j < M`` appends neighbour
    ``j``; ``M`` is STOP, offered only with ``allow_stop``. Chosen neighbours are masked
    (:meth:`action_masks`, ``obs["action_mask"]``, ``info["action_mask"]``, one rule).

    ## Observation Space

    ``Dict``: ``"state"`` ``Box (S,)``, ``"candidates"`` ``Box (M, C)`` (the feature set's columns of
    :data:`~rl_select.mdp.per_query.STATE_FEATURES` / :data:`~rl_select.mdp.per_query.CANDIDATE_FEATURES`),
    ``"action_mask"`` ``MultiBinary(M + 1)``.

    ## Rewards

    0 until the episode ends, then the query's terminal reward under its prompt
    (:func:`~rl_select.mdp.per_query.reward_of`): ``"correct"`` (1 if the LM's top label is gold) or
    ``"margin"`` (the gold label's log-prob margin over the best other label, clipped and scaled to [-1, 1]).
    ``"gain"``, the per-step variant (:func:`~rl_select.mdp.per_query.step_gain`): every step that adds a
    demonstration earns the change in ``margin`` it made (the zero-shot prompt's margin is the start; STOP earns 0),
    so an episode's rewards sum to its final margin minus the zero-shot one. It scores every prefix: ``k + 1`` LM
    rows an episode.

    ## Episode End

    Terminated after the ``k``-th demonstration or on STOP (STOP with nothing chosen scores zero-shot).
    Never truncated.

    ## Arguments

    * ``scorer``: The frozen LM (deterministic, ideally cached).
    * ``pool``: Labelled candidate examples (at least ``m``).
    * ``queries``: Labelled training queries (episodes draw from them).
    * ``embedder``: Sentence embedder for the neighbourhoods.
    * ``k``, ``m``: Demonstrations per prompt and neighbours offered, ``1 <= k <= m <= len(pool)``.
    * ``feature_set``: A name of :data:`~rl_select.mdp.per_query.FEATURE_SETS`.
    * ``reward``: ``"correct"``, ``"margin"`` or ``"gain"``.
    * ``allow_stop``, ``min_len``: As :class:`~rl_select.mdp.episode.EpisodeRule`.

    ## Information

    ``info``: ``"action_mask"`` (int8 ``(M + 1,)``), ``"query"`` (index into ``queries``), ``"chosen"``
    (neighbour positions in prompt order), ``"demos"`` (their uids); at the end also ``"correct"`` (bool).
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, *, scorer: Scorer, pool: Sequence[Example], queries: Sequence[Example], embedder: Embedder,
                 k: int = 4, m: int = 16, feature_set: str = "full", reward: str = "correct",
                 allow_stop: bool = False, min_len: int = 0, render_mode: str | None = None) -> None:
        if reward not in (*PER_QUERY_REWARDS, GAIN_REWARD):
            raise ConfigError(f"unknown per-query reward {reward!r}; expected one of "
                              f"{[*PER_QUERY_REWARDS, GAIN_REWARD]}")
        if not queries:
            raise SelectionError("no queries; expected at least one labelled training query")
        self.view = FeatureView.of(feature_set)
        self.scorer, self.k, self.reward, self.render_mode = scorer, int(k), reward, render_mode
        labels = scorer.spec.labels
        self.table = PoolTable.build(pool, labels=labels, embedder=embedder,
                                     scorer=scorer if self.view.needs_lm else None)
        self.ctx = QueryContexts.build(self.table, queries, m=m, embedder=embedder,
                                       scorer=scorer if self.view.needs_lm else None)
        self.rule = EpisodeRule(n_candidates=self.ctx.m, k=self.k, allow_stop=allow_stop, min_len=min_len)
        self.gold = label_ids(labels, self.ctx.queries)
        s_dim, c_dim = self.view.dims
        self.action_space = MaskedDiscrete(self.ctx.m + 1, mask_fn=self.action_masks)
        self.observation_space = spaces.Dict({
            "state": spaces.Box(-np.inf, np.inf, (s_dim,), np.float32),
            "candidates": spaces.Box(-np.inf, np.inf, (self.ctx.m, c_dim), np.float32),
            "action_mask": spaces.MultiBinary(self.ctx.m + 1),
        })
        self._query: int | None = None
        self._chosen: list[int] = []
        self._done = True
        self._correct: bool | None = None
        self._last: np.ndarray | None = None  # "gain": the label log-probs under the prompt so far

    def action_masks(self) -> np.ndarray:
        """Legal actions now, ``bool (M + 1,)`` (all False before reset and after the end)."""
        return self.rule.mask(self._chosen, self._done)

    def _obs(self) -> dict[str, np.ndarray]:
        assert self._query is not None
        state, cands = self.view(self.table, self.ctx, self._query, self._chosen, self.k)
        return {"state": state, "candidates": cands, "action_mask": self.action_masks().astype(np.int8)}

    def _info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"action_mask": self.action_masks().astype(np.int8), "query": self._query,
                                "chosen": list(self._chosen),
                                "demos": [d.uid for d in self.ctx.demos(self.table, self._query or 0, self._chosen)]}
        if self._correct is not None:
            info["correct"] = self._correct
        return info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode on a drawn query (or ``options["query"]``) with an empty prompt."""
        super().reset(seed=seed)
        n = len(self.ctx.queries)
        q = (options or {}).get("query")
        if q is None:
            q = int(self.np_random.integers(n))
        elif isinstance(q, bool) or not isinstance(q, (int, np.integer)) or not 0 <= q < n:
            raise SelectionError(f"options['query']={q!r}; expected an integer in 0..{n - 1}")
        self._query, self._chosen, self._done, self._correct = int(q), [], False, None
        self._last = self._score() if self.reward == GAIN_REWARD else None
        return self._obs(), self._info()

    def _score(self) -> np.ndarray:
        """``(1, L)`` label log-probs of the query under the prompt so far (one scorer call)."""
        assert self._query is not None
        i = self._query
        return self.scorer.logprobs(demos=self.ctx.demos(self.table, i, self._chosen), queries=[self.ctx.queries[i]])

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Append neighbour ``action`` (or STOP); the last step scores the prompt (one scorer call)."""
        if self._query is None:
            raise SelectionError(NOT_RESET)
        n_before = len(self._chosen)
        a, self._chosen, self._done = self.rule.apply(action, self._chosen, self._done)
        reward, gold = 0.0, self.gold[[self._query]]
        if self._last is not None:                                       # "gain": every step, STOP earns 0
            lp = self._score() if len(self._chosen) > n_before else self._last
            reward, self._last = float(step_gain(self._last, lp, gold)[0]), lp
        elif self._done:
            lp = self._score()
            reward = float(reward_of(lp, gold, self.reward)[0])
        if self._done:
            self._correct = bool(np.argmax(lp[0]) == gold[0])
        return self._obs(), reward, self._done, False, self._info()

    def render(self) -> str | None:
        """``"ansi"``: the query and the chosen demonstrations' uids."""
        if self.render_mode != "ansi":
            return None
        if self._query is None:
            return "(not reset)"
        q = self.ctx.queries[self._query]
        return f"query {q.uid}: demos {self._info()['demos']}" + (" (done)" if self._done else "")
