"""Rebuilding a shipped policy from the commands its own training record keeps (``rl-select reproduce NAME``).

Every policy shipped in the package (:data:`~rl_select.mdp.shipped.SHIPPED`) records in ``training.rebuild`` the
``rl-select`` commands, joined by ``&&``, that rebuild it from committed configs: the per-query one
``rl-select per-query collect --config C && rl-select per-query general --config C --feature-sets F --rewards R``
(written by the ``general`` stage), the fixed-prompt one ``rl-select collect ... && rl-select train ...``
(written by ``train``). :func:`plan_rebuild` pins where those commands write (``--run-dir`` / ``--out``: a work
folder) and so knows where the policy lands; :func:`run_rebuild` runs them in order and copies the policy into
the package (or another file). :func:`record_rebuild` re-saves a shipped policy with a corrected record through
its own class (the hashes recomputed, the tensors untouched).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rl_select.errors import ConfigError, PolicyError, RLSelectError
from rl_select.experiments.per_query_runs import PerQueryRunConfig, general_policy_path
from rl_select.experiments.reproduce import load_run_policy
from rl_select.mdp.artifacts import peek_kind, read_artifact
from rl_select.mdp.per_query_policy import PerQueryPolicy
from rl_select.mdp.policy import SelectorPolicy
from rl_select.mdp.shipped import SHIPPED, packaged_path, resolve_policy_path

PROGRAM = "rl-select"
"""The program every recorded command starts with."""

Runner = Callable[[Sequence[str]], int]
"""Runs one command (``["rl-select", ...]``), returns its exit status."""


class RebuildError(RLSelectError):
    """A rebuild command failed, or did not leave the policy where it should."""


@dataclass(frozen=True)
class RebuildPlan:
    """The commands that rebuild a shipped policy, pinned to a work folder, and where the policy lands.

    Attributes:
        name: The shipped name (:data:`~rl_select.mdp.shipped.SHIPPED`).
        recorded: The commands as the artifact records them.
        commands: The same with their output folder pinned to ``work_dir`` (what runs).
        work_dir: Where the commands write.
        output: The policy file the last command writes; ``None`` for ``train``, whose run folder is named when
            it starts (the new ``<work_dir>/*/policy.safetensors``).
    """

    name: str
    recorded: list[list[str]]
    commands: list[list[str]]
    work_dir: Path
    output: Path | None

    def lines(self) -> list[str]:
        """The commands as shell lines."""
        return [shlex.join(c) for c in self.commands]


def shipped_policy(name: str) -> SelectorPolicy | PerQueryPolicy:
    """The shipped policy ``name``, checked to be of its declared kind.

    Raises:
        ConfigError: Not a shipped name.
        PolicyError: Its file missing from this install, or not the declared kind (one line).
    """
    if name not in SHIPPED:
        raise ConfigError(f"no shipped policy {name!r}; expected one of {list(SHIPPED)}")
    path = resolve_policy_path(name)
    if peek_kind(path) != SHIPPED[name].kind:
        raise PolicyError(f"policy file {str(path)!r} holds a {peek_kind(path)!r} document; expected "
                          f"{SHIPPED[name].kind!r} ({SHIPPED[name].what})")
    return load_run_policy(name)


def recorded_commands(name: str) -> list[list[str]]:
    """The rebuild commands shipped policy ``name`` records (``training.rebuild``), each as its argv.

    Raises:
        PolicyError: No record, or one that is not ``rl-select`` commands joined by ``&&`` (one line).
    """
    policy = shipped_policy(name)
    text = policy.training.get("rebuild")
    if not isinstance(text, str) or not text.strip():
        raise PolicyError(f"{SHIPPED[name].what} ({name!r}) records no rebuild command (training.rebuild); expected "
                          f"one (add it: rl-select reproduce {name} --record 'COMMANDS')")
    return parse_commands(text, where=f"{name!r}'s rebuild record")


def parse_commands(text: str, *, where: str = "rebuild") -> list[list[str]]:
    """``rl-select`` commands joined by ``&&`` as argvs.

    Raises:
        PolicyError: Not shell words, an empty command, or one that is not ``rl-select ...`` (one line).
    """
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise PolicyError(f"{where} {text[:60]!r} is not a command line ({exc})") from None
    commands: list[list[str]] = [[]]
    for word in words:
        if word == "&&":
            commands.append([])
        else:
            commands[-1].append(word)
    bad = [c for c in commands if len(c) < 2 or c[0] != PROGRAM]
    if bad:
        raise PolicyError(f"{where} {text[:60]!r} holds {shlex.join(bad[0]) or 'an empty command'!r}; expected "
                          f"{PROGRAM} commands joined by &&")
    return commands


def _option(argv: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` in ``argv`` (``--flag V`` or ``--flag=V``; the last one wins), else ``None``."""
    value = None
    for i, word in enumerate(argv):
        if word == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif word.startswith(flag + "="):
            value = word.split("=", 1)[1]
    return value


def _pinned(argv: Sequence[str], flag: str, value: str) -> list[str]:
    """``argv`` with ``flag`` set to ``value`` (any given one removed)."""
    out: list[str] = []
    skip = False
    for i, word in enumerate(argv):
        if skip:
            skip = False
        elif word == flag and i + 1 < len(argv):
            skip = True
        elif not word.startswith(flag + "="):
            out.append(word)
    return [*out, flag, value]


def plan_rebuild(name: str, *, work_dir: str | Path | None = None) -> RebuildPlan:
    """The recorded commands of shipped policy ``name`` with their outputs pinned to ``work_dir``.

    ``per-query`` commands get ``--run-dir work_dir`` (the policy: ``policies/general-<F>-<R>.safetensors``
    there); ``collect`` and ``train`` get ``--out work_dir`` (their stores and run folders under it). Bad input is
    refused here, before anything runs.

    Args:
        name: A shipped name.
        work_dir: Where the commands write (default ``runs/reproduce/<name>``).

    Raises:
        PolicyError: See :func:`recorded_commands`; a record whose last command writes no policy.
        ConfigError: A config file the commands read that is not here (they read committed configs: run from the
            repository root).
    """
    recorded = recorded_commands(name)
    work = Path(work_dir) if work_dir is not None else Path("runs") / "reproduce" / name
    if work.exists() and not work.is_dir():
        raise ConfigError(f"work folder {str(work)!r} is a file; expected a folder (--work-dir)")
    commands, output = [], None
    for argv in recorded:
        config = _option(argv, "--config")
        if config is not None and not Path(config).is_file():
            raise ConfigError(f"config {config!r} (read by {shlex.join(argv[:3])}) not found here; expected the "
                              "committed configs: run from the repository root")
        if argv[1] == "per-query":
            argv = _pinned(argv, "--run-dir", str(work))
        elif argv[1] in ("collect", "train"):
            argv = _pinned(argv, "--out", str(work))
        commands.append(argv)
    last = commands[-1]
    if last[1:3] == ["per-query", "general"]:
        cfg = PerQueryRunConfig.from_file(_option(last, "--config"))
        variant = [_option(last, "--feature-sets") or cfg.feature_set, _option(last, "--rewards") or cfg.reward]
        if any("," in v for v in variant):
            raise PolicyError(f"{name!r}'s rebuild record trains several policies ({shlex.join(last)}); expected one "
                              "feature set and one reward")
        output = general_policy_path(work, *variant)
    elif last[1] != "train":
        raise PolicyError(f"{name!r}'s rebuild record ends with {shlex.join(last[:3])!r}; expected a command that "
                          "writes a policy (rl-select train, or rl-select per-query general)")
    return RebuildPlan(name=name, recorded=recorded, commands=commands, work_dir=work, output=output)


def run_command(argv: Sequence[str]) -> int:
    """Run ``rl-select ARGS`` with this interpreter (``python -m rl_select.cli ARGS``); its exit status."""
    return subprocess.run([sys.executable, "-m", "rl_select.cli", *argv[1:]], check=False).returncode


def _train_runs(work: Path) -> set[Path]:
    return set(work.glob("*/policy.safetensors")) if work.is_dir() else set()


def check_destination(dest: str | Path) -> Path:
    """``dest`` if a policy can be written there (checked before hours of training).

    Raises:
        ConfigError: A folder, or a parent folder this process cannot write in.
    """
    dest = Path(dest)
    if dest.is_dir():
        raise ConfigError(f"--out {str(dest)!r} is a folder; expected a .safetensors file path")
    parent = dest.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"cannot write {str(dest)!r} (folder {str(parent)!r} is read-only); expected a writable "
                          "place (--out FILE)")
    return dest


def run_rebuild(plan: RebuildPlan, dest: str | Path, *, runner: Runner | None = None,
                say: Callable[[str], None] = print) -> Path:
    """Run ``plan``'s commands in order, then copy the policy they wrote to ``dest`` (checked first: it must load
    as the shipped kind).

    Args:
        plan: From :func:`plan_rebuild`.
        dest: The file to write (replaced).
        runner: Runs one command (default :func:`run_command`: a subprocess of this interpreter).
        say: Where each command line is reported before it runs.

    Raises:
        RebuildError: A command that failed (its exit status), or no policy where the plan expects it.
    """
    dest = check_destination(dest)
    before = _train_runs(plan.work_dir)
    for line, argv in zip(plan.lines(), plan.commands):
        say(f"$ {line}")
        status = (runner or run_command)(argv)
        if status != 0:
            raise RebuildError(f"{shlex.join(argv[:3])} failed (exit status {status}); the work so far is in "
                               f"{str(plan.work_dir)!r} (rerun to resume)")
    if plan.output is not None:
        made = plan.output
    else:
        new = sorted(_train_runs(plan.work_dir) - before, key=lambda p: p.stat().st_mtime)
        if not new:
            raise RebuildError(f"the train command left no new run folder with policy.safetensors in "
                               f"{str(plan.work_dir)!r}")
        made = new[-1]
    if not made.is_file():
        raise RebuildError(f"the rebuild commands left no policy at {str(made)!r}")
    kind = peek_kind(made)
    if kind != SHIPPED[plan.name].kind:
        raise RebuildError(f"{str(made)!r} holds a {kind!r} document; expected {SHIPPED[plan.name].kind!r}")
    load_run_policy(str(made))  # the whole file checked
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copyfile(made, tmp)
        shutil.copymode(dest if dest.is_file() else made, tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def record_rebuild(name: str, text: str) -> tuple[str, str]:
    """Re-save shipped policy ``name`` with ``training.rebuild = text`` through its own ``load`` / ``save`` (the
    document's hash recomputed), refusing to write if its tensors would change.

    Returns:
        The file's ``tensors_sha256`` before and after (equal).

    Raises:
        PolicyError: ``text`` is not ``rl-select`` commands joined by ``&&``; see :func:`shipped_policy`.
    """
    parse_commands(text, where="--record")
    policy = shipped_policy(name)
    path, kind = packaged_path(name), SHIPPED[name].kind
    before = read_artifact(path, kind=kind, error=PolicyError)[1]["tensors_sha256"]
    policy.training["rebuild"] = text
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        staged = policy.save(Path(tmp) / path.name)
        after = read_artifact(staged, kind=kind, error=PolicyError)[1]["tensors_sha256"]
        load_run_policy(str(staged))  # the whole file checked by its own class
        shutil.copymode(path, staged)
        if after != before:
            raise PolicyError(f"re-saving {str(path)!r} would change its tensors ({before[:12]} -> {after[:12]}); "
                              "left it as it was")
        os.replace(staged, path)
    return before, after
