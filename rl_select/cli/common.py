"""The CLI's shared parts: the typer app, errors and warnings as one line, every config option declared once
(:data:`OPTIONS`), :func:`config_command`, and the helpers several command groups use."""

from __future__ import annotations

import functools
import inspect
import logging
import shlex
import tomllib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from rl_select.errors import ConfigError, RLSelectError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Choose few-shot demonstrations for a frozen LLM.")
console = Console(stderr=True)
out = Console()


def _friendly(fn):
    """Turn RLSelectError into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RLSelectError as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("interrupted: results measured so far are in the run folder and the score cache")
            raise typer.Exit(130) from None

    return wrapper


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line on stderr (no source line), e.g. a server that needs one prompt per request."""
    console.print(f"[yellow]warning:[/yellow] {escape(str(message))}", highlight=False, soft_wrap=True)


def _quiet_libraries() -> None:
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    warnings.showwarning = _one_line_warning


# --- options, declared once ------------------------------------------------------------------------


def _comma_list(item: type) -> Callable[[str, str], list[Any]]:
    """Parse a comma-separated list option (``--seeds 0,1,2``); a bad item is a one-line ConfigError."""

    def parse(name: str, text: str) -> list[Any]:
        try:
            return [item(s.strip()) for s in str(text).split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--{name.replace('_', '-')} {text!r} is not a comma-separated list of "
                              f"{item.__name__}s, e.g. {'0,1,2' if item is int else 'a,b'}") from None

    return parse


def _opt(kind: Any, *decls: str, **kw: Any) -> Any:
    return Annotated[kind | None, typer.Option(*decls, **kw)]


LISTS: dict[str, Callable[[str, str], list[Any]]] = {}
"""Options given as comma-separated lists, and their parsers."""


def _list(item: type, help: str) -> Any:
    return Annotated[str | None, typer.Option(metavar="A,B,...", help=help)], _comma_list(item)


OPTIONS: dict[str, Any] = {
    # top level
    "task": _opt(str, help="Built-in task name, a JSON/TOML task spec file, or a folder under the data root "
                           "with a task.toml (e.g. sst5)."),
    "data": _opt(str, help="Folder with train/test files (default: ../shared/data/TASK, else the hub)."),
    "k": _opt(int, "-k", "--k", help="Number of demonstrations."),
    "seeds": _list(int, "Seeds, e.g. 0,1,2."),
    "cache": _opt(str, help="Score cache file ('none' disables; default ~/.cache/rl_select)."),
    "out": _opt(str, "--out", help="Parent folder of run folders."),
    "policy": _list(str, "Trained policies (.safetensors: fixed-prompt or per-query; 'pretrained', "
                         "'pretrained-critic': the shipped ones) to add as selectors 'policy:<agent>' / 'policy_pq'."),
    # [lm]
    "model": _opt(str, help="'bundled' (SmolLM2-135M-Instruct), a folder, a hub id, or with --backend openai the "
                            "served model name."),
    "backend": _opt(str, help="hf (in process) | openai (a /v1/completions server; key from RL_SELECT_API_KEY or "
                              "OPENAI_API_KEY)."),
    "base_url": _opt(str, help="The OpenAI-compatible server, e.g. http://127.0.0.1:8000."),
    "dtype": _opt(str, help="auto | bf16 | fp32 | fp16 (auto: bf16 only where the CPU has it)."),
    "mode": _opt(str, help="direct | channel."),
    "calibrate": _opt(bool, "--calibrate/--no-calibrate", help="Contextual calibration."),
    "length_norm": _opt(bool, "--length-norm/--no-length-norm", help="Divide label log-probs by their length."),
    # [splits]
    "n_pool": _opt(int, help="Candidate pool size per seed."),
    "n_val": _opt(int, help="Reward-validation size per seed."),
    "n_test": _opt(int, help="Test rows (0: the whole test file)."),
    "train_pool": _opt(int, help="Train rows MDP episodes draw their candidates from."),
    # [selectors]
    "selectors": _list(str, "Selector names, e.g. zero_shot,random."),
    # [mdp]
    "n_candidates": _opt(int, help="Candidates N per episode (default: --n-pool)."),
    "feature_set": _opt(str, "--feature-set",
                        help="active (label-free) | labelled | zeroshot (candidates from the one-off "
                             "row table; LM: val only) | table (no LM for features) | table_labelled "
                             "(table + the candidates' labels)."),
    "reward": _opt(str, help="marginal | terminal."),
    "allow_stop": _opt(bool, "--allow-stop/--no-stop", help="Offer a STOP action."),
    "min_len": _opt(int, help="Fewest demonstrations before STOP is allowed."),
    # [agent]
    "agent": _opt(str, help="Learner: a name in the agent registry (agents.AGENTS), e.g. offline; an unknown name "
                            "is refused with the list."),
    "episodes": _opt(int, help="Rollouts to collect (offline) / episodes (tabular)."),
    "train_steps": _opt(int, help="Gradient steps (offline) / env steps (dqn)."),
    "hidden": _list(int, "Q-network hidden widths, e.g. 64,64."),
    "train_tasks": _list(str, "Tasks to train on at once (transfer)."),
    "store": _opt(str, help="Rollout store (.jsonl); default under <out>/rollouts/."),
    "cql_alpha": _opt(float, help="Offline agent: weight of the CQL regulariser (0: plain offline DQN)."),
    "val_episodes": _opt(int, help="Offline agent: greedy episodes per checkpoint check (LM reward); "
                                   "0: held-out TD objective, no LM."),
    "q_target": _opt(str, help="Offline agent: td (bootstrapped max) | mc (logged return-to-go)."),
    "rollout_seed": _opt(int, help="Seed of the rollouts and their pool / reward split (default: the run's "
                                   "first seed)."),
    "return_norm": _opt(str, help="Offline agent: none | task (each training task's returns as z-scores "
                                  "within the task)."),
    "probe_critic": _opt(bool, "--probe-critic/--no-probe-critic",
                         help="Offline agent: also fit the probe critic (policy_probe) on the rollouts."),
    "critic_episodes": _opt(int, help="Probe critic: the first N stored episodes per task it fits on "
                                      "(default: episodes)."),
    # [executor]
    "executor": _opt(str, help="local (in process) | ray (units on Ray actors; same results, store and cache)."),
    "ray_address": _opt(str, help="Ray cluster: auto | ray://host:10001 (default $RL_SELECT_RAY_ADDRESS, "
                                  "$RAY_ADDRESS, else a local Ray)."),
    "workers": _opt(int, help="Ray actors (each loads the LM)."),
}
"""Every config option of the CLI, by flat config key."""
for _key, _value in list(OPTIONS.items()):
    if isinstance(_value, tuple):
        OPTIONS[_key], LISTS[_key] = _value

RUN = ("task", "data", "k", "seeds", "n_pool", "n_val", "n_test", "cache", "out")
LM = ("model", "backend", "base_url", "dtype", "mode", "calibrate", "length_norm")
EXECUTOR = ("executor", "ray_address", "workers")
MDP = ("train_tasks", "train_pool", "n_candidates", "feature_set", "reward", "allow_stop", "min_len")
AGENT = ("agent", "episodes", "train_steps", "hidden", "store", "cql_alpha", "val_episodes", "q_target", "rollout_seed",
         "return_norm", "probe_critic", "critic_episodes")

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML run config; flags override it.")]
DataOpt = OPTIONS["data"]
ForceOpt = Annotated[bool, typer.Option("--force", help="Use a policy with settings other than its training ones.")]

PromptFileOpt = Annotated[Path | None, typer.Option(
    "--prompt-file", help="A prompt file written by `rl-select select`.")]


def _file_keys(path: Path | None) -> set[str]:
    """The flat keys a config file sets (its tables' keys under their flat names)."""
    from rl_select.experiments.config import FLAT_KEYS, SECTIONS

    if path is None or not Path(path).is_file():
        return set()
    try:
        doc = tomllib.loads(Path(path).read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return set()  # load_config reports it
    doc = doc.get("run", doc) if isinstance(doc.get("run"), dict) else doc
    flat = {v: k for k, v in FLAT_KEYS.items()}
    keys = set()
    for key, value in doc.items():
        if key in SECTIONS and isinstance(value, dict):
            keys |= {flat.get((key, name), name) for name in value}
        else:
            keys.add(key)
    return keys


COMMAND_KEYS: dict[str, tuple[str, ...]] = {}
"""The config keys each :func:`config_command` takes as options, by command (``"train"``, ``"bench env"``)."""


def _command_path(name: str, parent: typer.Typer) -> str:
    """``name`` as typed after ``rl-select``: ``"train"``, or ``"bench collect"`` for a sub-app's command."""
    if parent is app:
        return name
    group = next((g.name for g in app.registered_groups if g.typer_instance is parent), None)
    return f"{group} {name}" if group else name


def _flag(key: str, value: Any) -> list[str]:
    """``key``'s option as given on a command line (``--n-pool 100``, ``--no-calibrate``, ``-k`` as ``--k``)."""
    info = next((m for m in getattr(OPTIONS[key], "__metadata__", ()) if hasattr(m, "param_decls")), None)
    first = getattr(info, "default", None)  # typer reads a leading "--name" as a declaration, not a default
    decls = [d for d in [first, *(getattr(info, "param_decls", None) or ())]
             if isinstance(d, str) and d.startswith("--")]
    decl = decls[0] if decls else "--" + key.replace("_", "-")
    if "/" in decl:
        on, off = decl.split("/", 1)
        return [on if value else off]
    return [decl, str(value)]


@dataclass(frozen=True)
class Invocation:
    """How a :func:`config_command` was called: its ``--config`` file and the options given (as typed)."""

    command: str
    config: Path | None
    given: dict[str, Any]

    def line(self, command: str | None = None, *, skip: tuple[str, ...] = ()) -> str:
        """The command line that repeats this call (``rl-select NAME --config FILE --opt value ...``), or the same
        config and options for another config command (those of its options it takes); ``skip``: options left
        out."""
        name = command or self.command
        keys = COMMAND_KEYS.get(name, ())
        parts = ["rl-select", *name.split()] + (["--config", str(self.config)] if self.config is not None else [])
        for key, value in self.given.items():
            if value is not None and key in keys and key not in skip:
                parts += _flag(key, value)
        return shlex.join(parts)


def config_command(name: str, *groups: tuple[str, ...], parent: typer.Typer = app) -> Callable:
    """Register ``fn(cfg, explicit, **own)`` as command ``name`` with ``--config`` and the option ``groups``.

    ``fn``'s own parameters (after ``cfg`` and ``explicit``) stay its own options / arguments; the
    group options are parsed into a :class:`~rl_select.experiments.config.RunConfig` (defaults < file <
    flags), and ``explicit`` is the set of flat keys the user set in the file or on the command line.
    A parameter named ``invocation`` is no option: it receives the call's :class:`Invocation`.
    """
    keys = tuple(dict.fromkeys(k for g in groups for k in g))
    path = _command_path(name, parent)
    COMMAND_KEYS[path] = keys

    def decorate(fn: Callable) -> Callable:
        own = list(inspect.signature(fn, eval_str=True).parameters.values())[2:]
        wants = any(p.name == "invocation" for p in own)
        own = [p for p in own if p.name != "invocation"]
        params = [inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ConfigOpt)]
        params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=OPTIONS[k])
                   for k in keys]
        params += [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            from rl_select.experiments.config import load_config

            config = kwargs.pop("config")
            raw = {k: kwargs.pop(k) for k in keys}
            given = {k: LISTS[k](k, v) if k in LISTS and v is not None else v for k, v in raw.items()}
            cfg = load_config(config, given)
            explicit = _file_keys(config) | {k for k, v in given.items() if v is not None}
            if wants:
                kwargs["invocation"] = Invocation(path, config, raw)
            return fn(cfg, frozenset(explicit), **kwargs)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        parent.command(name)(_friendly(command))
        return fn

    return decorate


# --- helpers of several command groups ---------------------------------------------------------------


def _worker_lm(cfg) -> str:
    """How each Ray worker gets its LM, for the start-up line."""
    if cfg.lm.backend == "openai":
        return f"each a client of {cfg.lm.base_url or '$RL_SELECT_BASE_URL'} ({cfg.lm.model})"
    return f"each loading {cfg.lm.model!r}"


def _task_envs(cfg, *, fixed_pool: bool = False):
    from rl_select.experiments.harness import scorer_factory
    from rl_select.experiments.task_envs import build_task_envs, check_task_envs

    _quiet_libraries()
    check_task_envs(cfg)  # bad input fails here, before the model loads
    with console.status(escape(f"loading model {cfg.lm.model!r} ...")):
        make = scorer_factory(cfg)
    return build_task_envs(cfg, make, fixed_pool=fixed_pool)
