"""Run folders: ``<out>/<UTC time>-<command>-<task>/`` with the resolved config, logs, results and plots.

Every run folder (and every ``ablate`` folder) holds ``status.json``: ``state`` (``running``, ``done``,
``failed`` or ``interrupted``), ``command``, ``started``, ``time`` (of the last change) and, for a run that
stopped early, ``error`` (its one-line reason) and ``error_type``. A failed run also logs its reason (and,
for an unexpected exception, the traceback) to its ``log.txt``, so the folder says why it has no results.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from rl_select.errors import RLSelectError
from rl_select.experiments.config import RunConfig

STATUS_FILE = "status.json"
"""The run state file of a run folder."""

log = logging.getLogger("rl_select")


class _RunLogHandler(logging.FileHandler):
    """The ``log.txt`` handler of the current run folder (one at a time on the ``rl_select`` logger)."""


def attach_log(folder: Path) -> None:
    """Send the ``rl_select`` logger's records to ``folder/log.txt`` (appended), and no earlier run folder's."""
    handler = _RunLogHandler(folder / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("rl_select")
    logger.setLevel(logging.INFO)
    for earlier in [h for h in logger.handlers if isinstance(h, _RunLogHandler)]:
        logger.removeHandler(earlier)  # a later run in the same process must not log into an earlier folder
        earlier.close()
    logger.addHandler(handler)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_status(folder: Path) -> dict[str, Any] | None:
    """``status.json`` of a run folder; ``None`` when there is none (a folder older than the file)."""
    path = Path(folder) / STATUS_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"state": "unknown", "error": f"{STATUS_FILE} is unreadable"}
    return doc if isinstance(doc, dict) else {"state": "unknown", "error": f"{STATUS_FILE} is not an object"}


def write_status(folder: Path, state: str, **fields: Any) -> dict[str, Any]:
    """Replace ``status.json`` (atomically) with ``state``, keeping ``command`` and ``started``; returns it."""
    before = read_status(folder) or {}
    doc = {"state": state, "command": fields.pop("command", before.get("command")),
           "started": before.get("started") if state != "running" else _now(), "time": _now(), **fields}
    path = Path(folder) / STATUS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return doc


def one_line(exc: BaseException) -> str:
    """An exception as the one line a status file and a summary show (a library's own errors get their type)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, RLSelectError):
        return text[:300]
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


@contextmanager
def recording(folder: Path) -> Iterator[None]:
    """Mark ``folder``'s run ``failed`` (or ``interrupted``) with the one-line reason if the block raises.

    The reason goes to ``status.json`` and ``log.txt`` (the traceback too, for an exception that is not an
    :class:`~rl_select.errors.RLSelectError`); the exception is raised on.
    """
    try:
        yield
    except (Exception, KeyboardInterrupt) as exc:
        reason = one_line(exc)
        state = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        log.error("run %s: %s", state, reason, exc_info=not isinstance(exc, (RLSelectError, KeyboardInterrupt)))
        write_status(folder, state, error=reason, error_type=type(exc).__name__)
        raise


class RunDir:
    """One run's folder.

    Files:
        ``config.toml`` (resolved config), ``status.json`` (see the module docstring), ``log.txt``,
        ``results.csv`` (one row per selector x seed, appended as rows finish, so an interrupted run keeps
        what it measured), ``summary.csv``, ``results.json`` (config, rows, summary, LM spend), and plots.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []

    @classmethod
    def create(cls, cfg: RunConfig, command: str) -> RunDir:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        task = Path(cfg.task).stem if cfg.task.endswith((".json", ".toml")) else cfg.task
        base = Path(cfg.out) / f"{stamp}-{command}-{task}"
        path, n = base, 1
        while path.exists():
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        path.mkdir(parents=True)
        cfg.dump(path / "config.toml")
        attach_log(path)
        write_status(path, "running", command=command)
        log.info("run %s started: task %s, k=%d, seeds %s", command, cfg.task, cfg.k, cfg.seeds)
        return cls(path)

    def recording(self) -> Any:
        """Context manager: a failure inside it is recorded in this folder (:func:`recording`)."""
        return recording(self.path)

    def add_row(self, row: dict[str, Any]) -> None:
        """Append a result row to ``results.csv`` at once."""
        self.rows.append(row)
        flat = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in row.items()}
        csv = self.path / "results.csv"
        pd.DataFrame([flat]).to_csv(csv, mode="a", header=not csv.exists(), index=False)

    def finish(self, summary: list[dict[str, Any]], extra: dict[str, Any]) -> None:
        """Write ``summary.csv`` and ``results.json``; the run is ``done``."""
        pd.DataFrame(summary).to_csv(self.path / "summary.csv", index=False)
        doc = {"rows": self.rows, "summary": summary, **extra}
        (self.path / "results.json").write_text(json.dumps(doc, indent=2, default=str))
        write_status(self.path, "done")
        log.info("run done: %d rows", len(self.rows))
