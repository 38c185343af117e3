"""An ablation's estimated LM query rows and labelled rows, read from each selector's and agent's declaration;
the ``--budget`` check."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rl_select.errors import ConfigError
from rl_select.experiments.ablate.grid import Plan, _tags, selector_kind, selector_m, trains
from rl_select.experiments.config import RunConfig

if TYPE_CHECKING:
    from rl_select.selectors.tags import CostSetting

# --- per selectors entry and per training run -----------------------------------------------------------


def _args(cfg: RunConfig, name: str) -> dict[str, Any]:
    """The selector arguments of entry ``name`` (``[selectors.args."NAME:LABEL"]`` over ``[selectors.args.NAME]``)."""
    return {**cfg.selectors.args.get(selector_kind(name), {}), **cfg.selectors.args.get(name, {})}


def _cost_setting(cfg: RunConfig, name: str) -> CostSetting:
    """What entry ``name``'s cost formulas read: split sizes, k, its arguments (``NAME:M``'s count included)."""
    from rl_select.selectors import CostSetting

    args, count = _args(cfg, name), _tags(name).count_arg
    if count is not None:
        args[count] = selector_m(name)
    return CostSetting(n_pool=cfg.splits.n_pool, n_val=cfg.splits.n_val, n_test=cfg.splits.n_test, k=cfg.k,
                       args=args, feature_set=cfg.mdp.feature_set)


def select_rows(cfg: RunConfig, name: str) -> int:
    """Estimated LM query rows entry ``name`` spends selecting (its declared ``lm_rows``)."""
    return int(_tags(name).lm_rows(_cost_setting(cfg, name)))


def select_labels(cfg: RunConfig, name: str) -> int:
    """Labelled examples entry ``name`` reads selecting (its declared ``labels_read``), training not included."""
    return int(_tags(name).labels_read(_cost_setting(cfg, name)))


def _per_query(cfg: RunConfig, name: str) -> bool:
    """Whether the entry may prompt every test query with its own demos (no val accuracy of one prompt)."""
    return _tags(name).is_per_query(_args(cfg, name))


def training_rows(cfg: RunConfig, counted: set[str] | None = None) -> int:
    """Estimated LM query rows to train ``cfg.agent`` for one cell and seed (N candidates, V val, k).

    An episode costs :meth:`~rl_select.mdp.features.FeatureSpec.lm_rows` (``(k + 1) x (N + V)`` for
    ``active`` / ``labelled``; ``V`` for a table set with the terminal reward), plus, for the table sets,
    the one-off table of the ``train_pool`` rows (and val's, read by ``zeroshot`` and the marginal reward).
    The agent declares (:class:`~agents.registry.AgentTags`) the episodes it plays in the training env
    (``env_episodes``: ``dqn`` ``train_steps / k``, ``tabular`` ``episodes``, ``offline`` its greedy validation,
    ``val_episodes`` at each of about 8 checkpoints) and what it learns from:

    * ``env`` (``dqn``, ``tabular``): those episodes and the one-off table;
    * ``rollouts`` (``offline``): those episodes plus, per training task, the rollouts its store still lacks
      (``episodes`` minus those held; a store in ``counted`` was already counted by another cell or seed, so
      it costs nothing again) with the one-off table; with ``probe_critic``, the replay of the episodes
      already stored (``V`` rows each, answered by the cache that collected them).

    Upper bounds before the cache: a STOP shortens episodes.
    """
    from agents.registry import agent_class
    from rl_select.mdp.feature_spec import FeatureSpec

    spec = FeatureSpec(cfg.mdp.feature_set)
    per_episode = spec.lm_rows(cfg.n_candidates, cfg.splits.n_val, reward=cfg.mdp.reward, k=cfg.k)["per_episode"]
    val_in_table = spec.kind == "zeroshot" or cfg.mdp.reward == "marginal"  # the empty prompt's val rows
    one_off = (cfg.splits.train_pool + (cfg.splits.n_val if val_in_table else 0)) if spec.uses_table else 0
    tags = agent_class(cfg.agent.name).tags
    rows = tags.env_episodes(cfg.agent, cfg.k) * per_episode
    if tags.learns_from == "env":
        return rows + one_off
    from agents.rollout_store import RolloutStore
    from rl_select.experiments.collection import store_path

    for task in cfg.train_tasks:
        path = store_path(cfg, task)
        if counted is not None:
            if str(path) in counted:
                continue
            counted.add(str(path))
        held = len(RolloutStore(path)) if path.is_file() else 0
        missing = max(0, cfg.agent.episodes - held)
        rows += missing * per_episode + (one_off if missing else 0)
        if cfg.agent.probe_critic:  # the critic replays stored episodes' final prompts on val (cache hits
            fit = cfg.agent.critic_episodes or cfg.agent.episodes  # where this cache collected them)
            rows += min(held, cfg.agent.episodes, fit) * cfg.splits.n_val
    return rows


def training_labels(cfg: RunConfig, n_train: int | None = None) -> int:
    """Labelled rows training reads: the train rows episodes draw demos from, and the reward's val rows."""
    pool = cfg.splits.train_pool if n_train is None else min(cfg.splits.train_pool, n_train - cfg.splits.n_val)
    return max(pool, 0) + cfg.splits.n_val


# --- the plan's estimate ----------------------------------------------------------------------------


def _test_rows(cfg: RunConfig, sizes: dict[tuple, int]) -> int:
    if cfg.splits.n_test:
        return cfg.splits.n_test
    key = (cfg.task, cfg.data)
    if key not in sizes:
        from rl_select.experiments.harness import TaskData

        sizes[key] = len(TaskData.load(cfg).test)
    return sizes[key]


def estimate(plan: Plan, done: set[tuple[str, int, str]] | None = None) -> dict[str, Any]:
    """Estimated LM query rows of the plan's units (those not in ``done``) and training runs.

    Per row: ``select`` (the selector's declared ``lm_rows``, :func:`select_rows`) plus evaluation ``T + V``
    (test rows, and val for a fixed prompt); per cell and seed with a trained selector: :func:`training_rows`,
    each rollout store counted once.

    Returns:
        ``{"rows": [{cell_id, cell, seed, selector, select, eval, train}], "training": rows, "selection": rows,
        "evaluation": rows, "total": rows, "pending": n_units}``.
    """
    done = done or set()
    sizes: dict[tuple, int] = {}
    rows, trained, stores = [], set(), set()
    for cell, seed, name in plan.units:
        if (cell.id, seed, name) in done:
            continue
        cfg = cell.cfg
        train = 0
        if trains(name) and (cell.id, seed) not in trained:
            trained.add((cell.id, seed))
            train = training_rows(cfg.updated(seeds=[seed]), stores)
        per_query = _per_query(cfg, name)
        rows.append({"cell_id": cell.id, "cell": cell.label, "seed": seed, "selector": name,
                     "select": select_rows(cfg, name),
                     "eval": _test_rows(cfg, sizes) + (0 if per_query else cfg.splits.n_val), "train": train})
    totals = {k: sum(r[k] for r in rows) for k in ("train", "select", "eval")}
    return {"rows": rows, "training": totals["train"], "selection": totals["select"], "evaluation": totals["eval"],
            "total": sum(totals.values()), "pending": len(rows)}


def check_budget(est: Mapping[str, Any], budget: int | None, where: str) -> None:
    """Refuse a grid whose estimate is over ``budget`` query rows (pending units only).

    Raises:
        ConfigError: One line with the estimate and the budget.
    """
    if budget is not None and est["total"] > budget:
        raise ConfigError(f"{where}: the estimated {est['total']} LM query rows ({est['pending']} rows pending) "
                          f"exceed --budget {budget}; expected a smaller grid or budget (--dry-run itemises it)")
