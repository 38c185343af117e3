"""The exported per-query policy: a candidate-scoring Q-network that builds each query's prompt on its own.

One ``.safetensors`` file (kind ``"per_query_policy"``) whose JSON document records the episode shape
(``"per_query"``), the feature set, ``M`` neighbours per query, ``k``, the reward it was trained on, the
scorer spec and the training summary; the whole file is hash-checked (:mod:`rl_select.mdp.artifacts`).
It needs neither gymnasium nor SB3: :meth:`PerQueryPolicy.select_for` embeds the pool and the queries,
scores the pool and the queries zero-shot (one cached LM row each, for the LM features; a large pool only
the rows its queries' neighbourhoods need), then chooses each query's demonstrations in one of two modes
(:data:`MODES`); the pool's table (embeddings, neighbour index, LM rows) is kept for the next call on the
same pool:

* ``greedy``: the episode rolled out greedily under the shared :class:`~rl_select.mdp.episode.EpisodeRule`,
  all queries of a step in one Q-network forward (:func:`greedy_orders`);
* ``critic``: the Q-network as a critic (:func:`critic_orders`): each query's candidate prompts (the greedy
  rollout and the hand-written orders of :mod:`rl_select.mdp.neighbour_orders`) are valued by the last
  step's Q, ``Q(state after the first k-1, last action)``, the predicted terminal reward (a plain regression
  target in training, no bootstrapping), and the best is kept. No LM row beyond the greedy mode's;
* ``verify``: the same candidate prompts, each scored for its query by the LM (one row each, calibrated like
  training), valued by the policy's :class:`~rl_select.mdp.per_query_verifier.Verifier`, which also reads the
  LM's answer under the prompt (:func:`verify_orders`). Policies trained since the verifier was added carry
  one (tensors ``verifier.*``, document entry ``"verifier"``); older files have none and refuse this mode.
  A policy that also carries an answer stacker (:mod:`rl_select.mdp.per_query_stacker`; tensor
  ``stacker.weight``, entry ``"stacker"``) votes over all the answers with it, the verifier's ``P(correct)``
  added per label, and keeps the winning label's most confident prompt; without one, the verifier's own choice.

The default mode (``mode=None``) is ``verify`` for a policy that carries a verifier, else ``critic``: the order
of the validation averages (docs/per_query/README.md).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rl_select.embeddings import Embedder
from rl_select.errors import ConfigError, PolicyError, SelectionError
from rl_select.lm.base import Scorer, grouped_logprobs
from rl_select.lm.spec import IDENTITY_FIELDS, ScorerSpec
from rl_select.mdp.artifacts import (
    qnet_document,
    qnet_from_document,
    read_artifact,
    refuse_other_scorer,
    write_artifact,
)
from rl_select.mdp.episode import EpisodeRule
from rl_select.mdp.neighbour_orders import ORDERS
from rl_select.mdp.per_query import PER_QUERY_REWARDS, FeatureView, PoolTable, QueryContexts, TableMemo
from rl_select.mdp.per_query_stacker import AnswerStacker, query_signals, stacked_choice
from rl_select.mdp.per_query_verifier import Verifier, choose, input_names, verifier_inputs
from rl_select.mdp.qnet import CandidateQNet, masked_q
from rl_select.mdp.shipped import PRETRAINED as PRETRAINED  # the shipped per-query policy's name
from rl_select.mdp.shipped import resolve_policy_path
from rl_select.types import Example, is_int

KIND = "per_query_policy"
"""The artifact kind of a per-query policy (a fixed-prompt policy file is kind ``"policy"``)."""

SHAPE = "per_query"
"""The episode shape this policy was trained on (recorded in the document)."""

MODES: tuple[str, ...] = ("greedy", "critic", "verify")
"""How a per-query policy chooses (see the module docstring); ``verify``, then ``critic``, chosen on validation rows."""

VERIFIER_PREFIX = "verifier."
"""The artifact's tensor names of the verifier start with this; the Q-network's are the rest."""
STACKER_PREFIX = "stacker."
"""The artifact's tensor names of the answer stacker start with this."""

_REQUIRED = ("shape", "feature_set", "m", "k", "reward", "scorer", "qnet", "training")


class PerQueryPolicyWarning(UserWarning):
    """A per-query policy used with another scorer than its training one (forced)."""


def greedy_orders(qnet: CandidateQNet, view: FeatureView, table: PoolTable, ctx: QueryContexts, k: int,
                  *, rows: Sequence[int] | None = None) -> list[list[int]]:
    """Every query's greedy episode: at each step, one Q forward over all queries, masked argmax.

    Args:
        qnet: The Q-network (dims of ``view``).
        view: The feature set.
        table: The pool's table.
        ctx: The queries' neighbourhoods.
        k: Demonstrations per query (``1 <= k <= M``).
        rows: Which queries (indices into ``ctx``); all by default.

    Returns:
        For each query, the chosen candidate positions (indices into its ``M`` neighbours), prompt order.
    """
    rule = EpisodeRule(n_candidates=ctx.m, k=k)
    rows = list(range(len(ctx.queries))) if rows is None else [int(r) for r in rows]
    chosen: list[list[int]] = [[] for _ in rows]
    qnet.eval()
    for _ in range(k):
        feats = [view(table, ctx, i, ch, k) for i, ch in zip(rows, chosen)]
        masks = np.stack([rule.mask(ch) for ch in chosen])
        if not feats:
            break
        with torch.no_grad():
            q = qnet(torch.as_tensor(np.stack([f[0] for f in feats])), torch.as_tensor(np.stack([f[1] for f in feats])))
            q = masked_q(q, torch.as_tensor(masks))
        for b, a in enumerate(q.argmax(dim=1).tolist()):
            _, chosen[b], _ = rule.apply(np.int64(a), chosen[b], False)
    return chosen


def last_step_values(qnet: CandidateQNet, view: FeatureView, table: PoolTable, ctx: QueryContexts,
                     orders: Sequence[Sequence[int]]) -> np.ndarray:
    """``Q(state after order[:-1], order[-1])`` for query ``i`` and ``orders[i]``, all in one forward, ``(Q,)``."""
    if not orders:
        return np.zeros(0)
    k = len(orders[0])
    feats = [view(table, ctx, i, list(o[:-1]), k) for i, o in enumerate(orders)]
    qnet.eval()
    with torch.no_grad():
        q = qnet(torch.as_tensor(np.stack([f[0] for f in feats])), torch.as_tensor(np.stack([f[1] for f in feats])))
    return q[torch.arange(len(orders)), torch.as_tensor([int(o[-1]) for o in orders])].numpy().astype(np.float64)


def candidate_orders(qnet: CandidateQNet, view: FeatureView, table: PoolTable, ctx: QueryContexts, k: int
                     ) -> dict[str, list[list[int]]]:
    """Each query's candidate prompts by name: the greedy rollout, then
    :data:`~rl_select.mdp.neighbour_orders.ORDERS`."""
    cands = {"greedy": greedy_orders(qnet, view, table, ctx, k)}
    for name, order in ORDERS.items():
        cands[name] = [order(table, ctx, i, k) for i in range(len(ctx.queries))]
    return cands


def score_candidates(cands: Mapping[str, Sequence[Sequence[int]]], table: PoolTable, ctx: QueryContexts,
                     scorer: Scorer) -> tuple[list[Sequence[int]], list[int], np.ndarray]:
    """Every candidate prompt (``C`` names, one prompt per query each) answered for its query, in one
    :func:`~rl_select.lm.base.grouped_logprobs` call.

    Returns:
        ``(orders, rows, logprobs)``, candidate-major: ``C * Q`` prompts, the query of each, ``(C * Q, L)``.
    """
    orders = [order for name in cands for order in cands[name]]
    rows = [i for _ in cands for i in range(len(ctx.queries))]
    lp = grouped_logprobs(scorer, [ctx.demos(table, i, o) for i, o in zip(rows, orders)],
                          [ctx.queries[i] for i in rows])
    return orders, rows, np.asarray(lp, dtype=np.float64)


def verify_orders(qnet: CandidateQNet, verifier: Verifier, view: FeatureView, table: PoolTable, ctx: QueryContexts,
                  k: int, scorer: Scorer, stacker: AnswerStacker | None = None) -> tuple[list[list[int]], list[str]]:
    """Each query's candidate prompt (:func:`candidate_orders`) that the verifier trusts most, after the LM answered.

    All ``C x Q`` (prompt, query) pairs go to the scorer in one :func:`~rl_select.lm.base.grouped_logprobs` call
    (one batched, disk-cached pass for a cached scorer; a prompt two candidates share is scored once);
    :func:`~rl_select.mdp.per_query_stacker.stacked_choice` picks per query when the policy carries a stacker, else
    :func:`~rl_select.mdp.per_query_verifier.choose`.

    Returns:
        ``(orders, sources)``: per query, the chosen positions in prompt order and the name of the candidate.
    """
    cands = candidate_orders(qnet, view, table, ctx, k)
    names = list(cands)
    flat, rows, lp = score_candidates(cands, table, ctx, scorer)
    best = verify_choice(verifier, view, table, ctx, k, flat, rows, lp, stacker)
    return [cands[names[c]][i] for i, c in enumerate(best)], [names[c] for c in best]


def verify_choice(verifier: Verifier, view: FeatureView, table: PoolTable, ctx: QueryContexts, k: int,
                  orders: Sequence[Sequence[int]], rows: Sequence[int], logprobs: np.ndarray,
                  stacker: AnswerStacker | None = None) -> np.ndarray:
    """The verify mode's choice among answered candidates (:func:`score_candidates`' output, candidate-major).

    Args:
        orders, rows, logprobs: ``C * Q`` prompts, the query of each, ``(C * Q, L)`` their answers.

    Returns:
        ``int (Q,)``: per query, the kept candidate's index in ``0..C-1``
        (:func:`~rl_select.mdp.per_query_stacker.stacked_choice` with a stacker, else
        :func:`~rl_select.mdp.per_query_verifier.choose`).
    """
    n_q = len(ctx.queries)
    n_c = len(orders) // n_q
    x, answers = verifier_inputs(view, table, ctx, orders, logprobs, k, rows=rows)
    p = verifier.p_correct(x).reshape(n_c, n_q)
    if stacker is not None:
        return stacked_choice(stacker, p, logprobs.reshape(n_c, n_q, -1), *query_signals(table, ctx))
    return choose(p, answers.reshape(n_c, n_q), table.n_labels)


def critic_orders(qnet: CandidateQNet, view: FeatureView, table: PoolTable, ctx: QueryContexts, k: int
                  ) -> tuple[list[list[int]], list[str]]:
    """Each query's best candidate prompt by the last step's Q (see the module docstring).

    Candidates, in this order (ties keep the first): the greedy rollout, then
    :data:`~rl_select.mdp.neighbour_orders.ORDERS`.

    Returns:
        ``(orders, sources)``: per query, the chosen positions in prompt order and the name of the candidate.
    """
    cands = candidate_orders(qnet, view, table, ctx, k)
    values = np.stack([last_step_values(qnet, view, table, ctx, o) for o in cands.values()])  # (C, Q)
    best = values.argmax(axis=0)
    names = list(cands)
    return [cands[names[c]][i] for i, c in enumerate(best)], [names[c] for c in best]


class PerQueryPolicy:
    """A trained per-query selector: ``Q(s, a)`` over a query's ``M`` nearest pool examples.

    Args:
        qnet: The trained :class:`CandidateQNet`.
        feature_set: The feature set's name (:data:`~rl_select.mdp.per_query.FEATURE_SETS`).
        m: Neighbours per query offered as candidates.
        k: Demonstrations per query.
        reward: The terminal reward it was trained on (:data:`~rl_select.mdp.per_query.PER_QUERY_REWARDS`).
        scorer_spec: The scorer its rewards and LM features came from (``None``: not recorded).
        training: Training summary (tasks, episodes, LM rows, agent settings).
        verifier: The :class:`~rl_select.mdp.per_query_verifier.Verifier` of the ``verify`` mode (``None``: none).
        verifier_training: Its training summary (recorded in the document).
        stacker: The :class:`~rl_select.mdp.per_query_stacker.AnswerStacker` the ``verify`` mode votes with
            (``None``: the verifier's own choice); only with a verifier.
        stacker_training: Its training summary (recorded in the document).

    Raises:
        PolicyError: Settings that do not fit together (one line).
    """

    def __init__(self, qnet: CandidateQNet, *, feature_set: str, m: int, k: int, reward: str,
                 scorer_spec: ScorerSpec | None = None, training: Mapping[str, Any] | None = None,
                 verifier: Verifier | None = None, verifier_training: Mapping[str, Any] | None = None,
                 stacker: AnswerStacker | None = None, stacker_training: Mapping[str, Any] | None = None) -> None:
        try:
            self.view = FeatureView.of(feature_set)
        except ConfigError as exc:
            raise PolicyError(str(exc)) from None
        if (qnet.state_dim, qnet.cand_dim) != self.view.dims:
            raise PolicyError(f"q-net dims ({qnet.state_dim}, {qnet.cand_dim}) do not match feature set "
                              f"{feature_set!r}; expected {self.view.dims}")
        if not is_int(m) or not is_int(k) or not 1 <= k <= m:
            raise PolicyError(f"m={m!r}, k={k!r}; expected integers with 1 <= k <= m")
        if reward not in PER_QUERY_REWARDS:
            raise PolicyError(f"reward {reward!r}; expected one of {list(PER_QUERY_REWARDS)}")
        self.qnet = qnet.eval()
        self.feature_set, self.m, self.k, self.reward = feature_set, int(m), int(k), reward
        self.scorer_spec = scorer_spec
        self.training = dict(training or {})
        if verifier is not None and verifier.in_dim != len(input_names(self.view)):
            raise PolicyError(f"verifier in_dim {verifier.in_dim} does not match feature set {feature_set!r}; "
                              f"expected {len(input_names(self.view))}")
        self.verifier = None if verifier is None else verifier.eval()
        self.verifier_training = dict(verifier_training or {})
        if stacker is not None and verifier is None:
            raise PolicyError("a stacker without a verifier; expected the stacker to come with the verifier whose "
                              "answers it votes on")
        self.stacker = None if stacker is None else stacker.eval()
        self.stacker_training = dict(stacker_training or {})
        self._tables = TableMemo()

    def __repr__(self) -> str:
        return (f"PerQueryPolicy(feature_set={self.feature_set!r}, m={self.m}, k={self.k}, reward={self.reward!r}, "
                f"verifier={self.verifier is not None}, stacker={self.stacker is not None})")

    @property
    def default_mode(self) -> str:
        """``verify`` when this policy carries a verifier, else ``critic`` (see :data:`MODES`)."""
        return "verify" if self.verifier is not None else "critic"

    def with_verifier(self, verifier: Verifier, training: Mapping[str, Any] | None = None) -> PerQueryPolicy:
        """This policy (the same Q-network and settings, no stacker) with ``verifier`` and its training summary."""
        return PerQueryPolicy(self.qnet, feature_set=self.feature_set, m=self.m, k=self.k, reward=self.reward,
                              scorer_spec=self.scorer_spec, training=self.training, verifier=verifier,
                              verifier_training=training)

    def with_stacker(self, stacker: AnswerStacker, training: Mapping[str, Any] | None = None) -> PerQueryPolicy:
        """This policy (the same Q-network, settings and verifier) with ``stacker`` and its training summary."""
        return PerQueryPolicy(self.qnet, feature_set=self.feature_set, m=self.m, k=self.k, reward=self.reward,
                              scorer_spec=self.scorer_spec, training=self.training, verifier=self.verifier,
                              verifier_training=self.verifier_training, stacker=stacker, stacker_training=training)

    # --- save / load ------------------------------------------------------------------------------

    def _document(self) -> dict[str, Any]:
        return {"shape": SHAPE, "feature_set": self.feature_set, "m": self.m, "k": self.k, "reward": self.reward,
                "scorer": None if self.scorer_spec is None else self.scorer_spec.to_dict(),
                "qnet": qnet_document(self.qnet), "training": copy.deepcopy(self.training),
                "verifier": None if self.verifier is None else {
                    **self.verifier.document(), "inputs": input_names(self.view),
                    "training": copy.deepcopy(self.verifier_training)},
                "stacker": None if self.stacker is None else {
                    **self.stacker.document(), "training": copy.deepcopy(self.stacker_training)}}

    def _tensors(self) -> dict[str, Tensor]:
        out = {n: t.detach().to("cpu").contiguous().clone() for n, t in self.qnet.state_dict().items()}
        if self.verifier is not None:
            out.update({VERIFIER_PREFIX + n: t.detach().to("cpu").contiguous().clone()
                        for n, t in self.verifier.state_dict().items()})
        if self.stacker is not None:
            out.update({STACKER_PREFIX + n: t.detach().to("cpu").contiguous().clone()
                        for n, t in self.stacker.state_dict().items()})
        return out

    def save(self, path: str | Path) -> Path:
        """Write the policy as one ``.safetensors`` file, atomically; returns the path."""
        return write_artifact(path, kind=KIND, tensors=self._tensors(), doc=self._document())

    @classmethod
    def load(cls, path: str | Path) -> PerQueryPolicy:
        """Read and check a file written by :meth:`save` (never executes code); ``"pretrained"`` is the shipped one.

        Raises:
            PolicyError: Missing, unreadable, edited or corrupted file; a fixed-prompt policy file; a document
                that lacks a field or does not match its tensors (one line naming the file).
        """
        path = resolve_policy_path(path)
        where = f"policy file {str(path)!r}"
        try:
            tensors, doc = read_artifact(path, kind=KIND, error=PolicyError, what="policy file")
        except PolicyError as exc:
            if "holds a 'policy' document" in str(exc):
                raise PolicyError(f"{where} is a fixed-prompt policy (one prompt for every query); expected a "
                                  "per-query policy (rl-select train-per-query)") from None
            raise
        missing = [key for key in _REQUIRED if key not in doc]
        if missing:
            raise PolicyError(f"{where}: the metadata lacks {missing}; expected all of {list(_REQUIRED)}")
        if doc["shape"] != SHAPE:
            raise PolicyError(f"{where} records episode shape {doc['shape']!r}; expected {SHAPE!r}")
        try:
            scorer_spec = None if doc["scorer"] is None else ScorerSpec.from_dict(doc["scorer"], where="scorer")
        except ConfigError as exc:
            raise PolicyError(f"{where}: {exc}") from None
        q_tensors = {n: t for n, t in tensors.items() if not n.startswith((VERIFIER_PREFIX, STACKER_PREFIX))}
        qnet = qnet_from_document(doc["qnet"], q_tensors, where=where, error=PolicyError)
        verifier = _verifier_from(doc.get("verifier"), tensors, where=where)
        stacker = _stacker_from(doc.get("stacker"), tensors, where=where)
        try:
            return cls(qnet, feature_set=doc["feature_set"], m=doc["m"], k=doc["k"], reward=doc["reward"],
                       scorer_spec=scorer_spec, training=doc["training"], verifier=verifier,
                       verifier_training=(doc.get("verifier") or {}).get("training"), stacker=stacker,
                       stacker_training=(doc.get("stacker") or {}).get("training"))
        except PolicyError as exc:
            raise PolicyError(f"{where}: {exc}") from None

    # --- use --------------------------------------------------------------------------------------

    def check_scorer(self, scorer: Scorer, *, force: bool = False) -> bool:
        """Refuse a scorer other than the training one unless ``force`` (then warn); ``True`` when the same.

        The same model in another dtype (bf16 vs fp32) is accepted with a warning: a CPU without native bf16
        runs fp32, and the policy reads the LM only through zero-shot features.

        Raises:
            PolicyError: The scorers differ (one line naming the fields, trained vs given).
        """
        other: ScorerSpec | None = getattr(scorer, "scorer_spec", None)
        if self.scorer_spec is None or other is None:
            return True
        fields = IDENTITY_FIELDS
        mine, theirs = self.scorer_spec.dtype, other.dtype
        if "auto" not in (mine, theirs) and None not in (mine, theirs) and mine != theirs:
            # the same model in another precision (bf16 on a CPU without native bf16 is emulated, 4-5x slower):
            # its fingerprint hashes the cast weights, so only the model id can be compared
            fields = tuple(f for f in IDENTITY_FIELDS if f not in ("dtype", "model_fingerprint"))
            if not self.scorer_spec.differences(other, fields=fields):
                warnings.warn(f"this per-query policy was trained with dtype {mine}, used with {theirs}: the same "
                              "model, its LM features within rounding", PerQueryPolicyWarning, stacklevel=2)
        diff = self.scorer_spec.differences(other, fields=fields)
        return refuse_other_scorer(diff, force=force, warning=PerQueryPolicyWarning, what="this per-query policy")

    def pool_table(self, pool: Sequence[Example], *, labels: Sequence[str], embedder: Embedder,
                   scorer: Scorer | None, index: str = "auto") -> PoolTable:
        """The pool's table as :meth:`contexts` reads it (with the LM only if the features need it): built on the
        first call, the same object again while the pool, labels, embedder, scorer and index stay the same."""
        return self._tables.get(pool, labels=labels, embedder=embedder, scorer=scorer if self.view.needs_lm else None,
                                index=index)

    def contexts(self, pool: Sequence[Example], queries: Sequence[Example], *, labels: Sequence[str],
                 embedder: Embedder, scorer: Scorer | None, index: str = "auto") -> tuple[PoolTable, QueryContexts]:
        """The pool's table and the queries' neighbourhoods this policy reads (LM rows only if its features need them);
        the table is the last call's when the pool, labels, embedder and scorer are the same.

        Raises:
            SelectionError: ``M`` larger than the pool, or a feature set that needs the LM without a scorer.
        """
        if self.m > len(pool):
            raise SelectionError(f"this policy takes M={self.m} neighbours per query but the pool has {len(pool)} "
                                 f"examples; expected a pool of at least {self.m}")
        lm = scorer if self.view.needs_lm else None
        if self.view.needs_lm and scorer is None:
            raise SelectionError(f"feature set {self.feature_set!r} reads zero-shot LM features; expected a scorer")
        table = self.pool_table(pool, labels=labels, embedder=embedder, scorer=lm, index=index)
        return table, QueryContexts.build(table, queries, m=self.m, embedder=embedder, scorer=lm)

    def select_for(self, pool: Sequence[Example], queries: Sequence[Example], *, labels: Sequence[str],
                   embedder: Embedder, scorer: Scorer | None = None, force: bool = False,
                   mode: str | None = None, index: str = "auto") -> list[list[Example]]:
        """Each query's ``k`` demonstrations, in prompt order (the most relevant last, where the Q put it).

        Args:
            pool: Labelled candidate examples (at least ``M``).
            queries: The queries (labels unused).
            labels: The task's label names (pool labels are read as ids of these).
            embedder: Sentence embedder for the neighbourhoods (the one the policy was trained with).
            scorer: The frozen LM, for the zero-shot features (cached rows: the pool's, or for a pool of more
                than :data:`~rl_select.mdp.per_query.LAZY_LM_MIN_ROWS` its queries' neighbours'; and ``Q``).
            force: Use a scorer other than the training one (warns).
            mode: One of :data:`MODES`; ``None``: :attr:`default_mode`. ``verify`` scores every candidate prompt
                for its query (``C`` LM rows a query, cached) and needs a scorer and a policy with a verifier.
            index: The pool's neighbour index (:data:`~rl_select.neighbours.BACKENDS`; ``"auto"``: exact below
                :data:`~rl_select.neighbours.ANN_MIN_ROWS` rows, FAISS above when installed).

        Returns:
            ``len(queries)`` lists of ``k`` distinct pool examples.

        Raises:
            SelectionError: An unknown mode; ``verify`` without a verifier or without a scorer (and see
                :meth:`contexts`).
        """
        mode = self.default_mode if mode is None else check_mode(mode)
        if mode == "verify" and self.verifier is None:
            raise SelectionError("mode 'verify' needs a policy trained with a verifier (this file has none); expected "
                                 "mode 'critic' or 'greedy', or a policy from rl-select per-query train")
        if mode == "verify" and scorer is None:
            raise SelectionError("mode 'verify' scores each candidate prompt with the LM; expected a scorer")
        if scorer is not None:
            self.check_scorer(scorer, force=force)
        if not queries:
            return []
        table, ctx = self.contexts(pool, queries, labels=labels, embedder=embedder, scorer=scorer, index=index)
        if mode == "greedy":
            orders = greedy_orders(self.qnet, self.view, table, ctx, self.k)
        elif mode == "verify":
            assert self.verifier is not None and scorer is not None
            orders, _ = verify_orders(self.qnet, self.verifier, self.view, table, ctx, self.k, scorer, self.stacker)
        else:
            orders, _ = critic_orders(self.qnet, self.view, table, ctx, self.k)
        return [ctx.demos(table, i, order) for i, order in enumerate(orders)]


def _part_from(entry: Any, tensors: Mapping[str, Tensor], prefix: str, build: Callable[[Any], nn.Module], *,
               what: str, where: str) -> Any:
    """A policy file's optional part (its verifier, its stacker): built by ``build`` from the document's entry,
    loaded with the tensors named ``prefix*`` (``None`` when both are absent).

    Raises:
        PolicyError: An entry without tensors (or the reverse), or one that does not match them (one line).
    """
    mine = {n[len(prefix):]: t for n, t in tensors.items() if n.startswith(prefix)}
    if entry is None and not mine:
        return None
    if entry is None or not mine:
        raise PolicyError(f"{where}: the {what}'s metadata and tensors do not go together "
                          f"({'no' if entry is None else 'an'} entry, {len(mine)} tensors); expected both or neither")
    try:
        part = build(entry)
        part.load_state_dict(dict(mine), strict=True)
    except (ValueError, RuntimeError) as exc:
        raise PolicyError(f"{where}: {what}: {str(exc).splitlines()[0]}") from None
    return part.eval()


def _verifier_from(entry: Any, tensors: Mapping[str, Tensor], *, where: str) -> Verifier | None:
    """The verifier of a document's ``"verifier"`` entry and its ``verifier.*`` tensors (``None`` when absent)."""
    return _part_from(entry, tensors, VERIFIER_PREFIX, Verifier.from_document, what="verifier", where=where)


def _stacker_from(entry: Any, tensors: Mapping[str, Tensor], *, where: str) -> AnswerStacker | None:
    """The stacker of a document's ``"stacker"`` entry and its ``stacker.*`` tensors (``None`` when absent); its
    weights must be finite."""
    stacker = _part_from(entry, tensors, STACKER_PREFIX, AnswerStacker.from_document, what="stacker", where=where)
    if stacker is not None and not torch.isfinite(stacker.weight).all():
        raise PolicyError(f"{where}: stacker weights {stacker.weight.tolist()}; expected finite numbers")
    return stacker


def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`MODES`; else a one-line error."""
    if mode not in MODES:
        raise SelectionError(f"per-query policy mode {mode!r}; expected one of {list(MODES)}")
    return mode


def check_k_fits(k: int, m: int) -> None:
    """One-line error unless ``1 <= k <= m`` (demonstrations per query against neighbours offered)."""
    if not is_int(k) or not is_int(m) or not 1 <= k <= m:
        raise SelectionError(f"k={k!r} demonstrations from M={m!r} neighbours; expected 1 <= k <= M")
