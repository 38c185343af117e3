"""``rl-select``: the command line, a package by command group.

Commands: ``tasks``, ``baselines`` (every selector on a task over seeds, as a table in a run folder),
``evaluate`` (one selector, a policy, an explicit ordered demo list, or a saved prompt file), ``collect``
(rollouts), ``train`` (an agent, exporting a policy), ``select`` (a policy or any baseline -> a prompt file to
ship), ``prompt`` (render a prompt file, or a policy's choice, for queries), ``ablate`` (a resumable grid of
runs, trained policies included), ``report``, ``reproduce`` (rebuild a shipped policy), ``bench ...``.

Modules: :mod:`~rl_select.cli.common` (the app, one-line errors, the options, ``config_command``),
:mod:`~rl_select.cli.run` (tasks, baselines, evaluate, report, results), :mod:`~rl_select.cli.train`
(collect, train, per-query), :mod:`~rl_select.cli.ablate`, :mod:`~rl_select.cli.prompts` (select, prompt),
:mod:`~rl_select.cli.reproduce` and :mod:`~rl_select.cli.bench` (the bench subcommands).

Every option that sets a config value is declared once, in :data:`OPTIONS` (named after its flat config
key, see :data:`rl_select.experiments.config.FLAT_KEYS`); :func:`config_command` gives a command the
option groups it takes plus ``--config``, and hands it the resolved :class:`RunConfig` and the set of
keys the user gave explicitly. Errors a user can fix print one line (``error: ...``, markup escaped)
and exit with status 2.
"""

from __future__ import annotations

from rl_select.cli import ablate, bench, prompts, reproduce, run, train  # noqa: F401  (each registers its commands)
from rl_select.cli.bench import bench_app
from rl_select.cli.common import (
    AGENT,
    EXECUTOR,
    LISTS,
    LM,
    MDP,
    OPTIONS,
    RUN,
    ConfigOpt,
    DataOpt,
    ForceOpt,
    PromptFileOpt,
    app,
    config_command,
    console,
    out,
)
from rl_select.cli.common import _friendly as _friendly
from rl_select.cli.common import _one_line_warning as _one_line_warning
from rl_select.cli.common import _quiet_libraries as _quiet_libraries
from rl_select.cli.prompts import (
    ArgOpt,
    OutFileOpt,
    OverwriteOpt,
    PolicyPathOpt,
    PoolOpt,
    SeedOpt,
    SelectorOpt,
    ValidateOpt,
)

COMMANDS = ("tasks", "baselines", "evaluate", "collect", "train", "ablate", "results", "per-query", "select", "prompt",
            "report", "reproduce")
"""The order ``rl-select --help`` lists the commands in (``bench`` follows them)."""

app.registered_commands.sort(key=lambda c: COMMANDS.index(c.name) if c.name in COMMANDS else len(COMMANDS))

__all__ = [
    "AGENT", "COMMANDS", "EXECUTOR", "LISTS", "LM", "MDP", "OPTIONS", "RUN", "ArgOpt", "ConfigOpt", "DataOpt",
    "ForceOpt", "OutFileOpt", "OverwriteOpt", "PolicyPathOpt", "PoolOpt", "PromptFileOpt", "SeedOpt", "SelectorOpt",
    "ValidateOpt", "app", "bench_app", "config_command", "console", "main", "out",
]


def main() -> None:  # pragma: no cover
    app()

