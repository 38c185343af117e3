"""State and per-candidate features of the demo-selection MDP, shared by the env and the exported policy.

Every vector has a FIXED size that depends neither on the task's number of labels nor on the pool size
N, so one candidate-scoring Q-network transfers across tasks and pools. Values are normalised with
fixed formulas (no fitted statistics) to ``[0, 1]``, ``[-1, 0]`` or ``[-1, 1]``.

All LM work goes through ``scorer.logprobs``: one call per :meth:`Featurizer.compute`, under the
current prompt ``demos = [pool[i] for i in chosen]``, whose queries are the pool's candidates
followed by the validation examples. Scorer caches are keyed per query row by content, so the reward
call :func:`rl_select.metrics.accuracy` ``(scorer, demos=demos, examples=val)`` for the same prompt is
an all-hit afterwards (and :attr:`FeatureResult.val_acc` already holds its value).

Feature layout (``FeatureSpec(kind).state_names`` / ``.cand_names`` list the same):

State, ``kind="active"`` (6) — ``"labelled"`` appends index 6 (7 in all):

====  ====================  ==========================================================================
idx   name                  value
====  ====================  ==========================================================================
0     step_frac             ``len(chosen) / k``                                               [0, 1]
1     val_mean_entropy      entropy of the mean predicted label distribution over val / log L [0, 1]
2     val_mean_max          max of that mean distribution                                     [0, 1]
3     val_query_entropy     mean over val of each query's entropy / log L                     [0, 1]
4     val_query_max         mean over val of each query's max probability                     [0, 1]
5     val_log_mass          mean over val of clip(logsumexp(label log-probs), -10, 0) / 10    [-1, 0]
6     label_balance         entropy of the chosen demos' label counts / log L (0 if none)     [0, 1]
====  ====================  ==========================================================================

Candidate (one row per pool item), ``kind="active"`` (6) — ``"labelled"`` appends 6..10 (11 in all):

====  ====================  ==========================================================================
idx   name                  value (the candidate scored as a query under the current prompt)
====  ====================  ==========================================================================
0     entropy               entropy of its label distribution / log L                         [0, 1]
1     max_prob              largest label probability                                         [0, 1]
2     min_prob              smallest label probability                                        [0, 1]
3     std_prob              standard deviation of its label probabilities                     [0, 0.5]
4     log_mass              clip(logsumexp(label log-probs), -10, 0) / 10                     [-1, 0]
5     chosen                1 if already in the prompt                                        {0, 1}
6     same_label_share      share of chosen demos with its label (0 if none chosen)           [0, 1]
7     under_represented     1 if count_same / max(step, 1) < 1 / L                            {0, 1}
8     max_cos               max cosine similarity of its embedding to the chosen demos (0)    [-1, 1]
9     mean_cos              mean cosine similarity to the chosen demos (0 if none)            [-1, 1]
10    lm_wrong              1 if the LM's arg-max label for it differs from its gold label    {0, 1}
====  ====================  ==========================================================================

``L`` is the number of labels. Label distributions are the scorer's log-probs renormalised over the
label set (calibrated when the scorer calibrates); ``log_mass`` uses the log-probs as returned, so it
is 0 for scorers that already return normalised (or calibrated) distributions. The ``active`` set is
label-free: it never reads a candidate's or a validation example's label (chosen demos do show their
labels inside the prompt, as every prompt does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rl_select.embeddings import Embedder, HashingEmbedder, example_text, l2_normalise
from rl_select.errors import ConfigError, SelectionError
from rl_select.lm.base import Scorer
from rl_select.metrics import label_ids
from rl_select.types import Example

FEATURE_SETS: tuple[str, ...] = ("active", "labelled")
"""Known feature-set kinds: ``"active"`` (label-free, Zhang et al. 2022) and ``"labelled"``."""

FEATURE_VERSION = 1
"""The only feature layout version this code computes."""

LOG_MASS_CLIP = 10.0
"""``log_mass`` features are ``clip(logsumexp(label log-probs), -LOG_MASS_CLIP, 0) / LOG_MASS_CLIP``."""

_ACTIVE_STATE = ("step_frac", "val_mean_entropy", "val_mean_max", "val_query_entropy", "val_query_max",
                 "val_log_mass")
_ACTIVE_CAND = ("entropy", "max_prob", "min_prob", "std_prob", "log_mass", "chosen")
_LABELLED_STATE = ("label_balance",)
_LABELLED_CAND = ("same_label_share", "under_represented", "max_cos", "mean_cos", "lm_wrong")


@dataclass(frozen=True)
class FeatureSpec:
    """Which features a state / candidate vector holds (see the module docstring for the layout).

    Attributes:
        kind: ``"active"`` or ``"labelled"``.
        version: Layout version (only ``1`` exists).

    Raises:
        ConfigError: Unknown ``kind`` or unsupported ``version``.
    """

    kind: str
    version: int = FEATURE_VERSION

    def __post_init__(self) -> None:
        if self.kind not in FEATURE_SETS:
            raise ConfigError(f"unknown feature set {self.kind!r}; expected one of {list(FEATURE_SETS)}")
        if self.version != FEATURE_VERSION:
            raise ConfigError(f"feature version {self.version!r} is not supported; expected {FEATURE_VERSION}")

    @property
    def state_names(self) -> tuple[str, ...]:
        """Name of each state feature, in index order."""
        return _ACTIVE_STATE + (_LABELLED_STATE if self.kind == "labelled" else ())

    @property
    def cand_names(self) -> tuple[str, ...]:
        """Name of each candidate feature, in index order."""
        return _ACTIVE_CAND + (_LABELLED_CAND if self.kind == "labelled" else ())

    @property
    def state_dim(self) -> int:
        """Length of the state vector (6 active, 7 labelled)."""
        return len(self.state_names)

    @property
    def cand_dim(self) -> int:
        """Length of each candidate's vector (6 active, 11 labelled)."""
        return len(self.cand_names)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; round-trips through :meth:`from_dict` (dims and names are for readers)."""
        return {
            "kind": self.kind,
            "version": self.version,
            "state_dim": self.state_dim,
            "cand_dim": self.cand_dim,
            "state_names": list(self.state_names),
            "cand_names": list(self.cand_names),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        """Rebuild a spec from :meth:`to_dict`'s output.

        Raises:
            ConfigError: Not a mapping, a missing ``kind``, an unknown key, or dims / names that do not
                match what this code computes for that kind and version.
        """
        if not isinstance(d, dict) or "kind" not in d:
            raise ConfigError(f"bad feature spec {d!r:.200}; expected a mapping with a 'kind'")
        known = {"kind", "version", "state_dim", "cand_dim", "state_names", "cand_names"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"feature spec has unknown keys {unknown}; expected some of {sorted(known)}")
        spec = cls(kind=d["kind"], version=d.get("version", FEATURE_VERSION))
        want = spec.to_dict()
        for key in ("state_dim", "cand_dim", "state_names", "cand_names"):
            if key in d and (list(d[key]) if key.endswith("names") else d[key]) != want[key]:
                raise ConfigError(
                    f"feature spec {key}={d[key]!r} does not match kind {spec.kind!r} version {spec.version} "
                    f"(expected {want[key]!r})"
                )
        return spec


@dataclass(frozen=True)
class FeatureResult:
    """Everything one :meth:`Featurizer.compute` call learns about one prompt.

    Attributes:
        state: ``float32 (state_dim,)``.
        candidates: ``float32 (len(pool), cand_dim)``.
        pool_logprobs: The scorer's label log-probs of the candidates as queries, ``(len(pool), L)``.
        val_logprobs: The scorer's label log-probs of the validation examples, ``(len(val), L)``.
        val_acc: Accuracy of the prompt on val, equal to :func:`rl_select.metrics.accuracy`'s value.
    """

    state: np.ndarray
    candidates: np.ndarray
    pool_logprobs: np.ndarray
    val_logprobs: np.ndarray
    val_acc: float


def _distribution_stats(logprobs: np.ndarray, log_n: float) -> tuple[np.ndarray, ...]:
    """Per-row statistics of label log-probs ``(n, L)``.

    Returns:
        ``(probs (n, L), norm_entropy (n,), log_mass (n,))``: the label distributions renormalised over
        the labels, their entropy / log L, and the clipped, scaled total label mass.
    """
    lp = np.asarray(logprobs, dtype=np.float64)
    lse = np.logaddexp.reduce(lp, axis=1, keepdims=True)
    logp = lp - lse
    probs = np.exp(logp)
    plogp = np.where(probs > 0, probs * logp, 0.0)
    entropy = -plogp.sum(axis=1) / log_n
    mass = np.clip(lse[:, 0], -LOG_MASS_CLIP, 0.0) / LOG_MASS_CLIP
    return probs, entropy, mass


def _norm_entropy(p: np.ndarray, log_n: float) -> float:
    """Entropy of one distribution ``(L,)`` divided by log L."""
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum() / log_n)


class Featurizer:
    """Computes state and candidate features with the (cached) scorer.

    Embeddings (``labelled`` only) are cached in memory per example text; the pool's embedding matrix
    and label ids are reused while the same pool tuple is passed again (the env passes one tuple per
    episode), so a step costs one scorer call plus a few small numpy operations.

    Args:
        spec: The feature set (a :class:`FeatureSpec` or its ``kind`` string).
        scorer: The frozen LM; all LM work goes through ``scorer.logprobs``.
        val: Validation queries whose predictions summarise the prompt (the reward's split). Their
            labels are read only for :attr:`FeatureResult.val_acc`.
        embedder: Any :class:`~rl_select.embeddings.Embedder` for the ``labelled`` similarity features;
            ``None`` uses :class:`HashingEmbedder` (deterministic bag of words, no model). Unused by
            ``active``.

    Raises:
        SelectionError: ``val`` is empty or holds a label the task does not know.
        ConfigError: Unknown feature-set kind.
    """

    def __init__(
        self,
        spec: FeatureSpec | str,
        scorer: Scorer,
        *,
        val: Sequence[Example],
        embedder: Embedder | None = None,
    ) -> None:
        self.spec = spec if isinstance(spec, FeatureSpec) else FeatureSpec(kind=spec)
        self.scorer = scorer
        self.val = tuple(val)
        if not self.val:
            raise SelectionError("the feature validation split is empty; expected at least one example")
        self.embedder: Embedder = embedder if embedder is not None else HashingEmbedder()
        self.labels: tuple[str, ...] = tuple(scorer.spec.labels)
        self.n_labels = len(self.labels)
        self._log_n = math.log(self.n_labels)
        self._val_gold = label_ids(self.labels, self.val)
        self._embeddings: dict[str, np.ndarray] = {}
        self._pool_key: tuple[Example, ...] | None = None
        self._pool_emb: np.ndarray | None = None
        self._pool_gold: np.ndarray | None = None

    # --- public API -------------------------------------------------------------------------------

    def features(self, pool: Sequence[Example], chosen: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        """State and candidate features of the prompt ``[pool[i] for i in chosen]``.

        Args:
            pool: The N candidates (rows of the candidate matrix, in this order).
            chosen: Pool indices already in the prompt, in prompt order.
            k: The episode's demo budget (for ``step_frac``).

        Returns:
            ``(state float32 (state_dim,), cands float32 (len(pool), cand_dim))``.
        """
        res = self.compute(pool, chosen, k)
        return res.state, res.candidates

    def compute(self, pool: Sequence[Example], chosen: Sequence[int], k: int) -> FeatureResult:
        """Like :meth:`features`, also returning the raw log-probs and the prompt's val accuracy.

        Raises:
            SelectionError: ``k < 1``, an index outside the pool, or a repeated index.
        """
        pool_t = pool if isinstance(pool, tuple) else tuple(pool)
        n = len(pool_t)
        idx = np.asarray(chosen, dtype=np.int64).reshape(-1)
        if k < 1:
            raise SelectionError(f"k={k}; expected k >= 1")
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise SelectionError(f"chosen indices {list(map(int, idx))} fall outside the pool of {n}")
        if np.unique(idx).size != idx.size:
            raise SelectionError(f"chosen indices {list(map(int, idx))} repeat a candidate")
        demos = [pool_t[i] for i in idx]
        lp = np.asarray(self.scorer.logprobs(demos=demos, queries=pool_t + self.val), dtype=np.float64)
        pool_lp, val_lp = lp[:n], lp[n:]

        # validation summary (label-free) and the reward's accuracy
        v_probs, v_ent, v_mass = _distribution_stats(val_lp, self._log_n)
        mean_p = v_probs.mean(axis=0)
        val_acc = float(np.mean(val_lp.argmax(axis=1) == self._val_gold))
        step = idx.size
        state = [
            min(step / k, 1.0),
            _norm_entropy(mean_p, self._log_n),
            float(mean_p.max()),
            float(v_ent.mean()),
            float(v_probs.max(axis=1).mean()),
            float(v_mass.mean()),
        ]

        # candidates as queries
        c_probs, c_ent, c_mass = _distribution_stats(pool_lp, self._log_n)
        flags = np.zeros(n)
        flags[idx] = 1.0
        cols = [c_ent, c_probs.max(axis=1), c_probs.min(axis=1), c_probs.std(axis=1), c_mass, flags]

        if self.spec.kind == "labelled":
            emb, gold = self._pool_arrays(pool_t)
            counts = np.bincount(gold[idx], minlength=self.n_labels).astype(np.float64)
            state.append(_norm_entropy(counts / step, self._log_n) if step else 0.0)
            same = counts[gold]
            if step:
                sims = emb @ emb[idx].T  # (n, step) cosine similarities
                cols += [same / step, (same / step < 1.0 / self.n_labels).astype(np.float64),
                         sims.max(axis=1), sims.mean(axis=1)]
            else:
                cols += [np.zeros(n), np.ones(n), np.zeros(n), np.zeros(n)]
            cols.append((pool_lp.argmax(axis=1) != gold).astype(np.float64))

        return FeatureResult(
            state=np.asarray(state, dtype=np.float32),
            candidates=np.stack(cols, axis=1).astype(np.float32),
            pool_logprobs=pool_lp,
            val_logprobs=val_lp,
            val_acc=val_acc,
        )

    def embed(self, examples: Sequence[Example]) -> np.ndarray:
        """Unit embeddings of examples (memoised per text). Shape ``(len(examples), d)``, float32."""
        texts = [example_text(e) for e in examples]
        todo = list(dict.fromkeys(t for t in texts if t not in self._embeddings))
        if todo:
            vecs = l2_normalise(self.embedder.encode(todo))
            self._embeddings.update(zip(todo, vecs))
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._embeddings[t] for t in texts])

    # --- helpers ----------------------------------------------------------------------------------

    def _pool_arrays(self, pool: tuple[Example, ...]) -> tuple[np.ndarray, np.ndarray]:
        """``(embeddings (n, d), gold label ids (n,))`` of the pool, reused while the pool is unchanged."""
        if pool is not self._pool_key or self._pool_emb is None or self._pool_gold is None:
            self._pool_gold = label_ids(self.labels, pool)
            self._pool_emb = self.embed(pool)
            self._pool_key = pool  # held, so its id cannot be reused by another object
        return self._pool_emb, self._pool_gold
