"""The context-window rule of :mod:`rl_select.lm.window` on an OpenAI-compatible server, which tokenises for us.

The rule is the HF backend's: a row (one query under its ordered demonstrations) that does not fit the LM's
context window drops demonstrations, leftmost first, until it fits; when the query alone does not fit, the row
is scored as a failure (:func:`~rl_select.lm.window.failure_row`), never cached. ``ScorerStats.rows_dropped_demos``
and ``ScorerStats.rows_failed`` count them, and one warning line names each row (the first 20 on the console).
Here a row fits when the server accepts its prompts: context, query and label, plus the one generated token.

The scorer learns that a row does not fit in two ways (:class:`ServerWindow`):

* **It asks first.** Once per scorer it asks for the window: llama.cpp's ``GET /props``
  (``default_generation_settings.n_ctx``, one slot's window, or ``n_ctx``), else vLLM's ``GET /v1/models``
  (the model's ``max_model_len``). A prompt has no more tokens than UTF-8 bytes (plus
  :data:`SPECIAL_TOKENS`), so a row within the window by that bound is sent as is, with no extra request;
  a longer row is measured with ``POST /tokenize`` (llama.cpp and vLLM) and fitted before it is sent.
* **It reacts.** A request the server refuses because a prompt is over its window
  (:func:`~rl_select.lm.openai.wire.context_overflow` knows llama.cpp's, vLLM's, OpenAI's, llama-cpp-python's,
  SGLang's and TGI's words) is split until the prompt at fault is alone; its row is asked again without its
  leftmost demonstration, and so on down to the query alone, which refused too is a failed row. This works on
  any server, and catches what asking missed (no ``/tokenize``, a window other than the one reported).

A row that fits is sent exactly as before, so its scores do not change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from rl_select.lm.openai import wire
from rl_select.lm.openai.batching import ScoreFn
from rl_select.lm.openai.next_token import NextTokenPath
from rl_select.lm.openai.transport import ContextOverflow
from rl_select.lm.window import Group, fit_groups, row_name
from rl_select.prompts import Mode, scoring_texts
from rl_select.types import Example

SPECIAL_TOKENS = 8
"""Tokens a server may add to a prompt beyond one per UTF-8 byte (BOS, a leading space marker)."""
TOKEN_MEMO = 4096
"""Prompt texts whose token counts one scorer remembers."""


class ServerWindow(NextTokenPath):
    """The context-window rule for the server backend (a part of the scorer; see the module docstring)."""

    mode: Mode
    _window: int | None
    _window_asked: bool
    _tokenize: str | None
    _token_counts: dict[str, int]

    # from the scorer and its base class
    _score_rows: Callable[[Sequence[Example], Sequence[Example]], tuple[np.ndarray, dict[int, wire.Overflow]]]
    _window_note: Callable[[str], None]

    # -- the rule -----------------------------------------------------------------------------------

    def _compute_many(self, groups: Sequence[Group]) -> list[np.ndarray]:
        """Label log-probs of many prompts under the context-window rule: per prompt ``(len(queries), n_labels + 1)``,
        the last column the demonstrations each row dropped, a failed row NaN (as
        :meth:`~rl_select.lm.base.CachedScorer._within_window` gives them)."""
        n_labels = len(self.spec.labels)
        limit = self._server_window()
        if limit is None:
            return self._fit_by_trial(groups)
        bounds = [[self._row_bound(demos, q) for q in queries] for demos, queries in groups]
        if all(n <= limit for row in bounds for n in row) or not self._can_tokenize():
            return self._fit_by_trial(groups)
        full = [[n if n <= limit else self._row_tokens(demos, q) for q, n in zip(queries, row)]
                for (demos, queries), row in zip(groups, bounds)]
        fit = fit_groups(groups, full, self._row_tokens, limit)
        for note in fit.notes:
            self._window_note(note)
        parts = self._fit_by_trial(fit.groups) if fit.groups else []
        out = fit.scatter([part[:, :n_labels] for part in parts], n_labels)
        for rows, part in zip(fit.rows, parts):  # rows the server still refused dropped more
            for (g, i), vec in zip(rows, part):
                out[g][i, n_labels] += vec[n_labels]
        return out

    def _fit_by_trial(self, groups: Sequence[Group]) -> list[np.ndarray]:
        """Every prompt sent as is; a row the server refuses as over its window is asked again with its leftmost
        demonstration dropped, until it fits or its query alone is refused (a failed row, NaN)."""
        n_labels = len(self.spec.labels)
        out = [np.zeros((len(queries), n_labels + 1)) for _, queries in groups]
        todo = {(g, i): 0 for g, (_, queries) in enumerate(groups) for i in range(len(queries))}
        while todo:
            prompts: dict[tuple[int, int], list[int]] = {}
            for (g, i), j in todo.items():
                prompts.setdefault((g, j), []).append(i)
            todo = {}
            for (g, j), rows in prompts.items():
                demos, queries = groups[g]
                result, over = self._score_rows(demos[j:], [queries[i] for i in rows])
                for k, i in enumerate(rows):
                    if k not in over:
                        out[g][i, :n_labels], out[g][i, n_labels] = result[k], j
                        if j:
                            self._window_note(f"row {row_name(queries[i])}: dropped {j} of {len(demos)} "
                                              f"demonstrations (leftmost first) to fit {self._window_said()}")
                    elif j < len(demos):
                        todo[(g, i)] = j + 1
                    else:
                        out[g][i, :n_labels] = np.nan
                        alone = over[k].prompt_tokens
                        said = f"is {alone + wire.MAX_TOKENS:,} tokens" if alone else "does not fit"
                        self._window_note(f"row {row_name(queries[i])}: the query alone {said} (template and longest "
                                          f"label), over {self._window_said()}; scored as a failure")
        return out

    def _window_said(self) -> str:
        return f"the server's {self._window:,}-token context window" if self._window else \
            "the server's context window"

    def _splitting(self, score: ScoreFn) -> ScoreFn:
        """``score`` that never raises :class:`~rl_select.lm.openai.transport.ContextOverflow`: a batch refused as
        over the window is split in halves until the prompt at fault is alone, and that prompt's place in the
        result holds the :class:`~rl_select.lm.openai.wire.Overflow`."""

        def run(batch: list, probe: bool) -> list:
            try:
                return score(batch, probe)
            except ContextOverflow as exc:
                if len(batch) == 1:
                    return [exc.overflow]
                half = len(batch) // 2
                return run(batch[:half], probe and half > 1) + run(batch[half:], probe and len(batch) - half > 1)

        return run

    # -- what the server says -----------------------------------------------------------------------

    def _learn_window(self, overflow: wire.Overflow) -> None:
        """Keep the window a refusal names, when the server did not say it before."""
        if overflow.window and self._window is None:
            with self._lock:
                self._window = overflow.window

    def _server_window(self) -> int | None:
        """The server's context window in tokens (asked once: ``GET /props``, else ``GET /v1/models``)."""
        if not self._window_asked:
            self._window_asked = True
            found = wire.props_window(self.transport.probe("GET", "/props"))
            if found is None:
                found = wire.models_window(self.transport.probe("GET", "/v1/models"), self.model)
            if found is not None:
                self._window = found
        return self._window

    def _can_tokenize(self) -> bool:
        """Whether the server answers ``POST /tokenize`` (asked once, in each shape of :data:`wire.TOKENIZE_SHAPES`)."""
        if self._tokenize is None:
            self._tokenize = ""
            for shape in wire.TOKENIZE_SHAPES:
                if wire.token_count(self.transport.probe("POST", "/tokenize", wire.tokenize_body(shape, self.model,
                                                                                                  "a"))) is not None:
                    self._tokenize = shape
                    break
        return bool(self._tokenize)

    def _tokens(self, text: str) -> int | None:
        """The server's token count of a prompt (``None``: it would not say)."""
        if text in self._token_counts:
            return self._token_counts[text]
        if not self._can_tokenize():
            return None
        n = wire.token_count(self.transport.probe("POST", "/tokenize", wire.tokenize_body(self._tokenize or "",
                                                                                           self.model, text)))
        if n is not None:
            if len(self._token_counts) >= TOKEN_MEMO:
                self._token_counts.clear()
            self._token_counts[text] = n
        return n

    def _row_texts(self, demos: Sequence[Example], query: Example) -> list[str]:
        return [ctx + cont for ctx, cont in scoring_texts(self.spec, demos, [query], mode=self.mode)[0]]

    def _row_bound(self, demos: Sequence[Example], query: Example) -> int:
        """At least the row's tokens: UTF-8 bytes of its longest prompt, special tokens and the generated one."""
        return max(len(t.encode("utf-8")) for t in self._row_texts(demos, query)) + SPECIAL_TOKENS + wire.MAX_TOKENS

    def _row_tokens(self, demos: Sequence[Example], query: Example) -> int:
        """The row's tokens as the server counts them: its longest prompt and the generated token (0 when the
        server would not say: the row is then sent, and the server's refusal decides)."""
        counts = [self._tokens(t) for t in self._row_texts(demos, query)]
        return 0 if any(n is None for n in counts) else max(counts) + wire.MAX_TOKENS  # type: ignore[type-var]
