"""Run folders: ``<out>/<UTC time>-<command>-<task>/`` with the resolved config, logs, results and plots."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from rl_select.experiments.config import RunConfig


class _RunLogHandler(logging.FileHandler):
    """The ``log.txt`` handler of the current run folder (one at a time on the ``rl_select`` logger)."""


class RunDir:
    """One run's folder.

    Files:
        ``config.toml`` (resolved config), ``log.txt``, ``results.csv`` (one row per selector x seed,
        appended as rows finish, so an interrupted run keeps what it measured), ``summary.csv``,
        ``results.json`` (config, rows, summary, LM spend), and plots.
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
        handler = _RunLogHandler(path / "log.txt")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger = logging.getLogger("rl_select")
        logger.setLevel(logging.INFO)
        for earlier in [h for h in logger.handlers if isinstance(h, _RunLogHandler)]:
            logger.removeHandler(earlier)  # a later run in the same process must not log into an earlier folder
            earlier.close()
        logger.addHandler(handler)
        return cls(path)

    def add_row(self, row: dict[str, Any]) -> None:
        """Append a result row to ``results.csv`` at once."""
        self.rows.append(row)
        flat = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in row.items()}
        csv = self.path / "results.csv"
        pd.DataFrame([flat]).to_csv(csv, mode="a", header=not csv.exists(), index=False)

    def finish(self, summary: list[dict[str, Any]], extra: dict[str, Any]) -> None:
        """Write ``summary.csv`` and ``results.json``."""
        pd.DataFrame(summary).to_csv(self.path / "summary.csv", index=False)
        doc = {"rows": self.rows, "summary": summary, **extra}
        (self.path / "results.json").write_text(json.dumps(doc, indent=2, default=str))
