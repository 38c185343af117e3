"""Feature sets of the demo-selection MDP: the layout of the state and candidate vectors, and their LM cost.

Every vector has a FIXED size that depends neither on the task's number of labels nor on the pool size
N, so one candidate-scoring Q-network transfers across tasks and pools. Values are normalised with
fixed formulas (no fitted statistics) to ``[0, 1]``, ``[-1, 0]`` or ``[-1, 1]``.

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

``L`` is the number of labels. The vectors are computed by :class:`~rl_select.mdp.features.Featurizer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rl_select.errors import ConfigError

FEATURE_SETS: tuple[str, ...] = ("active", "labelled", "zeroshot", "table", "table_labelled")
"""Known feature-set kinds: ``"active"`` (label-free, Zhang et al. 2022), ``"labelled"``, ``"zeroshot"``
(candidate features from the one-off row table, val under the prompt), ``"table"`` (no LM for features) and
``"table_labelled"`` (``table`` plus the candidates' own labels: label balance, zero-shot gold probability)."""

TABLE_SETS: tuple[str, ...] = ("zeroshot", "table", "table_labelled")
"""Feature sets whose candidate features come from the one-off :class:`~rl_select.mdp.table.RowTable`."""

FEATURE_VERSION = 1
"""The only feature layout version this code computes."""

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
