"""Selecting once into a prompt file: :func:`select_prompt` (any selector or policy), :func:`select_per_query_prompt`
(a per-query policy), :func:`make_baseline` (a registered baseline by name)."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rl_select.errors import SelectionError
from rl_select.lm.base import grouped_logprobs
from rl_select.lm.spec import ScorerSpec
from rl_select.metrics import label_ids
from rl_select.prompt_file.document import PerQuery, PromptFile, query_key
from rl_select.prompt_file.fileformat import PromptFileError
from rl_select.prompt_file.knn_rule import _knn_demos, embedder_from_name, embedder_name
from rl_select.tasks import TaskSpec
from rl_select.types import Example


def make_baseline(name: str, args: Mapping[str, Any] | None = None) -> Any:
    """A registered baseline selector; kNN's ``embedder`` may also name the hashing embedder (``"hashing"``).

    Raises:
        SelectionError: An unknown name or bad arguments (one line).
        PromptFileError: kNN with ``embedder="scorer"`` (a prompt file renders without the LM).
    """
    from rl_select.selectors import make_selector

    args = dict(args or {})
    base = name.split(":")[0]
    if base == "policy":
        raise SelectionError("selector 'policy' is a trained policy; expected --policy FILE (or "
                             "PromptFile.from_policy) instead")
    if base == "knn" and isinstance(args.get("embedder"), str):
        args["embedder"] = embedder_from_name(args["embedder"])  # refuses "scorer": files render without the LM
    return make_selector(base, **args)


def select_per_query_prompt(
    policy: Any, *, task: TaskSpec, pool: Sequence[Example], queries: Sequence[Example], scorer: Any,
    val: Sequence[Example] = (), seed: int = 0, measure: bool = True, args: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None, scorer_spec: ScorerSpec | None = None, force: bool = False,
    embedder: Any = None, mode: str | None = None,
) -> PromptFile:
    """A per-query policy's choices for ``queries`` as a ``"policy"`` per-query prompt file.

    Args:
        policy: A :class:`~rl_select.mdp.per_query_policy.PerQueryPolicy`.
        task: The task.
        pool: Labelled candidates (at least the policy's ``M``).
        queries: The queries to choose for (labels unused).
        scorer: The frozen LM (zero-shot features; the policy's training scorer unless ``force``).
        val: Validation rows; with ``measure``, the policy chooses for them too and their accuracy is stored.
        seed, args, source, scorer_spec: Recorded in the file.
        embedder: The neighbourhoods' embedder (the bundled MiniLM, as in training, by default).
        mode: How the policy chooses (:data:`~rl_select.mdp.per_query_policy.MODES`; ``None``: the policy's
            ``default_mode``; recorded in the file).

    Raises:
        PolicyError, SelectionError: As :meth:`PerQueryPolicy.select_for` (one line).
    """
    from rl_select.embeddings import MiniLMEmbedder
    from rl_select.lm.base import grouped_logprobs
    from rl_select.metrics import label_ids

    emb = embedder or MiniLMEmbedder()
    mode = mode or policy.default_mode
    before = scorer.stats.copy()
    lists = policy.select_for(pool, queries, labels=task.labels, embedder=emb, scorer=scorer, force=force, mode=mode)
    select_stats = scorer.stats - before
    assigned = dict.fromkeys(query_key(q) for q in queries)
    for q, demos in zip(queries, lists):
        assigned[query_key(q)] = tuple(d.uid for d in demos)
    used = {u for chosen in assigned.values() for u in chosen}
    per_query = PerQuery(pool=tuple(d for d in pool if d.uid in used), k=policy.k, embedder="minilm",
                         method="policy", assigned=tuple(assigned.items()))
    acc, lm_calls = None, {"select": select_stats.as_dict()}
    if measure and val:
        before = scorer.stats.copy()
        val_lists = policy.select_for(pool, val, labels=task.labels, embedder=emb, scorer=scorer, force=force,
                                      mode=mode)
        pred = grouped_logprobs(scorer, val_lists, list(val)).argmax(axis=1)
        acc = float(np.mean(pred == label_ids(task.labels, val)))
        lm_calls["validate"] = (scorer.stats - before).as_dict()
    spec = getattr(scorer, "scorer_spec", None) or scorer_spec
    return PromptFile(task=task, per_query=per_query, scorer=spec, source=dict(source or {}),
                      selector={"name": "policy_pq", "args": dict(args or {}), "k": policy.k, "seed": seed,
                                "m": policy.m, "feature_set": policy.feature_set, "mode": mode},
                      val_accuracy=acc, n_val=len(val) if acc is not None else 0, lm_calls=lm_calls,
                      created=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))


def select_prompt(
    selector: Any,
    *,
    task: TaskSpec,
    pool: Sequence[Example],
    val: Sequence[Example] = (),
    k: int,
    scorer: Any = None,
    seed: int = 0,
    measure: bool = True,
    name: str | None = None,
    args: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
    scorer_spec: ScorerSpec | None = None,
    force: bool = False,
) -> PromptFile:
    """Choose demonstrations with any selector and return them as a :class:`PromptFile` (not yet saved).

    The selection is the evaluation harness's: the selector sees ``SelectionContext(pool, val, k, scorer,
    numpy.random.default_rng(seed))``, so with the harness's seeded pool and val it picks what the
    harness's row for that seed picks. A per-query selector (kNN) is stored as its rule.

    Args:
        selector: A selector name (see :func:`make_baseline`), a :class:`~rl_select.selectors.Selector`, or a
            :class:`~rl_select.mdp.policy.SelectorPolicy`.
        task: The task (the file's template and verbalisers).
        pool: The candidate demonstrations.
        val: Labelled validation rows (search selectors' score; the policy's state features; measurement).
        k: Demonstrations to choose.
        scorer: The LM; ``None`` is allowed for selectors that need none (zero_shot, random, knn) with
            ``measure=False``.
        seed: The selector's random seed.
        measure: Also measure the choice's accuracy on ``val`` (LM calls; kNN per val row).
        name: The selector's name in the file (default: the registry name, or ``"policy"``).
        args: Its settings, recorded (and, for a name, passed to it).
        source: Where ``pool`` and ``val`` came from, recorded.
        scorer_spec: The scorer spec to record when ``scorer`` carries none (e.g. no LM was loaded).
        force: Use a policy with a scorer other than its training one.

    Raises:
        PromptFileError, SelectionError, PolicyError: One line naming the problem.
    """
    from rl_select.mdp.policy import SelectorPolicy
    from rl_select.selectors import KNNSelector, SelectionContext, Selector, check_k

    args = dict(args or {})
    pool, val = tuple(pool), tuple(val)
    record: dict[str, Any] = {}
    if isinstance(selector, str):
        name = name or selector
        selector = make_baseline(selector, args)
    if isinstance(selector, SelectorPolicy):
        name = name or "policy"
        record = {"agent": selector.agent, "feature_set": selector.feature_spec.kind,
                  "tensors_sha256": selector.describe().get("tensors_sha256")}
    elif not isinstance(selector, Selector):
        raise SelectionError(f"selector {selector!r:.80} is neither a selector name, a Selector nor a SelectorPolicy")
    else:  # its effective settings (defaults included), as far as they are plain values
        settings = {key: v for key, v in vars(selector).items() if not key.startswith("_") and key != "policy"}
        args = {**settings, **args}
    name = name or getattr(selector, "name", type(selector).__name__)
    tags = getattr(selector, "tags", None)  # its declaration: kNN (MiniLM / hashing embedder) needs no LM
    needs_lm = isinstance(selector, SelectorPolicy) or tags is None or tags.lm
    if scorer is None and (needs_lm or (measure and val)):
        why = " to measure val accuracy" if measure and val and not needs_lm else ""
        raise SelectionError(f"selector {name!r} needs the LM (a scorer){why}; expected scorer=...")
    if scorer is not None and getattr(scorer, "spec", task) != task:
        raise SelectionError(f"the scorer is for task {scorer.spec.name!r}, the prompt for task {task.name!r}; "
                             "expected a scorer built for the prompt's task")
    stats = getattr(scorer, "stats", None)
    before = stats.copy() if stats is not None else None
    ctx = SelectionContext(pool=pool, val=val, k=k, scorer=scorer, rng=np.random.default_rng(seed))
    per_query = None
    demos: list[Example] = []
    if isinstance(selector, SelectorPolicy):
        demos = selector.select(pool, scorer=scorer, val=val, k=k, force=force)
    elif selector.per_query:
        if not isinstance(selector, KNNSelector):
            raise PromptFileError(f"selector {name!r} chooses per query in a way a prompt file cannot store; "
                                  "expected knn or a selector with one prompt")
        check_k(ctx)
        per_query = PerQuery(pool=pool, k=k, embedder=embedder_name(selector.embedder),
                             exclude_same_text=selector.exclude_same_text)
        args["embedder"] = per_query.embedder
    else:
        demos = selector.select(ctx)
    mid = stats.copy() if stats is not None else None
    val_acc = None
    if measure and val:
        lists = [demos] * len(val) if per_query is None else _knn_demos(per_query, val)
        val_acc = float(np.mean(grouped_logprobs(scorer, lists, val).argmax(1) == label_ids(scorer.spec.labels, val)))
    after = stats.copy() if stats is not None else None
    lm_calls = {"select": (mid - before).as_dict(), "validate": (after - mid).as_dict()} if stats is not None \
        else {}
    if isinstance(selector, SelectorPolicy):
        lm_calls["policy_lm_queries"] = (selector.last_selection_info or {}).get("lm_queries")
    spec = getattr(scorer, "scorer_spec", None) or scorer_spec
    return PromptFile(
        task=task, demos=tuple(demos), per_query=per_query,
        selector={"name": name, "args": _plain(args), "k": k, "seed": seed, **record},
        scorer=spec, source=dict(source or {}), val_accuracy=val_acc,
        n_val=len(val) if val_acc is not None else 0, lm_calls=lm_calls,
        created=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def _plain(args: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else repr(v))
            for k, v in args.items()}
