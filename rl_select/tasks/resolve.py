"""Resolve a task by name: built in, a spec file, or a folder under the data root that carries a ``task.toml``."""

from __future__ import annotations

import os
from pathlib import Path

from rl_select.tasks.builtin import BUILTIN_TASKS, get_task
from rl_select.tasks.spec import TaskSpec, load_task_spec

DATA_ENV_VAR = "RL_SELECT_DATA"
"""Environment variable naming the folder of offline task copies (see :func:`default_data_root`)."""


def default_data_root(shared_root: str | Path | None = None) -> Path | None:
    """The folder of offline task copies: ``shared_root``, else ``$RL_SELECT_DATA``, else ``../shared/data``.

    Returns:
        The first of those that is an existing folder, or ``None``.
    """
    candidates = [shared_root] if shared_root is not None else [os.environ.get(DATA_ENV_VAR), "../shared/data"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def resolve_task(task: str) -> TaskSpec:
    """A built-in task name, a path to a JSON/TOML task-spec file, or the name of a folder under the data root
    (:func:`default_data_root`) that carries a ``task.toml`` (e.g. ``sst5`` in ``../shared/data``)."""
    if task.endswith((".json", ".toml")) or Path(task).is_file():
        return load_task_spec(task)
    if task not in BUILTIN_TASKS:
        root = default_data_root()
        if root is not None and (root / task / "task.toml").is_file():
            return load_task_spec(root / task / "task.toml")
    return get_task(task)
