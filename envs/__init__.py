"""Gymnasium environments of rl_select; importing this package registers them.

* ``rl_select/DemoSelection-v0``: :class:`envs.demo_selection.DemoSelectionEnv`.
  ``gymnasium.make("rl_select/DemoSelection-v0")`` builds the toy env (synthetic data, ToyScorer);
  pass ``scorer=..., candidates=..., val=..., k=..., n_candidates=...`` for a real one.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from envs.demo_selection import DemoSelectionEnv, MaskedDiscrete, make_demo_selection_env

DEMO_SELECTION_ID = "rl_select/DemoSelection-v0"

if DEMO_SELECTION_ID not in registry:
    register(id=DEMO_SELECTION_ID, entry_point="envs.demo_selection:make_demo_selection_env")

__all__ = ["DEMO_SELECTION_ID", "DemoSelectionEnv", "MaskedDiscrete", "make_demo_selection_env"]
