"""Gymnasium environments of rl_select; importing this package registers them.

* ``rl_select/DemoSelection-v0``: :class:`envs.demo_selection.DemoSelectionEnv`; pass
  ``scorer=..., pool=..., val=..., k=..., n_candidates=...``.
* ``rl_select/PerQuerySelection-v0``: :class:`envs.per_query_selection.PerQuerySelectionEnv` (one episode per
  query over its M nearest pool examples); pass ``scorer=..., pool=..., queries=..., embedder=..., k=..., m=...``.
* ``rl_select/ToyDemoSelection-v0``: a small synthetic env scored by a model-free toy scorer
  (:func:`rl_select.testing.toy_env`), for tests and examples. Registered by its entry-point string,
  so nothing here imports the test doubles.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from envs.demo_selection import DemoSelectionEnv, MaskedDiscrete
from envs.per_query_selection import PerQuerySelectionEnv

DEMO_SELECTION_ID = "rl_select/DemoSelection-v0"
TOY_DEMO_SELECTION_ID = "rl_select/ToyDemoSelection-v0"
PER_QUERY_SELECTION_ID = "rl_select/PerQuerySelection-v0"

if DEMO_SELECTION_ID not in registry:
    register(id=DEMO_SELECTION_ID, entry_point="envs.demo_selection:DemoSelectionEnv")
if PER_QUERY_SELECTION_ID not in registry:
    register(id=PER_QUERY_SELECTION_ID, entry_point="envs.per_query_selection:PerQuerySelectionEnv")
if TOY_DEMO_SELECTION_ID not in registry:
    register(id=TOY_DEMO_SELECTION_ID, entry_point="rl_select.testing:toy_env")

__all__ = ["DEMO_SELECTION_ID", "PER_QUERY_SELECTION_ID", "TOY_DEMO_SELECTION_ID", "DemoSelectionEnv", "MaskedDiscrete",
           "PerQuerySelectionEnv"]
