"""A saved prompt file as a selector of the evaluation harness (its stored rule per query)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rl_select.errors import SelectionError
from rl_select.prompt_file.document import PromptFile
from rl_select.types import Example


class SavedPromptSelector:
    """A prompt file as a per-query selector for the evaluation harness's ``run_one``: its stored rule per query.

    (Fixed prompt files are evaluated as explicit demonstrations; this is for per-query files.)
    """

    per_query = True
    name = "prompt_file"

    def __init__(self, prompt: PromptFile) -> None:
        self.prompt = prompt

    def select(self, ctx: Any) -> list[Example]:
        if self.prompt.per_query is not None:
            raise SelectionError("a per-query prompt file has no single demonstration list; expected select_for")
        return list(self.prompt.demos)

    def select_for(self, ctx: Any, queries: Sequence[Example]) -> list[list[Example]]:
        return self.prompt.demos_for(list(queries))
