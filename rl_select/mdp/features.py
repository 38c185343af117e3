"""State and per-candidate features of the demo-selection MDP, shared by the env and the exported policy.

Which features each set holds, and their LM cost, is :class:`~rl_select.mdp.feature_spec.FeatureSpec`'s
(the layout tables are in :mod:`rl_select.mdp.feature_spec`); this module computes them.

All LM work goes through ``scorer.logprobs``: for ``active`` / ``labelled``, one call per
:meth:`Featurizer.compute`, under the current prompt ``demos = [pool[i] for i in chosen]``, whose
queries are the pool's candidates followed by the validation examples. Scorer caches are keyed per query
row by content, so the reward call :func:`rl_select.metrics.accuracy` ``(scorer, demos=demos,
examples=val)`` for the same prompt is an all-hit afterwards (and :attr:`FeatureResult.val_acc` already
holds its value).

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

import numpy as np

from rl_select.embeddings import Embedder, HashingEmbedder, example_text, l2_normalise
from rl_select.errors import SelectionError
from rl_select.lm.base import Scorer
from rl_select.mdp.feature_spec import FEATURE_SETS, FEATURE_VERSION, TABLE_SETS, FeatureSpec
from rl_select.mdp.table import RowTable
from rl_select.metrics import label_ids
from rl_select.types import Example

__all__ = [
    "FEATURE_SETS", "FEATURE_VERSION", "LOG_MASS_CLIP", "TABLE_SETS", "FeatureResult", "FeatureSpec", "Featurizer",
]

LOG_MASS_CLIP = 10.0
"""``log_mass`` features are ``clip(logsumexp(label log-probs), -LOG_MASS_CLIP, 0) / LOG_MASS_CLIP``."""


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


def _val_state(val_lp: np.ndarray, step: int, k: int, log_n: float) -> list[float]:
    """The six ``active`` state features of a prompt from its val log-probs ``(V, L)`` after ``step`` of ``k``."""
    v_probs, v_ent, v_mass = _distribution_stats(val_lp, log_n)
    mean_p = v_probs.mean(axis=0)
    return [min(step / k, 1.0), _norm_entropy(mean_p, log_n), float(mean_p.max()), float(v_ent.mean()),
            float(v_probs.max(axis=1).mean()), float(v_mass.mean())]


def _label_shares(gold: np.ndarray, idx: np.ndarray, n_labels: int, log_n: float
                  ) -> tuple[np.ndarray, np.ndarray, float]:
    """``(same_label_share (n,), under_represented (n,), label_balance)`` of candidates with gold label ids
    ``gold`` once the pool indices ``idx`` are chosen (``0``, ``1`` and ``0.0`` while nothing is)."""
    step = idx.size
    if not step:
        return np.zeros(gold.size), np.ones(gold.size), 0.0
    counts = np.bincount(gold[idx], minlength=n_labels).astype(np.float64)
    same = counts[gold] / step
    return same, (same < 1.0 / n_labels).astype(np.float64), _norm_entropy(counts / step, log_n)


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
        table: RowTable | None = None,
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
        self.table: RowTable | None = None
        if self.spec.uses_table:
            self.table = table if table is not None else RowTable(scorer, embedder=self.embedder)
        self._tab_key: tuple[Example, ...] | None = None
        self._tab: tuple[np.ndarray, ...] | None = None
        self._val_zs: tuple[np.ndarray, float] | None = None
        self._lab_key: tuple[Example, ...] | None = None
        self._lab: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

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

    def compute(self, pool: Sequence[Example], chosen: Sequence[int], k: int, *, need_val: bool = True
                ) -> FeatureResult:
        """Like :meth:`features`, also returning the raw log-probs and the prompt's val accuracy.

        Args:
            need_val: For the ``table`` set only: whether to score val under the prompt (for the reward).
                If not, :attr:`FeatureResult.val_acc` is ``nan`` and ``val_logprobs`` is empty. The other
                sets always score val (their features read it).

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
        if self.spec.uses_table:
            return self._compute_table(pool_t, idx, k, need_val)
        demos = [pool_t[i] for i in idx]
        lp = np.asarray(self.scorer.logprobs(demos=demos, queries=pool_t + self.val), dtype=np.float64)
        pool_lp, val_lp = lp[:n], lp[n:]

        # validation summary (label-free) and the reward's accuracy
        val_acc = float(np.mean(val_lp.argmax(axis=1) == self._val_gold))
        step = idx.size
        state = _val_state(val_lp, step, k, self._log_n)

        # candidates as queries
        c_probs, c_ent, c_mass = _distribution_stats(pool_lp, self._log_n)
        flags = np.zeros(n)
        flags[idx] = 1.0
        cols = [c_ent, c_probs.max(axis=1), c_probs.min(axis=1), c_probs.std(axis=1), c_mass, flags]

        if self.spec.kind == "labelled":
            emb, gold = self._pool_arrays(pool_t)
            same, under, balance = _label_shares(gold, idx, self.n_labels, self._log_n)
            state.append(balance)
            if step:
                sims = emb @ emb[idx].T  # (n, step) cosine similarities
                cols += [same, under, sims.max(axis=1), sims.mean(axis=1)]
            else:
                cols += [same, under, np.zeros(n), np.zeros(n)]
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

    def _val_under(self, demos: list[Example]) -> tuple[np.ndarray, float]:
        """``(val log-probs, val accuracy)`` of a prompt; the empty prompt's come from the table (once)."""
        if not demos:
            if self._val_zs is None:
                assert self.table is not None
                lp = self.table.lookup(self.val)[0]
                self._val_zs = (lp, float(np.mean(lp.argmax(axis=1) == self._val_gold)))
            return self._val_zs
        lp = np.asarray(self.scorer.logprobs(demos=demos, queries=self.val), dtype=np.float64)
        return lp, float(np.mean(lp.argmax(axis=1) == self._val_gold))

    def _table_arrays(self, pool: tuple[Example, ...]) -> tuple[np.ndarray, ...]:
        """Per-pool constant arrays from the row table, reused while the pool tuple is unchanged:
        ``(zero-shot log-probs, the five zero-shot columns (n, 5), embeddings, lengths)``."""
        if pool is not self._tab_key or self._tab is None:
            assert self.table is not None
            # One call fills the episode's missing rows (and val's, which only ``zeroshot`` reads here; the
            # empty prompt's val rows of a marginal reward are looked up when first needed).
            self.table.ensure(tuple(pool) + (self.val if self.spec.kind == "zeroshot" else ()))
            lp, emb, length = self.table.lookup(pool)
            probs, ent, mass = _distribution_stats(lp, self._log_n)
            zs = np.stack([ent, probs.max(axis=1), probs.min(axis=1), probs.std(axis=1), mass], axis=1)
            self._tab = (lp, zs, emb, length)
            self._tab_key = pool
        return self._tab

    def _compute_table(self, pool: tuple[Example, ...], idx: np.ndarray, k: int, need_val: bool) -> FeatureResult:
        """The ``zeroshot`` and ``table`` sets: candidate features from the row table."""
        n = len(pool)
        pool_lp, zs, emb, length = self._table_arrays(pool)
        step = idx.size
        demos = [pool[i] for i in idx]
        flags = np.zeros(n)
        flags[idx] = 1.0
        if step:
            sims = emb @ emb[idx].T
            max_cos, mean_cos = sims.max(axis=1), sims.mean(axis=1)
        else:
            max_cos = mean_cos = np.zeros(n)
        cands = np.concatenate([zs, flags[:, None], length[:, None], max_cos[:, None], mean_cos[:, None]], axis=1)
        extra_state: list[float] = []
        if self.spec.kind == "table_labelled":
            cols, extra_state = self._label_columns(pool, pool_lp, idx)
            cands = np.concatenate([cands, cols], axis=1)
        if self.spec.kind == "zeroshot" or need_val:
            val_lp, val_acc = self._val_under(demos)
        else:
            val_lp, val_acc = np.zeros((0, self.n_labels)), float("nan")
        if self.spec.kind == "zeroshot":
            state = _val_state(val_lp, step, k, self._log_n)
        elif step:
            pair = (emb[idx] @ emb[idx].T)
            off = (pair.sum() - np.trace(pair)) / (step * (step - 1)) if step > 1 else 0.0
            state = [min(step / k, 1.0), float(zs[idx, 0].mean()), float(zs[idx, 1].mean()),
                     float(length[idx].mean()), float(off)]
        else:
            state = [0.0, 0.0, 0.0, 0.0, 0.0]
        state += extra_state
        return FeatureResult(
            state=np.asarray(state, dtype=np.float32),
            candidates=cands.astype(np.float32),
            pool_logprobs=pool_lp,
            val_logprobs=val_lp,
            val_acc=val_acc,
        )

    def _label_columns(self, pool: tuple[Example, ...], pool_lp: np.ndarray, idx: np.ndarray
                       ) -> tuple[np.ndarray, list[float]]:
        """The ``table_labelled`` additions: ``(candidate columns (n, 5), [label_balance, chosen_zs_gold_prob])``.

        They read the candidates' own gold labels (a demonstration shows its label anyway) and their
        zero-shot log-probs from the table; never a validation label and no LM call. The per-pool parts
        (gold ids, zero-shot gold probability and error) are computed once per pool tuple.
        """
        if pool is not self._lab_key or self._lab is None:
            gold = label_ids(self.labels, pool)
            probs = np.exp(pool_lp - np.logaddexp.reduce(pool_lp, axis=1, keepdims=True))
            self._lab = (gold, probs[np.arange(len(pool)), gold], (pool_lp.argmax(axis=1) != gold).astype(np.float64))
            self._lab_key = pool
        gold, gold_p, wrong = self._lab
        same, under, balance = _label_shares(gold, idx, self.n_labels, self._log_n)
        if idx.size:
            last = (gold == gold[idx[-1]]).astype(np.float64)
            state = [balance, float(gold_p[idx].mean())]
        else:
            last, state = np.zeros(len(pool)), [0.0, 0.0]
        return np.stack([same, under, gold_p, wrong, last], axis=1), state

    def _pool_arrays(self, pool: tuple[Example, ...]) -> tuple[np.ndarray, np.ndarray]:
        """``(embeddings (n, d), gold label ids (n,))`` of the pool, reused while the pool is unchanged."""
        if pool is not self._pool_key or self._pool_emb is None or self._pool_gold is None:
            self._pool_gold = label_ids(self.labels, pool)
            self._pool_emb = self.embed(pool)
            self._pool_key = pool  # held, so its id cannot be reused by another object
        return self._pool_emb, self._pool_gold
