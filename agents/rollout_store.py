"""The logged episode (:class:`Episode`) and the append-only on-disk rollout store (:class:`RolloutStore`).

File format: JSON Lines, one line per FINISHED episode (keys sorted, so equal episodes are equal
bytes)::

    {"actions": [3, 0, 5], "candidates": [[[...C]...N]...T+1], "chosen": [3, 0], "env_seed": 123,
     "episode": 0, "format_version": 1, "lm_queries": 96, "masks": [[0, 1, ...]...T+1],
     "policy": "random", "return": 0.05, "rewards": [...T], "seed": [7, 0],
     "states": [[...S]...T+1], "terminated": true, "truncated": false, "val_acc": [...T+1]}

``states`` / ``candidates`` / ``masks`` hold the observation at every step INCLUDING the final one
(``T + 1`` rows for ``T`` actions), so an offline learner gets ``(s, a, r, s', mask')`` with no env.
Float32 features are written as the exact decimal of their value and read back bit-identical.

Durability: each episode is one ``write`` of its whole line followed by ``flush`` and ``os.fsync``.
A writer killed mid-episode leaves nothing; killed mid-write, it leaves a last line without its
newline. Readers skip that line with a warning; the next append cuts it off first. A bad line that is
NOT the last is corruption and raises :class:`~rl_select.errors.DataError`. One writer at a time.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rl_select.errors import DataError

STORE_VERSION = 1


@dataclass
class Episode:
    """One logged episode of ``T`` actions.

    Attributes:
        episode: Index within its store (0, 1, ...).
        seed: ``[collection seed, episode index]``.
        env_seed: The seed passed to ``env.reset``.
        policy: Name of the behaviour policy (``"random"``).
        actions: int, length ``T`` (``N`` is STOP).
        rewards: float, length ``T``.
        states: float32, shape ``(T + 1, S)``.
        candidates: float32, shape ``(T + 1, N, C)``.
        masks: bool, shape ``(T + 1, N + 1)``; the last row is the terminal mask (may be all False).
        chosen: ``info["chosen"]`` at the end.
        terminated: Whether the last step terminated the episode.
        truncated: Whether it was truncated instead.
        lm_queries: ``info["lm_queries"]`` at the end (0 if the env does not report it).
        val_acc: ``info["val_acc"]`` after reset and after each step, when reported.
    """

    episode: int
    seed: list[int]
    env_seed: int
    policy: str
    actions: list[int]
    rewards: list[float]
    states: np.ndarray
    candidates: np.ndarray
    masks: np.ndarray
    chosen: list[int] = field(default_factory=list)
    terminated: bool = True
    truncated: bool = False
    lm_queries: int = 0
    val_acc: list[float] | None = None

    @property
    def ret(self) -> float:
        """Sum of rewards."""
        return float(sum(self.rewards))

    def to_json(self) -> str:
        """The store line (without the newline); keys sorted."""
        doc = {
            "format_version": STORE_VERSION,
            "episode": int(self.episode),
            "seed": [int(s) for s in self.seed],
            "env_seed": int(self.env_seed),
            "policy": self.policy,
            "actions": [int(a) for a in self.actions],
            "rewards": [float(r) for r in self.rewards],
            "return": self.ret,
            "states": np.asarray(self.states, dtype=np.float32).tolist(),
            "candidates": np.asarray(self.candidates, dtype=np.float32).tolist(),
            "masks": np.asarray(self.masks).astype(np.int8).tolist(),
            "chosen": [int(i) for i in self.chosen],
            "terminated": bool(self.terminated),
            "truncated": bool(self.truncated),
            "lm_queries": int(self.lm_queries),
            "val_acc": None if self.val_acc is None else [float(v) for v in self.val_acc],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str | Mapping[str, Any]) -> Episode:
        """Parse a store line (or its decoded dict)."""
        d = json.loads(line) if isinstance(line, str) else line
        if d.get("format_version") != STORE_VERSION:
            raise DataError(f"rollout line has format_version {d.get('format_version')!r}; expected {STORE_VERSION}")
        t = len(d["actions"])
        ep = cls(
            episode=int(d["episode"]),
            seed=[int(s) for s in d["seed"]],
            env_seed=int(d["env_seed"]),
            policy=str(d["policy"]),
            actions=[int(a) for a in d["actions"]],
            rewards=[float(r) for r in d["rewards"]],
            states=np.asarray(d["states"], dtype=np.float32),
            candidates=np.asarray(d["candidates"], dtype=np.float32),
            masks=np.asarray(d["masks"], dtype=np.int8).astype(bool),
            chosen=[int(i) for i in d["chosen"]],
            terminated=bool(d["terminated"]),
            truncated=bool(d["truncated"]),
            lm_queries=int(d["lm_queries"]),
            val_acc=d.get("val_acc"),
        )
        if len(ep.rewards) != t or ep.states.shape[0] != t + 1 or ep.masks.shape[0] != t + 1 or (
            ep.candidates.ndim != 3 or ep.candidates.shape[0] != t + 1
        ):
            raise DataError(f"rollout episode {ep.episode} has inconsistent lengths for {t} actions")
        return ep


class RolloutStore:
    """Append-only JSONL store of finished episodes (see the module docstring for the format).

    Args:
        path: The ``.jsonl`` file; created (with its folder) by the first :meth:`append`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # ---------------------------------------------------------------------------------- reading

    def _scan(self) -> tuple[list[bytes], int, bool]:
        """``(complete lines, byte offset after the last complete line, torn tail?)``."""
        if not self.path.exists():
            return [], 0, False
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1  # 0 if no newline at all
        lines = data[:end].splitlines()
        return lines, end, end < len(data)

    def _warn_torn(self, tail_bytes: int) -> None:
        warnings.warn(
            f"rollout store {str(self.path)!r}: ignoring a truncated last line ({tail_bytes} bytes; "
            "a writer was killed mid-episode)",
            RuntimeWarning,
            stacklevel=3,
        )

    def episodes(self) -> Iterator[Episode]:
        """Every finished episode, in order; a torn last line is skipped with a warning.

        Raises:
            DataError: A complete line that is not valid JSON (corruption, not a killed writer).
        """
        lines, end, torn = self._scan()
        if torn:
            self._warn_torn(self.path.stat().st_size - end)
        for no, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                doc = json.loads(raw)
            except json.JSONDecodeError as e:
                raise DataError(f"rollout store {str(self.path)!r} line {no} is not valid JSON: {e}") from e
            yield Episode.from_json(doc)

    def load(self) -> list[Episode]:
        """All finished episodes as a list."""
        return list(self.episodes())

    def __len__(self) -> int:
        lines, _, _ = self._scan()
        return sum(1 for raw in lines if raw.strip())

    def resume(self) -> int:
        """Prepare to continue writing: cut off a torn last line (warning) and count finished episodes.

        Returns:
            The number of finished episodes (the index the next episode gets).
        """
        lines, end, torn = self._scan()
        if torn:
            self._warn_torn(self.path.stat().st_size - end)
            with open(self.path, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        return sum(1 for raw in lines if raw.strip())

    # ---------------------------------------------------------------------------------- the header

    @property
    def meta_path(self) -> Path:
        """The store's header: ``<store>.meta.json``, the settings its episodes were collected with."""
        return self.path.with_name(self.path.name + ".meta.json")

    def read_meta(self) -> dict[str, Any] | None:
        """The recorded settings, or ``None`` (a store without a header, or none yet)."""
        if not self.meta_path.exists():
            return None
        try:
            doc = json.loads(self.meta_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"rollout store header {str(self.meta_path)!r} is unreadable: {e}") from None
        if not isinstance(doc, dict):
            raise DataError(f"rollout store header {str(self.meta_path)!r} is not a JSON object")
        return doc

    def check_meta(self, meta: Mapping[str, Any]) -> None:
        """Refuse to continue a store collected with other settings, naming the first difference.

        A store without a header (written before headers existed) or without episodes is accepted.

        Raises:
            DataError: ``rollout store 'X' was collected with feature_set='active'; asked for 'table' ...``.
        """
        have = self.read_meta()
        if have is None or not len(self):
            return  # no header, or nothing collected yet (the header is rewritten)
        want = json.loads(json.dumps(dict(meta)))
        for key in list(want) + sorted(set(have) - set(want)):
            if have.get(key) != want.get(key):
                raise DataError(
                    f"rollout store {str(self.path)!r} was collected with {key}={have.get(key)!r}; asked for "
                    f"{key}={want.get(key)!r} (use another --store, or the settings it was collected with)"
                )

    def write_meta(self, meta: Mapping[str, Any]) -> None:
        """Record the settings (before the first episode is written)."""
        self.meta_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.meta_path.with_name(self.meta_path.name + ".tmp")
        tmp.write_text(json.dumps(dict(meta), indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.meta_path)

    # ---------------------------------------------------------------------------------- writing

    def append(self, episode: Episode) -> None:
        """Write one finished episode durably (one write of the line, flush, fsync).

        The caller is expected to have called :meth:`resume` once after opening an existing store;
        as a safety net, a file that does not end in a newline is repaired first.
        """
        line = (episode.to_json() + "\n").encode()
        new = not self.path.exists()
        if new:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif self.path.stat().st_size > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    self.resume()
        with open(self.path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        if new:
            _fsync_dir(self.path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
