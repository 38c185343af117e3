"""The context-window rule, in one place: what a scorer does with a row longer than its LM's window.

A row is one query under an ordered demonstration list, with its longest label continuation. When the
row does not fit the window, demonstrations are dropped leftmost first (for kNN order, the least similar)
until it fits; the query and the label are never cut. When the query alone (instruction, template, query
and longest label, no demonstration) does not fit, the row is not computed: it is scored as a failure
(:func:`failure_row`, which every accuracy counts as wrong), never cached, and named in one warning line.
``ScorerStats.rows_dropped_demos`` and ``ScorerStats.rows_failed`` count the rows each way.

Backends that know their token budget (the HF and reference scorers) apply the rule through
:meth:`rl_select.lm.base.CachedScorer._within_window` with the token counts they compute anyway, so a row
that fits is tokenised once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from rl_select.tasks import TaskSpec
from rl_select.types import Example

Group = tuple[Sequence[Example], Sequence[Example]]
"""One prompt: ``(ordered demonstrations, queries)``."""

FAILED_LOGPROB = -1e4
"""The gold label's log-prob in a failed row (finite, so calibration and margins stay finite)."""


class ContextWindowWarning(UserWarning):
    """A row did not fit the LM's context window (demonstrations dropped, or scored as a failure)."""


def fit_row(n_demos: int, length: Callable[[int], int], limit: int, *, full: int | None = None
            ) -> tuple[int | None, int]:
    """The rule for one row: how many demonstrations to drop, leftmost first, so that it fits ``limit`` tokens.

    Args:
        n_demos: Demonstrations in the row's prompt.
        length: ``length(j)``: the row's tokens without its first ``j`` demonstrations, longest label included.
        limit: The context window in tokens.
        full: ``length(0)`` when the caller has it already (then a row that fits costs no tokenisation).

    Returns:
        ``(j, alone)``: ``j`` demonstrations to drop (0 when the row fits as is), or ``None`` when the query
        alone does not fit; ``alone`` is ``length(n_demos)`` (0 when the row fits as is).
    """
    if (length(0) if full is None else full) <= limit:
        return 0, 0
    alone = length(n_demos)
    if alone > limit:
        return None, alone
    return next((j for j in range(1, n_demos) if length(j) <= limit), n_demos), alone


def failure_row(spec: TaskSpec, query: Example) -> np.ndarray:
    """Label log-probs of a failed row, ``(n_labels,)``: the gold label lowest (:data:`FAILED_LOGPROB`), the
    other labels uniform, so the top label is never gold (a label outside ``spec.labels`` gets a uniform row)."""
    n = len(spec.labels)
    row = np.full(n, -np.log(max(n - 1, 1)))
    if query.label in spec.labels:
        row[spec.labels.index(query.label)] = FAILED_LOGPROB
    else:
        row[:] = -np.log(n)
    return row


def row_name(query: Example) -> str:
    """A row in a message: its uid, else the start of its text."""
    return repr(query.uid[:60]) if query.uid else repr(query.text[:40])


@dataclass
class Fit:
    """Groups of prompts fitted to a context window (:func:`fit_groups`).

    Attributes:
        groups: The prompts to compute: the input itself (the same object) when every row fits, else one prompt per
            (input prompt, demonstrations dropped), failed rows left out.
        rows: Per prompt of ``groups``, the ``(group, row)`` of the input each of its rows came from.
        shape: Rows per input group.
        dropped: ``(group, row) -> demonstrations dropped`` for the rows that lost some.
        failed: The ``(group, row)`` of the rows whose query alone does not fit.
        notes: One line per affected row, naming it and the culprit's length.
    """

    groups: Sequence[Group]
    rows: list[list[tuple[int, int]]]
    shape: list[int]
    dropped: dict[tuple[int, int], int] = field(default_factory=dict)
    failed: list[tuple[int, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def scatter(self, results: Sequence[np.ndarray], n_labels: int) -> list[np.ndarray]:
        """The computed ``results`` (one ``(n, n_labels)`` array per prompt of :attr:`groups`) back in the input's
        layout, with one more column: demonstrations dropped; a failed row is NaN in its label columns."""
        out = [np.zeros((n, n_labels + 1)) for n in self.shape]
        for rows, res in zip(self.rows, results):
            for (g, i), vec in zip(rows, res):
                out[g][i, :n_labels] = vec
        for (g, i), j in self.dropped.items():
            out[g][i, n_labels] = j
        for g, i in self.failed:
            out[g][i, :n_labels] = np.nan
        return out


def fit_groups(groups: Sequence[Group], full: Sequence[Sequence[int]],
               row_length: Callable[[Sequence[Example], Example], int], limit: int) -> Fit:
    """Apply :func:`fit_row` to every row of every prompt.

    Args:
        groups: ``(demos, queries)`` prompts.
        full: Per prompt, each row's tokens with all its demonstrations (longest label included).
        row_length: ``row_length(demos, query)``: the same count for other demonstrations (called only for rows
            over ``limit``).
        limit: The context window in tokens.
    """
    shape = [len(q) for _, q in groups]
    if all(n <= limit for lengths in full for n in lengths):
        return Fit(groups, [[(g, i) for i in range(n)] for g, n in enumerate(shape)], shape)
    fit = Fit([], [], shape)
    parts: dict[tuple[int, int], list[int]] = {}
    for g, ((demos, queries), lengths) in enumerate(zip(groups, full)):
        for i, (q, n) in enumerate(zip(queries, lengths)):
            j, alone = fit_row(len(demos), lambda j, d=demos, q=q: row_length(d[j:], q), limit, full=n)
            if j is None:
                fit.failed.append((g, i))
                fit.notes.append(f"row {row_name(q)}: the query alone is {alone:,} tokens (template and longest "
                                 f"label included), over the {limit:,}-token context window; scored as a failure")
                continue
            if j:
                fit.dropped[(g, i)] = j
                fit.notes.append(f"row {row_name(q)}: dropped {j} of {len(demos)} demonstrations (leftmost first; "
                                 f"they are {n - alone:,} tokens, the query {alone:,}) to fit the {limit:,}-token "
                                 f"context window")
            parts.setdefault((g, j), []).append(i)
    fit.groups = []
    for (g, j), rows in parts.items():
        demos, queries = groups[g]
        fit.groups.append((demos[j:], [queries[i] for i in rows]))
        fit.rows.append([(g, i) for i in rows])
    return fit
