"""Task specifications, the built-in tasks, and task resolution (a name, a spec file, or a data folder).

Modules by job: :mod:`~rl_select.tasks.spec` (:class:`TaskSpec`, :class:`HFSource`, :func:`load_task_spec`),
:mod:`~rl_select.tasks.builtin` (:data:`BUILTIN_TASKS`, :func:`register_task`, :func:`get_task`) and
:mod:`~rl_select.tasks.resolve` (:func:`resolve_task`, :func:`default_data_root`); every name is importable
from here.
"""

from __future__ import annotations

from rl_select.tasks.builtin import BUILTIN_TASKS, get_task, register_task
from rl_select.tasks.resolve import DATA_ENV_VAR, default_data_root, resolve_task
from rl_select.tasks.spec import HFSource, TaskSpec, load_task_spec

__all__ = [
    "BUILTIN_TASKS", "DATA_ENV_VAR", "HFSource", "TaskSpec", "default_data_root", "get_task", "load_task_spec",
    "register_task", "resolve_task",
]
