"""Ablation grids: ``rl-select ablate CONFIG.toml`` (see ``docs/ablate.md``).

An ablation file holds a ``[base]`` run config (the nested :class:`~rl_select.experiments.config.RunConfig`
tables), a ``[grid]`` table of flat keys -> lists of values (their product is the *cells*), the
``selectors`` every cell runs, and optionally ``seeds`` (default: ``base.seeds``)::

    selectors = ["random", "random_search", "greedy", "policy", "policy_search:4"]
    seeds = [0, 1]

    [base]
    task = "sst2"
    [base.splits]
    n_pool = 8

    [grid]
    k = [2, 4]
    feature_set = ["active", "labelled"]

A trained selector (one whose ``tags.trained`` is set: ``policy``, ``policy_search:M``, ``policy_rank``,
``policy_probe``) makes the cell collect rollouts (an agent that learns from them) and train ``cfg.agent`` for
that cell's MDP / agent settings and seed, then evaluate the policy; the ``M`` of ``policy_search:M`` sets its
declared ``count_arg`` (the number of proposals). Every row is keyed by
``(cell_id, seed, selector)`` (``cell_id``: a hash of the cell's grid values), so a killed grid run again on
its run folder skips the rows already in ``results.csv``; rollout stores
(:func:`~rl_select.experiments.collection.store_path`), trained policies (``policies/``) and the score cache are
reused.

Costs: :func:`estimate` gives the LM *query rows* (the scorer's ``queries`` counter, cache hits included)
each row should spend, from each selector's declaration (``tags.lm_rows``,
:class:`~rl_select.selectors.tags.SelectorTags`) and :func:`training_rows` (the agent's declaration,
:class:`~agents.registry.AgentTags`).

Modules by job: :mod:`~rl_select.experiments.ablate.grid` (the file parsed into a :class:`Plan`),
:mod:`~rl_select.experiments.ablate.cost` (the estimate and the budget), :mod:`~rl_select.experiments.ablate.runner`
(running and resuming), :mod:`~rl_select.experiments.ablate.rows` (``results.csv``) and
:mod:`~rl_select.experiments.ablate.report` (summaries and plots); their names are importable from here
(with ``_per_query`` and ``_append``, which the tests call).
"""

from __future__ import annotations

from rl_select.experiments.ablate.cost import _per_query as _per_query
from rl_select.experiments.ablate.cost import (
    check_budget,
    estimate,
    select_labels,
    select_rows,
    training_labels,
    training_rows,
)
from rl_select.experiments.ablate.grid import (
    FORMAT_KEYS,
    GRID_KEYS,
    TRAIN_TASK_WORDS,
    Cell,
    Plan,
    cell_id,
    load_plan,
    plan_from_dict,
    selector_kind,
    selector_m,
    trains,
)
from rl_select.experiments.ablate.report import plot_all, summarise, summary_markdown
from rl_select.experiments.ablate.rows import COLUMNS, done_keys, read_rows, row_key
from rl_select.experiments.ablate.rows import _append as _append
from rl_select.experiments.ablate.runner import Runner, Trained

__all__ = [
    "COLUMNS", "FORMAT_KEYS", "GRID_KEYS", "TRAIN_TASK_WORDS", "Cell", "Plan", "Runner", "Trained", "cell_id",
    "check_budget", "done_keys", "estimate", "load_plan", "plan_from_dict", "plot_all", "read_rows", "row_key",
    "select_labels", "select_rows", "selector_kind", "selector_m", "summarise", "summary_markdown", "training_labels",
    "training_rows", "trains",
]
