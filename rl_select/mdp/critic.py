"""The probe critic: a learned value of a COMPLETE prompt, from label-free statistics of its predictions.

The offline Q ranks prompts from features of the pool (labels, zero-shot probabilities, similarity), which
carry little of what makes a prompt good on a new task. What does carry over is how the prompt makes the LM
answer unlabelled queries: a prompt whose predictions collapse onto one label is bad on any balanced task.
The critic is the MDP's terminal-state value learned offline from the logged random episodes of the
training tasks: for each episode, the statistics of its final prompt's predictions on that task's
reward-validation TEXTS (:func:`critic_features`; the labels there only give the regression target, the
episode's return) and a ridge regression of the return on them. At selection time it reads no validation
label: ``policy_probe`` scores candidate prompts on the val texts and keeps the highest predicted value.

Features, each in ``[0, 1]``: the four :data:`rl_select.metrics.PROBE_STATS` and ``demo_balance``, the
entropy of the prompt's own demo labels / log L.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rl_select.errors import PolicyError
from rl_select.metrics import PROBE_STATS, probe_stats

CRITIC_FEATURES: tuple[str, ...] = (*PROBE_STATS, "demo_balance")
"""The critic's inputs, in order."""

CRITIC_RETURNS: tuple[str, ...] = ("raw", "task")
"""Regression targets: the logged returns as they are, or as z-scores within each training task."""

TENSOR = "probe_critic"
"""The critic's weights in a policy file: ``(len(CRITIC_FEATURES) + 1,)``, the bias last."""


def demo_balance(demo_labels: Sequence[str], labels: Sequence[str]) -> float:
    """Entropy of the demos' label counts / log L, in ``[0, 1]`` (0 for no demo or a single label)."""
    index = {lab: i for i, lab in enumerate(labels)}
    counts = np.bincount(np.array([index[d] for d in demo_labels], dtype=np.int64),
                         minlength=len(labels)).astype(np.float64)
    if not counts.sum() or len(labels) < 2:
        return 0.0
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum() / np.log(len(labels)))


def critic_features(val_logprobs: np.ndarray, demo_labels: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """``(F,)`` features of one prompt: its val label log-probs ``(V, L)`` and its demos' labels."""
    return np.append(probe_stats(val_logprobs), demo_balance(demo_labels, labels))


def per_query_features(val_logprobs: np.ndarray, demo_labels: Sequence[Sequence[str]], labels: Sequence[str]
                       ) -> np.ndarray:
    """``(F,)`` features of per-query prompts (kNN): val query ``i`` was prompted with demos labelled
    ``demo_labels[i]``; the probe statistics of the assembled log-probs ``(V, L)``, the mean demo balance."""
    if len(demo_labels) != len(val_logprobs):
        raise PolicyError(f"{len(demo_labels)} demo lists for {len(val_logprobs)} probe queries; expected one each")
    balance = float(np.mean([demo_balance(d, labels) for d in demo_labels])) if len(demo_labels) else 0.0
    return np.append(probe_stats(val_logprobs), balance)


@dataclass(frozen=True)
class ProbeCritic:
    """Linear value of a prompt's :data:`CRITIC_FEATURES` (higher: better).

    Attributes:
        weights: ``(F + 1,)`` float64, the bias last.
        returns: What it regressed on (:data:`CRITIC_RETURNS`).
        n_train: Episodes it was fitted on.
        ridge: The L2 weight used (the bias is not penalised).
    """

    weights: np.ndarray
    returns: str = "raw"
    n_train: int = 0
    ridge: float = 1e-2

    @classmethod
    def fit(cls, per_task: Sequence[tuple[np.ndarray, np.ndarray]], *, returns: str = "raw",
            ridge: float = 1e-2) -> ProbeCritic:
        """Ridge regression on every task's ``(x (n, F), returns (n,))``; ``returns="task"`` z-scores each
        task's returns first (a task whose returns do not vary is only centred)."""
        if returns not in CRITIC_RETURNS:
            raise PolicyError(f"critic returns={returns!r}; expected one of {list(CRITIC_RETURNS)}")
        xs, ys = [], []
        for x, y in per_task:
            y = np.asarray(y, dtype=np.float64)
            if returns == "task" and len(y):
                y = (y - y.mean()) / (y.std() or 1.0)
            xs.append(np.asarray(x, dtype=np.float64).reshape(len(y), len(CRITIC_FEATURES)))
            ys.append(y)
        x, y = np.concatenate(xs), np.concatenate(ys)
        if len(y) < 2:
            raise PolicyError(f"the probe critic needs at least 2 episodes to fit; got {len(y)}")
        a = np.hstack([x, np.ones((len(x), 1))])
        reg = ridge * np.eye(a.shape[1])
        reg[-1, -1] = 0.0
        return cls(np.linalg.solve(a.T @ a + reg, a.T @ y), returns=returns, n_train=len(y), ridge=float(ridge))

    def score(self, x: np.ndarray) -> np.ndarray:
        """``x (n, F)`` -> ``(n,)`` predicted values."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, len(CRITIC_FEATURES))
        return x @ self.weights[:-1] + self.weights[-1]

    def document(self) -> dict[str, Any]:
        """The ``"critic"`` entry of a policy file (the weights are the :data:`TENSOR` tensor)."""
        return {"features": list(CRITIC_FEATURES), "returns": self.returns, "n_train": self.n_train,
                "ridge": self.ridge}

    @classmethod
    def from_document(cls, doc: Any, weights: Any, *, where: str) -> ProbeCritic:
        """The critic of a policy file, refusing a malformed entry or weights that are not finite."""
        ok = isinstance(doc, Mapping) and list(doc.get("features", [])) == list(CRITIC_FEATURES)
        ok = ok and doc.get("returns") in CRITIC_RETURNS
        if not ok:
            raise PolicyError(f"{where}: critic entry {doc!r:.200} is malformed; expected features "
                              f"{list(CRITIC_FEATURES)} and returns in {list(CRITIC_RETURNS)}")
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != (len(CRITIC_FEATURES) + 1,) or not np.isfinite(w).all():
            raise PolicyError(f"{where}: critic weights have shape {w.shape} (finite: {bool(np.isfinite(w).all())}); "
                              f"expected {len(CRITIC_FEATURES) + 1} finite numbers")
        return cls(w, returns=str(doc["returns"]), n_train=int(doc.get("n_train", 0)),
                   ridge=float(doc.get("ridge", 1e-2)))
