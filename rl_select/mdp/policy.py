"""The exported, inference-only demonstration selector: one ``.safetensors`` file, no RL libraries.

A :class:`SelectorPolicy` holds a trained :class:`~rl_select.mdp.qnet.CandidateQNet` and everything needed
to use it again exactly as it was trained: the feature spec, the demo budget ``k`` (with ``allow_stop`` /
``min_len``), the full task spec, the complete scorer spec (backend, model id and fingerprint, dtype,
scoring mode, length normalisation, calibration: :class:`~rl_select.lm.spec.ScorerSpec`) and a training
summary. It needs neither gymnasium nor stable-baselines3: :meth:`SelectorPolicy.select` rolls out the
same :class:`~rl_select.mdp.episode.SelectionEpisode` the training env wraps.

File: the one artifact format of :mod:`rl_select.mdp.artifacts`, ``kind = "policy"``; the tensors are the
Q-network's ``state_dict`` (plus ``probe_critic``, the critic's weights, when it has one) and the document
holds::

    {"feature_spec": {...FeatureSpec.to_dict()}, "k": 4, "allow_stop": false, "min_len": 0,
     "task": {...TaskSpec.to_dict()}, "scorer": {...ScorerSpec.to_dict()} | null,
     "scorer_fingerprint": "hf:…:direct:0", "qnet": {...}, "training": {...},
     "critic": {...ProbeCritic.document()} | null, ...format fields}

A file without a ``critic`` entry (written before it existed) loads with ``critic = None``.

The whole file is hash-checked on load (the artifact's ``sha256`` covers this document and the tensors):
an edited ``k``, scorer spec or training record is refused with one line saying the policy file was edited
or corrupted. Format-version-2 files (before that hash) load with their tensors' hash as the only check.

``scorer`` is ``null`` only for a policy trained with a scorer that has no spec (a test double); then the
scorer fingerprint alone identifies it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rl_select.embeddings import Embedder
from rl_select.errors import ConfigError, PolicyError, SelectionError, TaskError
from rl_select.lm.base import Scorer, grouped_logprobs
from rl_select.lm.spec import ScorerSpec
from rl_select.mdp.artifacts import (
    artifact_document,
    qnet_document,
    qnet_from_document,
    read_artifact,
    refuse_other_scorer,
    write_artifact,
)
from rl_select.mdp.critic import TENSOR as CRITIC_TENSOR
from rl_select.mdp.critic import ProbeCritic, critic_features, per_query_features
from rl_select.mdp.episode import EpisodeRule, SelectionEpisode
from rl_select.mdp.feature_spec import FeatureSpec
from rl_select.mdp.features import Featurizer
from rl_select.mdp.qnet import CandidateQNet, masked_q
from rl_select.mdp.rollout import ActFn, run_episode
from rl_select.mdp.shipped import resolve_policy_path
from rl_select.mdp.table import RowTable
from rl_select.prompts import render_prompt
from rl_select.tasks import TaskSpec
from rl_select.types import Example, is_int

KIND = "policy"
"""The artifact ``kind`` of a policy file."""

_REQUIRED = ("feature_spec", "k", "allow_stop", "min_len", "task", "scorer", "scorer_fingerprint", "qnet",
             "training")


class PolicyWarning(UserWarning):
    """A policy is used, forced, with a scorer other than the one it was trained with."""



class SelectorPolicy:
    """A trained candidate-scoring Q-network packaged for inference.

    Args:
        qnet: The trained network (its dims must match ``feature_spec``).
        feature_spec: The features it was trained on.
        k: The demo budget it was trained for (the default of :meth:`select`).
        task: The full task spec (for :meth:`build_prompt`, and to rebuild the task).
        scorer_spec: The resolved spec of the scorer it was trained with (``scorer.scorer_spec``), or
            ``None`` for a scorer without one (test doubles).
        scorer_fingerprint: That scorer's ``fingerprint`` (a record; identity is compared on
            ``scorer_spec``'s fields when there is one).
        training: A JSON-serialisable training summary (agent, steps, returns, ...).
        allow_stop: Whether STOP may be chosen (as in the training env).
        min_len: Fewest demos before STOP may be chosen (as in the training env).
        critic: The probe critic fitted on the same rollouts (``agent.probe_critic``), or ``None``.

    Attributes:
        last_selection_info: After :meth:`select`: ``{"k", "chosen", "stopped", "steps": [{"step",
            "action", "q_action", "q_stop", "q"}], "lm_queries", "scorer_stats"}``; ``None`` before.

    Raises:
        PolicyError: Dims that do not match the feature spec, a bad ``k`` / ``min_len``, or a training
            summary that is not JSON-serialisable.
    """

    def __init__(
        self,
        qnet: CandidateQNet,
        *,
        feature_spec: FeatureSpec,
        k: int,
        task: TaskSpec,
        scorer_spec: ScorerSpec | None,
        scorer_fingerprint: str,
        training: Mapping[str, Any] | None = None,
        allow_stop: bool = False,
        min_len: int = 0,
        critic: ProbeCritic | None = None,
    ) -> None:
        if not isinstance(qnet, CandidateQNet):
            raise PolicyError(f"qnet is a {type(qnet).__name__}; expected a CandidateQNet")
        if (qnet.state_dim, qnet.cand_dim) != (feature_spec.state_dim, feature_spec.cand_dim):
            raise PolicyError(
                f"q-net dims (state_dim={qnet.state_dim}, cand_dim={qnet.cand_dim}) do not match feature set "
                f"{feature_spec.kind!r}; expected ({feature_spec.state_dim}, {feature_spec.cand_dim})"
            )
        if not is_int(k) or k < 1:
            raise PolicyError(f"k={k!r}; expected an integer >= 1")
        if not is_int(min_len) or not 0 <= min_len <= k:
            raise PolicyError(f"min_len={min_len!r}; expected an integer with 0 <= min_len <= k={k}")
        if scorer_spec is not None and not isinstance(scorer_spec, ScorerSpec):
            raise PolicyError(f"scorer_spec is a {type(scorer_spec).__name__}; expected a ScorerSpec or None")
        try:
            training = json.loads(json.dumps(dict(training or {})))
        except (TypeError, ValueError) as exc:
            raise PolicyError(f"training summary is not JSON-serialisable ({exc}); expected plain values") from None
        self.qnet = qnet.eval()
        self.feature_spec = feature_spec
        self.k = int(k)
        self.task = task
        self.scorer_spec = scorer_spec
        self.scorer_fingerprint = str(scorer_fingerprint)
        self.training: dict[str, Any] = training
        self.allow_stop = bool(allow_stop)
        self.min_len = int(min_len)
        if critic is not None and not isinstance(critic, ProbeCritic):
            raise PolicyError(f"critic is a {type(critic).__name__}; expected a ProbeCritic or None")
        self.critic = critic
        self.last_selection_info: dict[str, Any] | None = None
        self._table: tuple[Any, Any, RowTable] | None = None  # (scorer, embedder, its row table), reused

    def _row_table(self, scorer: Scorer, embedder: Embedder | None) -> RowTable | None:
        """The one-off row table of a table feature set, kept across :meth:`select` calls with the same scorer
        and embedder (so M proposals of policy-guided search ask the LM for the pool's rows once)."""
        if not self.feature_spec.uses_table:
            return None
        if self._table is None or self._table[0] is not scorer or self._table[1] is not embedder:
            table = RowTable(scorer) if embedder is None else RowTable(scorer, embedder=embedder)
            self._table = (scorer, embedder, table)
        return self._table[2]

    def __repr__(self) -> str:
        model = self.scorer_spec.model if self.scorer_spec else self.scorer_fingerprint
        return (
            f"SelectorPolicy(feature_set={self.feature_spec.kind!r}, k={self.k}, task={self.task.name!r}, "
            f"model={model!r}, hidden={self.qnet.hidden})"
        )

    @property
    def agent(self) -> str:
        """The name of the agent that trained it (``training["agent"]``), or ``"policy"``."""
        return str(self.training.get("agent", "policy"))

    # --- the document -----------------------------------------------------------------------------

    def _tensors(self) -> dict[str, Tensor]:
        out = {name: t.detach().to("cpu").contiguous().clone() for name, t in self.qnet.state_dict().items()}
        if self.critic is not None:
            out[CRITIC_TENSOR] = torch.as_tensor(self.critic.weights, dtype=torch.float64).clone()
        return out

    def _document(self) -> dict[str, Any]:
        return {
            "feature_spec": self.feature_spec.to_dict(),
            "k": self.k,
            "allow_stop": self.allow_stop,
            "min_len": self.min_len,
            "task": self.task.to_dict(),
            "scorer": None if self.scorer_spec is None else self.scorer_spec.to_dict(),
            "scorer_fingerprint": self.scorer_fingerprint,
            "qnet": qnet_document(self.qnet),
            "training": copy.deepcopy(self.training),
            "critic": None if self.critic is None else self.critic.document(),
        }

    def describe(self) -> dict[str, Any]:
        """The document this policy saves, as JSON values (with ``tensors_sha256`` of the current weights and
        the whole document's ``sha256``)."""
        return json.loads(json.dumps(artifact_document(KIND, self._tensors(), self._document())))

    # --- save / load ------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the policy as one ``.safetensors`` file, atomically (temporary file + ``os.replace``).

        Args:
            path: Target file (parent folders are created).

        Returns:
            The path written.
        """
        return write_artifact(path, kind=KIND, tensors=self._tensors(), doc=self._document())

    @classmethod
    def load(cls, path: str | Path, *, expect_feature_set: str | None = None) -> SelectorPolicy:
        """Read a policy file written by :meth:`save`, checking it thoroughly; never executes code.

        Args:
            path: The ``.safetensors`` file, or ``"pretrained-critic"``: the fixed-prompt policy with its probe critic
                shipped in the package (:mod:`rl_select.mdp.shipped`).
            expect_feature_set: Refuse a policy with another feature-set kind (``"active"``, ...).

        Returns:
            The policy, in eval mode on the CPU.

        Raises:
            PolicyError: Missing file (or a shipped name this install lacks); not a (complete) safetensors file;
                no / non-JSON metadata; another format, version or kind; a document or tensors that do not match
                their recorded hashes (edited or corrupted); a document that lacks a field or whose architecture
                does not match the tensors; another feature set than expected.
        """
        path = resolve_policy_path(path)
        where = f"policy file {str(path)!r}"
        tensors, doc = read_artifact(path, kind=KIND, error=PolicyError, what="policy file")
        missing = [key for key in _REQUIRED if key not in doc]
        if missing:
            raise PolicyError(f"{where}: the metadata lacks {missing}; expected all of {list(_REQUIRED)}")
        try:
            feature_spec = FeatureSpec.from_dict(doc["feature_spec"])
            task = TaskSpec.from_dict(doc["task"])
            scorer_spec = None if doc["scorer"] is None else ScorerSpec.from_dict(doc["scorer"], where="scorer")
        except (ConfigError, TaskError) as exc:
            raise PolicyError(f"{where}: {exc}") from None
        want = (feature_spec.state_dim, feature_spec.cand_dim)
        arch = doc["qnet"]
        if isinstance(arch, dict) and (arch.get("state_dim"), arch.get("cand_dim")) != want:
            raise PolicyError(
                f"{where}: q-net dims (state_dim={arch.get('state_dim')}, cand_dim={arch.get('cand_dim')}) do not "
                f"match feature set {feature_spec.kind!r}; expected {want}"
            )
        tensors = dict(tensors)
        critic_w = tensors.pop(CRITIC_TENSOR, None)
        if (critic_w is None) != (doc.get("critic") is None):
            raise PolicyError(f"{where}: the critic entry and the {CRITIC_TENSOR!r} tensor must come together; "
                              f"found entry {doc.get('critic') is not None}, tensor {critic_w is not None}")
        critic = None if critic_w is None else ProbeCritic.from_document(doc["critic"], critic_w.numpy(), where=where)
        qnet = qnet_from_document(arch, tensors, where=where, error=PolicyError)
        try:
            policy = cls(
                qnet, feature_spec=feature_spec, k=doc["k"], task=task, scorer_spec=scorer_spec,
                scorer_fingerprint=doc["scorer_fingerprint"], training=doc["training"],
                allow_stop=doc["allow_stop"], min_len=doc["min_len"], critic=critic,
            )
        except PolicyError as exc:
            raise PolicyError(f"{where}: {exc}") from None
        if expect_feature_set is not None and feature_spec.kind != expect_feature_set:
            raise PolicyError(f"{where} uses feature set {feature_spec.kind!r}; expected {expect_feature_set!r}")
        return policy

    # --- inference --------------------------------------------------------------------------------

    def scorer_differences(self, scorer: Scorer) -> list[str]:
        """How ``scorer`` differs from the scorer this policy was trained with (empty: the same).

        Compared field by field on the :class:`~rl_select.lm.spec.ScorerSpec` when both have one, else by
        the whole fingerprint; a scorer that gives neither is not checked.
        """
        other: ScorerSpec | None = getattr(scorer, "scorer_spec", None)
        if self.scorer_spec is not None and other is not None:
            return self.scorer_spec.differences(other)
        fp = getattr(scorer, "fingerprint", None)
        if fp is None or str(fp) == self.scorer_fingerprint:
            return []
        return [f"fingerprint: {self.scorer_fingerprint!r} vs {str(fp)!r}"]

    def check_scorer(self, scorer: Scorer, *, force: bool = False) -> bool:
        """Refuse a scorer other than the training one, unless ``force`` (then warn).

        Returns:
            ``True`` when it is the training scorer, ``False`` after a :class:`PolicyWarning` (forced).

        Raises:
            PolicyError: The scorers differ and ``force`` is not set; one line naming both settings.
        """
        return refuse_other_scorer(self.scorer_differences(scorer), force=force, warning=PolicyWarning)

    def select(
        self,
        pool: Sequence[Example],
        *,
        scorer: Scorer,
        val: Sequence[Example],
        k: int | None = None,
        embedder: Embedder | None = None,
        force: bool = False,
        temperature: float = 0.0,
        rng: np.random.Generator | None = None,
    ) -> list[Example]:
        """Choose an ordered list of demonstrations from ``pool`` by the greedy Q-network rollout.

        The selection is one :class:`~rl_select.mdp.episode.SelectionEpisode` over ``pool`` (the steps the
        training env takes, without rewards) rolled out by :func:`~rl_select.mdp.rollout.run_episode`:
        at each step the features of the current prompt come from the shared
        :class:`~rl_select.mdp.features.Featurizer`, the :class:`~rl_select.mdp.episode.EpisodeRule`
        masks chosen candidates and STOP unless ``allow_stop`` and at least ``min(min_len, k)`` demos are
        chosen, and the arg-max of the masked Q-values is taken (first index on ties). STOP ends the
        selection early. The prompt that ends it is not scored, so a full selection costs ``k`` scorer
        calls.

        Args:
            pool: The N candidate demonstrations.
            scorer: The frozen LM: the one the policy was trained with (see :meth:`check_scorer`).
            val: Queries that summarise the prompt in the state features (a small unlabelled-OK split;
                labels are read only by ``labelled`` features' accuracy bookkeeping).
            k: Demo budget; defaults to the policy's ``k``.
            embedder: For ``labelled`` features' similarities (default: the hashing embedder).
            force: Use a scorer other than the training one (with a :class:`PolicyWarning`).
            temperature: ``0`` (default): the greedy arg-max. ``> 0``: each action is drawn from the
                softmax of the masked Q-values divided by ``temperature`` (the sampled rollouts of
                policy-guided search, ``rl_select.selectors.policy_search``); masked actions are never drawn.
            rng: The generator of those draws (required when ``temperature > 0``).

        Returns:
            The chosen examples in prompt order (at most ``k``; fewer after a STOP).

        Raises:
            SelectionError: ``k < 1`` or ``k`` larger than the pool; an empty ``val``; a negative
                ``temperature``, or a positive one without ``rng``.
            PolicyError: Another scorer than the training one, and not ``force``.
        """
        pool_t = tuple(pool)
        k = self.k if k is None else k
        if not is_int(k) or k < 1:
            raise SelectionError(f"k={k!r}; expected an integer >= 1")
        if k > len(pool_t):
            raise SelectionError(
                f"k={k} is larger than the pool of {len(pool_t)} candidates; expected k <= {len(pool_t)}"
            )
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature >= 0:
            raise SelectionError(f"temperature={temperature!r}; expected a number >= 0")
        if temperature > 0 and rng is None:
            raise SelectionError("temperature > 0 samples actions; expected an rng (numpy Generator)")
        self.check_scorer(scorer, force=force)
        rule = EpisodeRule(n_candidates=len(pool_t), k=k, allow_stop=self.allow_stop, min_len=min(self.min_len, k))
        featurizer = Featurizer(self.feature_spec, scorer, val=val, embedder=embedder,
                                table=self._row_table(scorer, embedder))
        episode = SelectionEpisode(pool_t, featurizer, rule, reward=None)
        stats = getattr(scorer, "stats", None)
        before = stats.copy() if hasattr(stats, "copy") else None
        steps: list[dict[str, Any]] = []
        with torch.no_grad():
            res = run_episode(episode, self._greedy_act(steps, rule.stop, temperature=float(temperature), rng=rng))
        stopped = bool(res.actions) and res.actions[-1] == rule.stop
        after = getattr(scorer, "stats", None)
        self.last_selection_info = {
            "k": k,
            "chosen": list(res.chosen),
            "stopped": stopped,
            "steps": steps,
            "lm_queries": int(res.lm_queries or 0),
            "scorer_stats": (after - before).as_dict() if before is not None and hasattr(after, "as_dict") else None,
        }
        return [pool_t[i] for i in res.chosen]

    def q_of_orders(
        self,
        pool: Sequence[Example],
        orders: Sequence[Sequence[int]],
        *,
        scorer: Scorer,
        val: Sequence[Example],
        embedder: Embedder | None = None,
        force: bool = False,
    ) -> np.ndarray:
        """The Q-value of the last action of each given prompt order: the policy's predicted return of that
        prompt (the training reward's units), without choosing anything.

        Each order is replayed as one :class:`~rl_select.mdp.episode.SelectionEpisode` over ``pool`` (the
        steps :meth:`select` takes, with the given actions instead of the arg-max), so its features are the
        ones the policy was trained on. The table feature sets ask the LM only for the pool's table rows,
        once across all orders; the prompt-scoring sets score every step's prompt.

        Args:
            pool: The N candidate demonstrations.
            orders: Prompt orders, each a sequence of distinct pool indices (``1 <= len <= N``).
            scorer, val, embedder, force: As in :meth:`select`.

        Returns:
            ``(len(orders),)`` float64: ``Q(s_last, a_last)`` of each order.

        Raises:
            SelectionError: An empty order, or one with a repeated or out-of-range index.
            PolicyError: Another scorer than the training one, and not ``force``.
        """
        pool_t = tuple(pool)
        self.check_scorer(scorer, force=force)
        table = self._row_table(scorer, embedder)
        device = next(self.qnet.parameters()).device
        featurizer = Featurizer(self.feature_spec, scorer, val=val, embedder=embedder, table=table)  # one for all
        out = np.zeros(len(orders), dtype=np.float64)
        for j, order in enumerate(orders):
            order = [int(i) for i in order]
            if not order or len(set(order)) != len(order) or not all(0 <= i < len(pool_t) for i in order):
                raise SelectionError(f"prompt order {order} must be distinct pool indices in [0, {len(pool_t)})")
            rule = EpisodeRule(n_candidates=len(pool_t), k=len(order), allow_stop=False, min_len=0)
            episode = SelectionEpisode(pool_t, featurizer, rule, reward=None)
            last: list[float] = []

            def act(obs: Mapping[str, Any], mask: np.ndarray, chosen: list[int], order=order, last=last) -> int:
                a = order[len(chosen)]
                if len(chosen) == len(order) - 1:  # only the last step's Q is wanted
                    with torch.no_grad():
                        q = self.qnet(torch.as_tensor(obs["state"], device=device).unsqueeze(0),
                                      torch.as_tensor(obs["candidates"], device=device).unsqueeze(0))[0]
                    last.append(float(q[a]))
                return a

            run_episode(episode, act)
            out[j] = last[0]
        return out

    def critic_values(self, prompts: Sequence[Sequence[Example]], *, scorer: Scorer, val: Sequence[Example],
                      force: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The probe critic's value of each complete prompt: each is scored on ``val``'s texts (one scorer call
        of ``len(val)`` queries per prompt; the val labels are not read).

        Returns:
            ``(values (n,), features (n, F))`` for the ``n`` prompts.

        Raises:
            PolicyError: The policy has no critic, or another scorer than the training one and not ``force``.
            SelectionError: An empty ``val``.
        """
        critic = self._critic_for(scorer, val, force=force)
        labels = list(scorer.spec.labels)  # the task being selected for (a transfer policy trained on others)
        feats = np.stack([critic_features(scorer.logprobs(demos=list(p), queries=val), [d.label for d in p], labels)
                          for p in prompts]) if prompts else np.zeros((0, critic.weights.size - 1))
        return critic.score(feats), feats

    def critic_value_per_query(self, demo_lists: Sequence[Sequence[Example]], *, scorer: Scorer,
                               val: Sequence[Example], force: bool = False) -> tuple[float, np.ndarray]:
        """The probe critic's value of PER-QUERY prompts (kNN's): val query ``i`` prompted with ``demo_lists[i]``
        (queries sharing a list share one scorer call; the val labels are not read).

        Returns:
            ``(value, features (F,))``.
        """
        critic = self._critic_for(scorer, val, force=force)
        if len(demo_lists) != len(val):
            raise SelectionError(f"{len(demo_lists)} demo lists for {len(val)} probe queries; expected one each")
        lp = grouped_logprobs(scorer, demo_lists, val)
        feats = per_query_features(lp, [[d.label for d in demos] for demos in demo_lists], list(scorer.spec.labels))
        return float(critic.score(feats)[0]), feats

    def _critic_for(self, scorer: Scorer, val: Sequence[Example], *, force: bool) -> ProbeCritic:
        if self.critic is None:
            raise PolicyError("this policy has no probe critic; expected one trained with agent.probe_critic = true")
        if not val:
            raise SelectionError("the probe critic needs unlabelled probe queries (the val split); got none")
        self.check_scorer(scorer, force=force)
        return self.critic

    def _greedy_act(self, steps: list[dict[str, Any]], stop: int, *, temperature: float = 0.0,
                    rng: np.random.Generator | None = None) -> ActFn:
        """:meth:`select`'s ``act``: the arg-max of the masked Q-values (or, with ``temperature > 0``, a draw
        from their softmax over the valid actions), logging each step's Q-values in ``steps``."""
        device = next(self.qnet.parameters()).device

        def act(obs: Mapping[str, Any], mask: np.ndarray, chosen: list[int]) -> int:
            q = self.qnet(
                torch.as_tensor(obs["state"], device=device).unsqueeze(0),
                torch.as_tensor(obs["candidates"], device=device).unsqueeze(0),
            )[0]
            if temperature > 0 and rng is not None:
                valid = np.flatnonzero(mask)
                z = q.detach().cpu().numpy().astype(np.float64)[valid] / temperature
                p = np.exp(z - z.max())
                action = int(valid[rng.choice(len(valid), p=p / p.sum())])
            else:
                action = int(torch.argmax(masked_q(q, torch.as_tensor(mask, device=device))).item())
            q_list = [float(v) for v in q.cpu()]
            steps.append({
                "step": len(chosen),
                "action": "STOP" if action == stop else action,
                "q_action": q_list[action],
                "q_stop": q_list[stop],
                "q": q_list,
            })
            return action

        return act

    def build_prompt(self, query: Example | str | tuple[str, str], demos: Sequence[Example]) -> str:
        """The direct-mode prompt for the frozen LLM: instruction, demonstrations, then the query.

        Args:
            query: An :class:`Example` (its label is ignored), a bare string (single-input tasks), or a
                ``(text, text2)`` tuple (sentence-pair tasks).
            demos: The demonstrations in prompt order (e.g. :meth:`select`'s result).

        Returns:
            Text ending with the template's label cue (``"...\\nSentiment:"``), for the LLM to complete.

        Raises:
            SelectionError: A query of the wrong shape for the task, or a demo label the task lacks.
        """
        spec = self.task
        if isinstance(query, Example):
            ex = query
        elif isinstance(query, str):
            if spec.is_pair:
                raise SelectionError(
                    f"task {spec.name!r} takes a pair of inputs {list(spec.input_fields)}; expected a (text, text2) "
                    "tuple or an Example, not a bare string"
                )
            ex = Example(text=query, label=spec.labels[0])
        elif isinstance(query, tuple) and len(query) == len(spec.input_fields) and all(
            isinstance(s, str) for s in query
        ):
            ex = Example(text=query[0], text2=query[1] if spec.is_pair else None, label=spec.labels[0])
        else:
            shape = "(text, text2) tuple" if spec.is_pair else "string"
            raise SelectionError(
                f"query {query!r:.80} does not fit task {spec.name!r}; expected an Example or a {shape}"
            )
        unknown = sorted({d.label for d in demos if d.label not in spec.verbalizers})
        if unknown:
            raise SelectionError(
                f"demo labels {unknown} are not labels of task {spec.name!r}; expected {list(spec.labels)}"
            )
        return render_prompt(spec, list(demos), ex)
