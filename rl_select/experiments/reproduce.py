"""Using a trained policy as it was trained: the scorer and the task it records, never the defaults.

``rl-select select`` / ``prompt`` / ``evaluate --policy`` / ``baselines --policy`` call
:func:`policy_settings`: the run's ``[lm]`` section becomes the policy's recorded
:class:`~rl_select.lm.spec.ScorerSpec`, and its task the policy's full :class:`~rl_select.tasks.TaskSpec`.
A setting the user gave explicitly that differs from the recorded one is refused with one line naming
both, unless forced.

``evaluate`` / ``baselines`` take fixed-prompt and per-query policy files (and the shipped names, see
:mod:`rl_select.mdp.shipped`) in one list: :func:`policy_rows` makes each a selector row (``policy:<agent>`` or
``policy_pq``) and the run adopts their scorer. A per-query policy is task-agnostic: it brings its scorer
settings, ``k`` and ``M`` (checked against the pool), never a task.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from pathlib import Path

from rl_select.errors import ConfigError, PolicyError, RLSelectError
from rl_select.experiments.config import RunConfig
from rl_select.lm.cache import default_cache_path
from rl_select.lm.spec import IDENTITY_FIELDS, ScorerSpec
from rl_select.mdp.artifacts import peek_kind
from rl_select.mdp.per_query_policy import KIND as PER_QUERY_KIND
from rl_select.mdp.per_query_policy import PRETRAINED, PerQueryPolicy, resolve_policy_path
from rl_select.mdp.policy import SelectorPolicy
from rl_select.selectors.policy_per_query import PerQueryPolicySelector
from rl_select.selectors.policy_selector import FixedPromptPolicySelector
from rl_select.tasks import TaskSpec, resolve_task

_BUILD_FIELDS = ("backend", "model", "dtype", "mode", "length_norm", "calibrate")
"""The recorded fields that decide how the scorer is built again (the fingerprint is checked after)."""

_PER_QUERY_FIELDS = ("backend", "model", "mode", "length_norm", "calibrate")
"""The fields a per-query policy's scorer is rebuilt from (another dtype of the same model is accepted with a
warning: it reads the LM only through zero-shot features, see
:meth:`~rl_select.mdp.per_query_policy.PerQueryPolicy.check_scorer`)."""


def policy_settings(
    policies: Sequence[SelectorPolicy], cfg: RunConfig, *, explicit: Collection[str] = (), force: bool = False,
) -> tuple[RunConfig, TaskSpec | None]:
    """The config and task spec that rebuild what ``policies`` were trained with.

    Args:
        policies: Loaded policies (all must agree, unless forced).
        cfg: The run config as the user gave it.
        explicit: The keys the user set (flat names such as ``"calibrate"``, ``"model"``, ``"task"``);
            every other scorer field, the data folder and the split sizes are taken from the policy's
            training run.
        force: Keep the user's differing settings (the policy's selection then warns instead of refusing).

    Returns:
        ``(config, task spec)``; the task spec is the policy's own unless ``task`` is explicit.

    Raises:
        PolicyError: An explicit setting, or another policy, that differs from the recorded one.
    """
    if not policies:
        return cfg, None
    first = policies[0]
    for other in policies[1:]:
        diff = _spec_diff(first.scorer_spec, other.scorer_spec)
        if diff and not force:
            raise PolicyError(f"the policies were trained with different scorers ({'; '.join(diff)}); expected "
                              "policies of one scorer (or --force)")
    lm = cfg.lm
    if first.scorer_spec is not None:
        recorded = first.scorer_spec
        asked = {f: getattr(cfg.lm, f) for f in _BUILD_FIELDS if f in explicit}
        clash = [f"{f}: trained {getattr(recorded, f)!r} vs asked {v!r}" for f, v in asked.items()
                 if v != getattr(recorded, f) and not (f == "dtype" and v == "auto")]
        if clash and not force:
            raise PolicyError(f"the policy was trained with another scorer setting ({'; '.join(clash)}); expected "
                              "the training settings (drop the option, or pass --force)")
        keep = {f: getattr(recorded, f) for f in _BUILD_FIELDS if f not in asked or not force}
        lm = cfg.lm.replace(**keep, model_fingerprint=None)
    task = first.task
    if "task" in explicit:
        asked_task = resolve_task(cfg.task)
        if asked_task != first.task and not force:
            raise PolicyError(f"the policy was trained on task {first.task.name!r} but task {cfg.task!r} was asked "
                              f"(they differ in {_task_diff(first.task, asked_task)}); expected the training task "
                              "(drop --task, or pass --force)")
        task = asked_task
    trained = first.training.get("config", {})
    data = cfg.data
    if data is None and "data" not in explicit:
        data = trained.get("data")
    splits = {k: v for k, v in trained.get("splits", {}).items() if k not in explicit}
    return cfg.updated(lm=lm.to_dict(), task=task_reference(task), data=data, splits=splits), task


def load_run_policy(path: str) -> SelectorPolicy | PerQueryPolicy:
    """The policy at ``path`` (a file or a shipped name), by the kind its file declares: a per-query policy, else
    a fixed-prompt one (whose loader says what is wrong with any other file).

    Raises:
        PolicyError: A missing, unreadable, edited or foreign file (one line).
    """
    if peek_kind(resolve_policy_path(path)) == PER_QUERY_KIND:
        return PerQueryPolicy.load(path)
    return SelectorPolicy.load(path)


def per_query_settings(policies: Sequence[PerQueryPolicy], cfg: RunConfig, *, explicit: Collection[str] = (),
                       force: bool = False, paths: Sequence[str] = (), pinned: bool = False) -> RunConfig:
    """``cfg`` with the per-query policies' scorer settings and ``k``, their ``M`` checked against the pool.

    The scorer fields the user did not set become the training ones (:data:`_PER_QUERY_FIELDS`); a field the user
    set to another value, or another policy's scorer (``pinned``: ``cfg.lm`` already holds a fixed-prompt
    policy's), is refused unless ``force``. ``k`` becomes the policies' (an explicit other ``k`` is refused: the
    Q-network chooses exactly its ``k``).

    Raises:
        PolicyError: Another scorer setting (named, trained vs asked); policies of different scorers or ``k``.
        ConfigError: An explicit ``k`` other than the policies', or a pool smaller than ``M``.
    """
    if not policies:
        return cfg
    names = list(paths) or [f"#{i + 1}" for i in range(len(policies))]
    ks = sorted({p.k for p in policies})
    if len(ks) > 1:
        raise PolicyError(f"the per-query policies choose different k ({ks}); expected policies of one k")
    if "k" in explicit and cfg.k != ks[0]:
        raise ConfigError(f"k={cfg.k} but per-query policy {names[0]!r} was trained for k={ks[0]}; expected no --k "
                          f"or --k {ks[0]}")
    lm = cfg.lm
    for path, pol in zip(names, policies):
        trained = pol.scorer_spec
        if trained is None:
            continue
        clash = [f"{f}: trained {getattr(trained, f)!r} vs asked {getattr(lm, f)!r}" for f in _PER_QUERY_FIELDS
                 if f in explicit and getattr(lm, f) != getattr(trained, f)]
        if clash and not force:
            raise PolicyError(f"per-query policy {path!r} was trained with another scorer setting "
                              f"({'; '.join(clash)}); expected the training settings (drop the option, or --force)")
        rest = [f for f in _PER_QUERY_FIELDS if f not in explicit]
        if pinned:
            diff = [f"{f}: {getattr(lm, f)!r} vs {getattr(trained, f)!r}" for f in rest
                    if getattr(lm, f) != getattr(trained, f)]
            if diff and not force:
                raise PolicyError(f"the policies were trained with different scorers ({'; '.join(diff)}); expected "
                                  "policies of one scorer (or --force)")
        else:
            lm = lm.replace(**{f: getattr(trained, f) for f in rest}, model_fingerprint=None)
            pinned = True
    biggest = max(range(len(policies)), key=lambda i: policies[i].m)
    m = policies[biggest].m
    if m > cfg.splits.n_pool:
        raise ConfigError(f"per-query policy {names[biggest]!r} takes M={m} neighbours per query but the pool has "
                          f"{cfg.splits.n_pool}; expected --n-pool >= {m}")
    return cfg.updated(lm=lm.to_dict(), k=ks[0])


def policy_rows(paths: Sequence[str], cfg: RunConfig, *, explicit: Collection[str] = (), force: bool = False,
                ) -> RunConfig:
    """``cfg`` with one selector row per policy and the settings the policies were trained with.

    A fixed-prompt policy becomes ``policy:<agent>`` (its task, scorer, data folder and split sizes:
    :func:`policy_settings`); a per-query policy becomes ``policy_pq`` (its scorer and ``k``:
    :func:`per_query_settings`); each row's arguments are ``{"path": path, "force": force}``. A row already there
    with the same policy is reused (its other arguments kept); a row of another policy keeps its name, and the new
    one is named ``policy:<agent>'`` or ``policy_pq:<file stem>`` (then primes).

    Raises:
        PolicyError, ConfigError: See :func:`policy_settings` and :func:`per_query_settings`.
    """
    loaded = [(str(p), load_run_policy(str(p))) for p in paths]
    if not loaded:
        return cfg
    fixed = [pol for _, pol in loaded if isinstance(pol, SelectorPolicy)]
    per_query = [(p, pol) for p, pol in loaded if isinstance(pol, PerQueryPolicy)]
    if fixed:
        cfg, _ = policy_settings(fixed, cfg, explicit=explicit, force=force)
    pinned = bool(fixed) and fixed[0].scorer_spec is not None  # the run's scorer is the fixed-prompt policy's
    cfg = per_query_settings([pol for _, pol in per_query], cfg, explicit=explicit, force=force,
                             paths=[p for p, _ in per_query], pinned=pinned)
    names, args = list(cfg.selectors.names), dict(cfg.selectors.args)
    for path, pol in loaded:
        if isinstance(pol, PerQueryPolicy):
            base = PerQueryPolicySelector.name
            default, other = PRETRAINED, f"{base}:{Path(path).stem}"
        else:
            base = f"{FixedPromptPolicySelector.name}:{pol.agent}"
            default, other = None, base + "'"
        name = base
        while name in names and args.get(name, {}).get("path", default) != path:
            name = other if name == base else name + "'"
        kept = args.get(name, {}) if name in names else {}
        if name not in names:
            names.append(name)
        args[name] = {**kept, "path": path, "force": force}
    return cfg.updated(selectors={"names": names, "args": args})


def task_reference(task: TaskSpec) -> str:
    """A ``task`` config value that resolves to exactly ``task``: its built-in name when the built-in spec is
    the same, else a content-addressed JSON spec file (beside the score cache), so Ray workers and a rerun
    from the run folder's ``config.toml`` find the same spec."""
    try:
        if resolve_task(task.name) == task:
            return task.name
    except RLSelectError:
        pass
    digest = hashlib.sha256(json.dumps(task.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    path = default_cache_path().parent / "tasks" / f"{task.name}-{digest}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(task.to_dict(), indent=2, sort_keys=True))
    return str(path)


def _task_diff(a: TaskSpec, b: TaskSpec) -> str:
    """The fields two task specs differ in, ``"name, labels, template"`` (cut to the first five)."""
    da, db = a.to_dict(), b.to_dict()
    fields = [key for key in da if da[key] != db.get(key)]
    return ", ".join(fields[:5]) + (", ..." if len(fields) > 5 else "")


def _spec_diff(a: ScorerSpec | None, b: ScorerSpec | None) -> list[str]:
    if a is None or b is None:
        return [] if a is b else ["one policy has no scorer spec"]
    return a.differences(b, fields=IDENTITY_FIELDS)
