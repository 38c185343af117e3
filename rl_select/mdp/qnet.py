"""The candidate-scoring Q-network shared by the DQN agents and the exported policy (torch only).

``Q(s, a) = MLP([state ‖ cand_a])`` for every candidate ``a < N`` with ONE set of weights, and
``Q(s, STOP) = MLP_stop(state)``. Because no weight is tied to a pool index, a trained network scores
a new pool, a pool of another size, or a new task, as long as the feature spec is the same.

Masked actions get the large *finite* value :data:`MASKED_Q` (never ``-inf``), so a terminal state's
all-masked row gives finite numbers, ``max`` of it is finite and ``0 * max`` is 0, not NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

MASKED_Q: float = -1e9
"""The value :func:`masked_q` puts on masked actions (finite in fp32 and bf16; not for fp16)."""


def masked_q(q: Tensor, mask: Tensor) -> Tensor:
    """Replace the Q-values of masked actions with :data:`MASKED_Q`.

    Args:
        q: Q-values, float, shape ``(B, N + 1)`` (or any shape ``mask`` broadcasts to).
        mask: Valid actions, bool (or 0/1 of any dtype), same shape as ``q``.

    Returns:
        ``torch.where(mask, q, MASKED_Q)``, shape and dtype of ``q``.
    """
    return torch.where(mask.bool(), q, torch.full_like(q, MASKED_Q))


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int) -> nn.Sequential:
    """``in_dim -> hidden... -> out_dim`` with ReLU between layers."""
    layers: list[nn.Module] = []
    last = in_dim
    for width in hidden:
        layers += [nn.Linear(last, width), nn.ReLU()]
        last = width
    layers.append(nn.Linear(last, out_dim))
    return nn.Sequential(*layers)


class CandidateQNet(nn.Module):
    """Q(s, a) = MLP([state ‖ cand_a]) for a < N, Q(s, STOP) = MLP_stop(state); one set of weights for all a.

    Args:
        state_dim: Size S of the state feature vector.
        cand_dim: Size C of one candidate's feature vector.
        hidden: Widths of the hidden ReLU layers of both MLPs.

    Attributes:
        state_dim: As given.
        cand_dim: As given.
        hidden: As given, as a tuple of ints.
        cand_mlp: ``(S + C) -> 1``, applied to every candidate.
        stop_mlp: ``S -> 1``, the STOP action's value.
    """

    def __init__(self, state_dim: int, cand_dim: int, hidden: tuple[int, ...] = (64, 64)) -> None:
        super().__init__()
        if state_dim < 0 or cand_dim < 0:
            raise ValueError(f"state_dim={state_dim} and cand_dim={cand_dim} must be >= 0")
        if any(int(h) <= 0 for h in hidden):
            raise ValueError(f"hidden={hidden!r}: every layer width must be a positive integer")
        self.state_dim = int(state_dim)
        self.cand_dim = int(cand_dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.cand_mlp = mlp(self.state_dim + self.cand_dim, self.hidden, 1)
        self.stop_mlp = mlp(self.state_dim, self.hidden, 1)

    def forward(self, state: Tensor, cands: Tensor) -> Tensor:
        """Score every candidate and STOP.

        Args:
            state: State features, shape ``(B, S)``.
            cands: Candidate features, shape ``(B, N, C)``; N may differ from call to call.

        Returns:
            Q-values, shape ``(B, N + 1)``; column ``N`` is STOP. Unmasked: apply :func:`masked_q`.
        """
        if state.ndim != 2 or state.shape[1] != self.state_dim:
            raise ValueError(f"state has shape {tuple(state.shape)}; expected (B, {self.state_dim})")
        if cands.ndim != 3 or cands.shape[2] != self.cand_dim or cands.shape[0] != state.shape[0]:
            raise ValueError(
                f"cands has shape {tuple(cands.shape)}; expected ({state.shape[0]}, N, {self.cand_dim})"
            )
        b, n, _ = cands.shape
        s = state.unsqueeze(1).expand(b, n, self.state_dim)
        q_cand = self.cand_mlp(torch.cat([s, cands], dim=-1)).squeeze(-1)  # (B, N)
        q_stop = self.stop_mlp(state)  # (B, 1)
        return torch.cat([q_cand, q_stop], dim=1)
