"""Using a trained policy as it was trained: the scorer and the task it records, never the defaults.

``rl-select select`` / ``prompt`` / ``evaluate --policy`` / ``baselines --policy`` call
:func:`policy_settings`: the run's ``[lm]`` section becomes the policy's recorded
:class:`~rl_select.lm.spec.ScorerSpec`, and its task the policy's full :class:`~rl_select.tasks.TaskSpec`.
A setting the user gave explicitly that differs from the recorded one is refused with one line naming
both, unless forced.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence

from rl_select.errors import PolicyError, RLSelectError
from rl_select.experiments.config import RunConfig
from rl_select.lm.cache import default_cache_path
from rl_select.lm.spec import IDENTITY_FIELDS, ScorerSpec
from rl_select.mdp.policy import SelectorPolicy
from rl_select.tasks import TaskSpec, resolve_task

_BUILD_FIELDS = ("backend", "model", "dtype", "mode", "length_norm", "calibrate")
"""The recorded fields that decide how the scorer is built again (the fingerprint is checked after)."""


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
