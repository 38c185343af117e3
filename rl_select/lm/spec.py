"""``ScorerSpec``: every setting that decides a scorer's numbers, as typed fields, and the scorer factory.

The spec is the ``[lm]`` table of a run config, and the record a policy file keeps of the scorer it was
trained with. A built scorer carries its *resolved* spec (``scorer.scorer_spec``): the dtype actually
used (``"auto"`` resolved to ``"bf16"`` or ``"fp32"``) and the model's content fingerprint. Two specs are
compared field by field (:meth:`ScorerSpec.differences`), never by parsing a fingerprint string.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, get_args

from rl_select.errors import ConfigError
from rl_select.lm.base import CachedScorer
from rl_select.lm.cache import ScoreCache
from rl_select.prompts import Mode
from rl_select.tasks import TaskSpec
from rl_select.types import is_int

BACKENDS: tuple[str, ...] = ("hf", "openai")
"""``hf``: transformers in process; ``openai``: an OpenAI-compatible ``/v1/completions`` server."""

MODES: tuple[str, ...] = get_args(Mode)
"""Scoring modes: ``direct`` P(label | input), ``channel`` P(input | label)."""

DTYPES: tuple[str, ...] = ("auto", "bf16", "fp32", "fp16")
"""``auto``: bf16 on CUDA or a CPU with native bf16, else fp32."""

IDENTITY_FIELDS: tuple[str, ...] = (
    "backend", "model", "model_fingerprint", "dtype", "mode", "length_norm", "calibrate",
)
"""The fields that change a scorer's numbers; a policy is used only with a scorer equal on all of them."""


@dataclass(frozen=True)
class ScorerSpec:
    """How to build the frozen LM's scorer (the ``[lm]`` config table).

    Attributes:
        backend: ``hf`` or ``openai``. The API key of ``openai`` is read from ``RL_SELECT_API_KEY`` /
            ``OPENAI_API_KEY`` only, so it is never part of a spec, a config file or a run folder.
        model: ``"bundled"`` (SmolLM2-135M-Instruct), a local folder or a hub id; with ``openai`` the
            served model's name (``"bundled"``: whatever the server serves).
        dtype: ``auto`` | ``bf16`` | ``fp32`` | ``fp16`` (``hf`` only); resolved in a built scorer's spec.
        device: ``auto`` | ``cpu`` | ``cuda`` ... (``hf`` only).
        mode: ``direct`` or ``channel`` scoring.
        length_norm: Divide label log-probs by their token count.
        calibrate: Contextual calibration of label probabilities.
        batch_size: Query rows per forward pass (or per request).
        base_url: The ``openai`` server (else ``$RL_SELECT_BASE_URL``); ``None`` for ``hf``.
        max_concurrency: ``openai``: requests in flight at once.
        timeout: ``openai``: seconds allowed per response.
        max_retries: ``openai``: retries of a request after a time-out, 429 or 5xx.
        model_fingerprint: Content hash of the loaded model (weights and dtype), or the server's model
            identity; ``None`` until a scorer is built.

    Raises:
        ConfigError: A value outside its set, naming the field and the allowed values.
    """

    backend: str = "hf"
    model: str = "bundled"
    dtype: str = "auto"
    device: str = "auto"
    mode: str = "direct"
    length_norm: bool = False
    calibrate: bool = False
    batch_size: int = 16
    base_url: str | None = None
    max_concurrency: int = 4
    timeout: float = 60.0
    max_retries: int = 5
    model_fingerprint: str | None = None

    def __post_init__(self) -> None:
        for name, allowed in (("backend", BACKENDS), ("mode", MODES), ("dtype", DTYPES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"lm.{name}={getattr(self, name)!r}; expected one of {list(allowed)}")
        for name in ("length_norm", "calibrate"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"lm.{name}={getattr(self, name)!r}; expected true or false")
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"lm.model={self.model!r}; expected 'bundled', a folder, a hub id or a served name")
        if not is_int(self.batch_size) or self.batch_size < 1:
            raise ConfigError(f"lm.batch_size={self.batch_size!r}; expected an integer >= 1")
        if not is_int(self.max_concurrency) or self.max_concurrency < 1:
            raise ConfigError(f"lm.max_concurrency={self.max_concurrency!r}; expected an integer >= 1")
        if not is_int(self.max_retries) or self.max_retries < 0:
            raise ConfigError(f"lm.max_retries={self.max_retries!r}; expected an integer >= 0")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) or self.timeout <= 0:
            raise ConfigError(f"lm.timeout={self.timeout!r}; expected a number of seconds > 0")

    # --- records ------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON/TOML values (``None`` fields left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "lm") -> ScorerSpec:
        """Rebuild a spec from :meth:`to_dict`'s output.

        Raises:
            ConfigError: Not a mapping, an unknown key (named, with the known ones), or a bad value.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where} is {type(d).__name__}; expected a table of scorer settings")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"{where} has unknown keys {unknown}; expected some of {known}")
        return cls(**dict(d))

    def identity(self) -> dict[str, Any]:
        """The fields that change the scorer's numbers (:data:`IDENTITY_FIELDS`)."""
        return {name: getattr(self, name) for name in IDENTITY_FIELDS}

    def differences(self, other: ScorerSpec, *, fields: tuple[str, ...] = IDENTITY_FIELDS) -> list[str]:
        """``"name: self vs other"`` for each field of ``fields`` in which the two specs differ.

        ``None`` (not known yet) and ``dtype="auto"`` (not resolved yet) match anything.
        """
        out = []
        for name in fields:
            a, b = getattr(self, name), getattr(other, name)
            if a is None or b is None or (name == "dtype" and "auto" in (a, b)):
                continue
            if a != b:
                out.append(f"{name}: {a!r} vs {b!r}")
        return out

    def replace(self, **changes: Any) -> ScorerSpec:
        """A copy with ``changes`` (validated)."""
        return dataclasses.replace(self, **changes)

    # --- building -----------------------------------------------------------------------------------

    def factory(self, cache: ScoreCache | None = None) -> Callable[[TaskSpec], CachedScorer]:
        """Load the LM once; the returned function wraps it in a scorer for any task spec.

        Every scorer it returns carries ``scorer.scorer_spec``: this spec with the resolved dtype and the
        model fingerprint.

        Raises:
            ConfigError: ``openai`` without a server URL.
            ModelError: The model cannot be loaded (one line naming it).
        """
        if self.backend == "openai":
            return self._openai_factory(cache)
        return self._hf_factory(cache)

    def build(self, task: TaskSpec, cache: ScoreCache | None = None) -> CachedScorer:
        """One scorer for ``task`` (loads the model)."""
        return self.factory(cache)(task)

    def _hf_factory(self, cache: ScoreCache | None) -> Callable[[TaskSpec], CachedScorer]:
        from rl_select.lm.hf import HFScorer, dtype_name, load_causal_lm

        model, tokenizer = load_causal_lm(self.model, dtype=self.dtype, device=self.device)
        resolved: list[ScorerSpec] = []

        def make(task: TaskSpec) -> CachedScorer:
            scorer = HFScorer(
                model, tokenizer, task, model_id=self.model, mode=self.mode, calibrate=self.calibrate,  # type: ignore[arg-type]
                length_norm=self.length_norm, batch_size=self.batch_size, cache=cache,
                fingerprint=resolved[0].model_fingerprint if resolved else None,
            )
            if not resolved:
                resolved.append(self.replace(dtype=dtype_name(scorer.dtype),
                                             model_fingerprint=scorer.model_fingerprint))
            scorer.scorer_spec = resolved[0]
            return scorer

        return make

    def _openai_factory(self, cache: ScoreCache | None) -> Callable[[TaskSpec], CachedScorer]:
        import os

        from rl_select.lm.openai import OpenAICompletionsScorer

        base_url = self.base_url or os.environ.get("RL_SELECT_BASE_URL")
        if not base_url:
            raise ConfigError("backend='openai' needs a server: pass --base-url URL or set $RL_SELECT_BASE_URL")

        def make(task: TaskSpec) -> CachedScorer:
            scorer = OpenAICompletionsScorer(
                task, base_url=base_url, model=None if self.model == "bundled" else self.model, mode=self.mode,
                length_norm=self.length_norm, calibrate=self.calibrate, cache=cache, batch_size=self.batch_size,
                max_concurrency=self.max_concurrency, timeout=self.timeout, max_retries=self.max_retries,
            )
            scorer.scorer_spec = self.replace(base_url=base_url, model_fingerprint=f"openai:{base_url}:{scorer.model}")
            return scorer

        return make

