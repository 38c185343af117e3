"""The policies shipped in the package, by name: ``pretrained``, ``pretrained-large`` and ``pretrained-critic``.

Each name stands for one file in ``rl_select/pretrained/`` wherever a policy path is accepted
(:func:`resolve_policy_path`): the per-query loader (``--policy pretrained``, ``policy_pq``'s default) and the
fixed-prompt loader (``--policy pretrained-critic``, the default of ``policy``, ``policy_search``, ``policy_rank`` and
``policy_probe``). Each file's training record
holds ``rebuild``, the commands that rebuild it from committed configs (``rl-select reproduce NAME``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rl_select.errors import PolicyError

PRETRAINED = "pretrained"
"""The general per-query policy (kind ``per_query_policy``), trained on the nine shared tasks for the bundled model."""

PRETRAINED_LARGE = "pretrained-large"
"""The general per-query policy trained with a 1,000-example pool (eight shared tasks, CB has too few rows): what
``pretrained`` stands for on a pool of :data:`LARGE_POOL_MIN` rows or more (:func:`per_query_for_pool`)."""

LARGE_POOL_MIN = 1000
"""From this many pool rows, ``pretrained`` selects with :data:`PRETRAINED_LARGE`. Both policies were validated at
their own pool size only (100 and 1,000 rows; docs/per_query/README.md), so the switch sits at the larger one."""

PRETRAINED_CRITIC = "pretrained-critic"
"""The fixed-prompt policy with its probe critic (kind ``policy``), trained on the nine shared tasks for the bundled
model (``configs/pretrained_critic.toml``)."""

FOLDER = Path(__file__).resolve().parent.parent / "pretrained"
"""Where the shipped files live (package data)."""


@dataclass(frozen=True)
class Shipped:
    """One shipped policy: its file in :data:`FOLDER`, its artifact kind, and what it is in words."""

    file: str
    kind: str
    what: str


SHIPPED: dict[str, Shipped] = {
    PRETRAINED: Shipped("per_query.safetensors", "per_query_policy", "the shipped per-query policy"),
    PRETRAINED_CRITIC: Shipped("critic.safetensors", "policy", "the shipped fixed-prompt policy with its critic"),
    PRETRAINED_LARGE: Shipped("per_query_pool1000.safetensors", "per_query_policy",
                              "the shipped per-query policy for large pools"),
}
"""The shipped policies by name."""


def packaged_path(name: str) -> Path:
    """Where shipped policy ``name`` lives in the package (whether or not it is there)."""
    return FOLDER / SHIPPED[name].file


def resolve_policy_path(path: str | Path) -> Path:
    """``path``, or for a shipped name (:data:`SHIPPED`) its file in the package.

    Raises:
        PolicyError: A shipped name whose file is missing from this install (one line).
    """
    name = str(path)
    if name not in SHIPPED:
        return Path(path)
    where = packaged_path(name)
    if not where.is_file():
        raise PolicyError(f"{SHIPPED[name].what} ({name!r}) is missing from this install ({str(where)!r}); expected it "
                          "in the package (reinstall rl_select)")
    return where


def per_query_for_pool(name: str | Path, n_pool: int) -> str | Path:
    """The shipped per-query policy ``pretrained`` stands for on a pool of ``n_pool`` rows: :data:`PRETRAINED_LARGE`
    from :data:`LARGE_POOL_MIN` rows when it is installed, else ``pretrained``; any other name or path as it is."""
    if str(name) == PRETRAINED and n_pool >= LARGE_POOL_MIN and packaged_path(PRETRAINED_LARGE).is_file():
        return PRETRAINED_LARGE
    return name
