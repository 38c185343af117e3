"""State and per-candidate features of the demo-selection MDP, shared by the env and the exported policy.

Every vector has a FIXED size that depends neither on the task's number of labels nor on the pool size
N, so one candidate-scoring Q-network transfers across tasks and pools. Values are normalised with
fixed formulas (no fitted statistics) to ``[0, 1]``, ``[-1, 0]`` or ``[-1, 1]``.

All LM work goes through ``scorer.logprobs``: for ``active`` / ``labelled``, one call per
:meth:`Featurizer.compute`, under the current prompt ``demos = [pool[i] for i in chosen]``, whose
queries are the pool's candidates followed by the validation examples. Scorer caches are keyed per query
row by content, so the reward call :func:`rl_select.metrics.accuracy` ``(scorer, demos=demos,
examples=val)`` for the same prompt is an all-hit afterwards (and :attr:`FeatureResult.val_acc` already
holds its value).

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

The table sets (``zeroshot``, ``table``) read their candidate features from the one-off
:class:`~rl_select.mdp.table.RowTable` (each row's zero-shot label log-probs, embedding and length,
computed once per model, task and row), so no candidate is scored under the current prompt.

Candidate, ``kind="zeroshot"`` and ``kind="table"`` (9):

====  ====================  ==========================================================================
idx   name                  value
====  ====================  ==========================================================================
0-4   zs_entropy .. zs_log_mass   as ``active`` 0-4, of the candidate's ZERO-SHOT distribution (table)
5     chosen                1 if already in the prompt                                        {0, 1}
6     length                ``min(log1p(words) / log1p(256), 1)``                             [0, 1]
7     max_cos               max cosine similarity to the chosen demos' embeddings (0 if none) [-1, 1]
8     mean_cos              mean cosine similarity to the chosen demos (0 if none)            [-1, 1]
====  ====================  ==========================================================================

Candidate, ``kind="table_labelled"`` (14): the nine ``table`` columns, then

====  ====================  ==========================================================================
idx   name                  value (reads the CANDIDATE's own gold label; no val label, no LM)
====  ====================  ==========================================================================
9     same_label_share      share of chosen demos with its label (0 if none chosen)           [0, 1]
10    under_represented     1 if count_same / max(step, 1) < 1 / L (1 if none chosen)         {0, 1}
11    zs_gold_prob          zero-shot probability of its gold label (table)                   [0, 1]
12    zs_wrong              1 if the zero-shot arg-max label differs from its gold label      {0, 1}
13    same_as_last          1 if its label equals the last chosen demo's (0 if none)          {0, 1}
====  ====================  ==========================================================================

State, ``kind="table_labelled"`` (7): the five ``table`` features, then ``label_balance`` (entropy of the
chosen demos' label counts / log L, 0 if none) and ``chosen_zs_gold_prob`` (their mean zero-shot gold
probability, 0 if none).

State, ``kind="zeroshot"``: the six ``active`` state features (val under the current prompt; the empty
prompt's val rows come from the table). State, ``kind="table"`` (5, no LM): ``step_frac``,
``chosen_zs_entropy`` and ``chosen_zs_max`` (means over the chosen demos of their zero-shot entropy / max
probability, 0 if none), ``chosen_length`` (mean length), ``chosen_mean_cos`` (mean pairwise cosine
similarity of the chosen demos, 0 below two). Both are label-free (``table_labelled`` is not: see
above). LM rows under the prompt per step: ``active`` / ``labelled`` N + V, ``zeroshot`` V, ``table`` /
``table_labelled`` 0 (val only when the reward reads it: :meth:`FeatureSpec.lm_rows`; their table holds
val's zero-shot rows only when the marginal reward reads the empty prompt's accuracy).
``FeatureResult.pool_logprobs`` of the table sets are the zero-shot ones.

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
from rl_select.mdp.table import RowTable
from rl_select.metrics import label_ids
from rl_select.types import Example

FEATURE_SETS: tuple[str, ...] = ("active", "labelled", "zeroshot", "table", "table_labelled")
"""Known feature-set kinds: ``"active"`` (label-free, Zhang et al. 2022), ``"labelled"``, ``"zeroshot"``
(candidate features from the one-off row table, val under the prompt), ``"table"`` (no LM for features) and
``"table_labelled"`` (``table`` plus the candidates' own labels: label balance, zero-shot gold probability)."""

TABLE_SETS: tuple[str, ...] = ("zeroshot", "table", "table_labelled")
"""Feature sets whose candidate features come from the one-off :class:`~rl_select.mdp.table.RowTable`."""

FEATURE_VERSION = 1
"""The only feature layout version this code computes."""

LOG_MASS_CLIP = 10.0
"""``log_mass`` features are ``clip(logsumexp(label log-probs), -LOG_MASS_CLIP, 0) / LOG_MASS_CLIP``."""

_ACTIVE_STATE = ("step_frac", "val_mean_entropy", "val_mean_max", "val_query_entropy", "val_query_max",
                 "val_log_mass")
_ACTIVE_CAND = ("entropy", "max_prob", "min_prob", "std_prob", "log_mass", "chosen")
_LABELLED_STATE = ("label_balance",)
_LABELLED_CAND = ("same_label_share", "under_represented", "max_cos", "mean_cos", "lm_wrong")
_TABLE_CAND = ("zs_entropy", "zs_max_prob", "zs_min_prob", "zs_std_prob", "zs_log_mass", "chosen", "length",
               "max_cos", "mean_cos")
_TABLE_STATE = ("step_frac", "chosen_zs_entropy", "chosen_zs_max", "chosen_length", "chosen_mean_cos")
_TABLE_LABELLED_CAND = ("same_label_share", "under_represented", "zs_gold_prob", "zs_wrong", "same_as_last")
_TABLE_LABELLED_STATE = ("label_balance", "chosen_zs_gold_prob")


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
        if self.kind == "table":
            return _TABLE_STATE
        if self.kind == "table_labelled":
            return _TABLE_STATE + _TABLE_LABELLED_STATE
        return _ACTIVE_STATE + (_LABELLED_STATE if self.kind == "labelled" else ())

    @property
    def cand_names(self) -> tuple[str, ...]:
        """Name of each candidate feature, in index order."""
        if self.kind == "table_labelled":
            return _TABLE_CAND + _TABLE_LABELLED_CAND
        if self.kind in TABLE_SETS:
            return _TABLE_CAND
        return _ACTIVE_CAND + (_LABELLED_CAND if self.kind == "labelled" else ())

    @property
    def uses_table(self) -> bool:
        """Whether the candidate features come from the one-off row table (``zeroshot``, ``table``,
        ``table_labelled``)."""
        return self.kind in TABLE_SETS

    @property
    def prompt_queries(self) -> tuple[str, ...]:
        """Which rows the features score under the current prompt, at every step after the empty prompt.

        ``("candidates", "val")`` for ``active`` / ``labelled``, ``("val",)`` for ``zeroshot``, ``()`` for
        ``table`` / ``table_labelled`` (their features read only the table; the reward may still score val,
        see :meth:`lm_rows`). The empty prompt's rows are read from the table by the table sets.
        """
        if self.kind in ("table", "table_labelled"):
            return ()
        return ("val",) if self.kind == "zeroshot" else ("candidates", "val")

    def lm_rows(self, n_candidates: int, n_val: int, *, reward: str | None = "marginal", k: int = 1,
                extra_per_call: int = 0) -> dict[str, int]:
        """The LM cost of one episode of ``k`` demos (no STOP), in query rows under a prompt.

        Args:
            n_candidates: N.
            n_val: Validation queries V.
            reward: The reward mode: ``"marginal"`` reads val accuracy after every step, ``"terminal"``
                only after the last, ``None`` never.
            k: Steps per episode.
            extra_per_call: Rows every scorer call adds (the content-free queries of calibration).

        Returns:
            ``{"per_step": rows per step, "per_episode": rows per episode (reset + k steps),
            "calls_per_episode": scorer calls, "one_off_per_row": 1 for the table sets (each pool / val row
            once per model and task, ever), else 0}``. Cache hits are not subtracted.
        """
        if self.kind in ("active", "labelled"):
            per_step, calls = n_candidates + n_val, k + 1
            per_ep = (k + 1) * per_step
        elif self.kind == "zeroshot":
            per_step, calls = n_val, k  # the empty prompt's val rows come from the table
            per_ep = k * n_val
        else:
            need = {"marginal": k, "terminal": 1, None: 0}[reward]
            per_step, calls = (n_val if reward == "marginal" else 0), need
            per_ep = need * n_val
        return {"per_step": per_step, "per_episode": per_ep + calls * extra_per_call,
                "calls_per_episode": calls, "one_off_per_row": int(self.uses_table)}

    @property
    def state_dim(self) -> int:
        """Length of the state vector (6 active / zeroshot, 7 labelled, 5 table, 7 table_labelled)."""
        return len(self.state_names)

    @property
    def cand_dim(self) -> int:
        """Length of each candidate's vector (6 active, 11 labelled, 9 zeroshot / table, 14 table_labelled)."""
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
            v_probs, v_ent, v_mass = _distribution_stats(val_lp, self._log_n)
            mean_p = v_probs.mean(axis=0)
            state = [min(step / k, 1.0), _norm_entropy(mean_p, self._log_n), float(mean_p.max()),
                     float(v_ent.mean()), float(v_probs.max(axis=1).mean()), float(v_mass.mean())]
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
