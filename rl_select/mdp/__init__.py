"""The gym-free heart of the selection MDP: the episode rule, features, the Q-network, the policy artifact.

Imported by :mod:`envs` (the Gymnasium adapter) and by the exported policy alike, so training and
selection share one definition of every step. Nothing here imports gymnasium or stable-baselines3.
"""
