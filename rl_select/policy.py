"""The exported, inference-only demonstration selector: one ``.safetensors`` file, no RL libraries.

A :class:`SelectorPolicy` holds a trained :class:`~rl_select.qnet.CandidateQNet` and everything needed
to use it again: the feature spec, the demo budget ``k`` (with ``allow_stop`` / ``min_len``), the task
spec, the id and fingerprint of the LM it was trained with, and a training summary. It needs neither
gymnasium nor stable-baselines3: :meth:`SelectorPolicy.select` replays the env's greedy episode with
the shared :class:`~rl_select.features.Featurizer`.

File format (``format = "rl_select.SelectorPolicy"``, ``format_version = 1``): a safetensors file whose
tensors are the Q-network's ``state_dict`` and whose string metadata holds one key,
``"rl_select_policy"``, a JSON document::

    {"format": "rl_select.SelectorPolicy", "format_version": 1,
     "feature_spec": {...FeatureSpec.to_dict()}, "k": 4, "allow_stop": false, "min_len": 0,
     "task": {...TaskSpec.to_dict()}, "lm_id": "bundled", "lm_fingerprint": "hf:…:direct:0",
     "qnet": {"class": "CandidateQNet", "state_dim": 6, "cand_dim": 6, "hidden": [64, 64],
              "n_parameters": 9090},
     "training": {...}, "tensors_sha256": "…"}

``tensors_sha256`` (see :func:`tensors_sha256`) covers every tensor's name, dtype, shape and raw bytes.
Loading never executes code (no pickle, no ``torch.load``): it reads the safetensors header and data,
checks the format, the version, the hash, and that the architecture in the metadata builds a network
whose parameters have exactly the stored names and shapes; anything else is refused with a one-line
:class:`~rl_select.errors.PolicyError`.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor

from rl_select.artifacts import tensors_sha256, write_safetensors
from rl_select.embeddings import Embedder
from rl_select.errors import ConfigError, PolicyError, SelectionError, TaskError
from rl_select.features import FeatureSpec, Featurizer
from rl_select.lm.base import Scorer
from rl_select.prompts import render_prompt
from rl_select.qnet import CandidateQNet, masked_q
from rl_select.tasks import TaskSpec
from rl_select.types import Example

FORMAT_NAME = "rl_select.SelectorPolicy"
"""The ``format`` field of every policy file."""

FORMAT_VERSION = 1
"""The newest ``format_version`` this code writes and reads."""

METADATA_KEY = "rl_select_policy"
"""The safetensors metadata key that holds the JSON document."""

_REQUIRED = ("feature_spec", "k", "allow_stop", "min_len", "task", "lm_id", "lm_fingerprint", "qnet",
             "training", "tensors_sha256")


class PolicyWarning(UserWarning):
    """A policy is used with an LM other than the one it was trained with."""


def fingerprint_model_part(fingerprint: str) -> str:
    """The part of a scorer fingerprint that names the model weights.

    ``HFScorer`` fingerprints read ``"hf:<model hash>:<mode>:<length_norm>"``; their model part is the
    model hash (so a policy trained in direct mode is not flagged when used with length normalisation).
    Any other fingerprint is its own model part.
    """
    parts = str(fingerprint).split(":")
    return parts[1] if parts[0] == "hf" and len(parts) >= 2 else str(fingerprint)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class SelectorPolicy:
    """A trained candidate-scoring Q-network packaged for inference.

    Args:
        qnet: The trained network (its dims must match ``feature_spec``).
        feature_spec: The features it was trained on.
        k: The demo budget it was trained for (the default of :meth:`select`).
        task: The task spec (for :meth:`build_prompt`).
        lm_id: Name of the LM it was trained with (``"bundled"``, a hub id or a folder).
        lm_fingerprint: That LM scorer's ``fingerprint`` (or just its model part).
        training: A JSON-serialisable training summary (agent, steps, returns, ...).
        allow_stop: Whether STOP may be chosen (as in the training env).
        min_len: Fewest demos before STOP may be chosen (as in the training env).

    Attributes:
        last_selection_info: After :meth:`select`: ``{"k", "chosen", "stopped", "steps": [{"step",
            "action", "q_action", "q_stop", "q"}], "lm_queries", "scorer_stats"}``; ``None`` before.

    Raises:
        PolicyError: Dims that do not match the feature spec, a bad ``k`` / ``min_len``, or a training
            summary that is not JSON-serialisable.
    """

    def __init__(
        self,
        qnet: CandidateQNet,
        *,
        feature_spec: FeatureSpec,
        k: int,
        task: TaskSpec,
        lm_id: str,
        lm_fingerprint: str,
        training: Mapping[str, Any] | None = None,
        allow_stop: bool = False,
        min_len: int = 0,
    ) -> None:
        if not isinstance(qnet, CandidateQNet):
            raise PolicyError(f"qnet is a {type(qnet).__name__}; expected a CandidateQNet")
        if (qnet.state_dim, qnet.cand_dim) != (feature_spec.state_dim, feature_spec.cand_dim):
            raise PolicyError(
                f"q-net dims (state_dim={qnet.state_dim}, cand_dim={qnet.cand_dim}) do not match feature set "
                f"{feature_spec.kind!r}; expected ({feature_spec.state_dim}, {feature_spec.cand_dim})"
            )
        if not _is_int(k) or k < 1:
            raise PolicyError(f"k={k!r}; expected an integer >= 1")
        if not _is_int(min_len) or not 0 <= min_len <= k:
            raise PolicyError(f"min_len={min_len!r}; expected an integer with 0 <= min_len <= k={k}")
        try:
            training = json.loads(json.dumps(dict(training or {})))
        except (TypeError, ValueError) as exc:
            raise PolicyError(f"training summary is not JSON-serialisable ({exc}); expected plain values") from None
        self.qnet = qnet.eval()
        self.feature_spec = feature_spec
        self.k = int(k)
        self.task = task
        self.lm_id = str(lm_id)
        self.lm_fingerprint = str(lm_fingerprint)
        self.training: dict[str, Any] = training
        self.allow_stop = bool(allow_stop)
        self.min_len = int(min_len)
        self.last_selection_info: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return (
            f"SelectorPolicy(feature_set={self.feature_spec.kind!r}, k={self.k}, task={self.task.name!r}, "
            f"lm_id={self.lm_id!r}, hidden={self.qnet.hidden})"
        )

    # --- the document -----------------------------------------------------------------------------

    def _tensors(self) -> dict[str, Tensor]:
        return {name: t.detach().to("cpu").contiguous().clone() for name, t in self.qnet.state_dict().items()}

    def _document(self, tensors: Mapping[str, Tensor]) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "feature_spec": self.feature_spec.to_dict(),
            "k": self.k,
            "allow_stop": self.allow_stop,
            "min_len": self.min_len,
            "task": self.task.to_dict(),
            "lm_id": self.lm_id,
            "lm_fingerprint": self.lm_fingerprint,
            "qnet": {
                "class": type(self.qnet).__name__,
                "state_dim": self.qnet.state_dim,
                "cand_dim": self.qnet.cand_dim,
                "hidden": list(self.qnet.hidden),
                "n_parameters": int(sum(t.numel() for t in tensors.values())),
            },
            "training": copy.deepcopy(self.training),
            "tensors_sha256": tensors_sha256(tensors),
        }

    def describe(self) -> dict[str, Any]:
        """The metadata document this policy saves, as JSON values (``tensors_sha256`` of the current weights)."""
        return json.loads(json.dumps(self._document(self._tensors())))

    # --- save / load ------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the policy as one ``.safetensors`` file, atomically (temporary file + ``os.replace``).

        Args:
            path: Target file (parent folders are created).

        Returns:
            The path written.
        """
        tensors = self._tensors()
        return write_safetensors(path, tensors, {METADATA_KEY: json.dumps(self._document(tensors), sort_keys=True)})

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        expect_lm_fingerprint: str | None = None,
        expect_feature_set: str | None = None,
    ) -> SelectorPolicy:
        """Read a policy file written by :meth:`save`, checking it thoroughly; never executes code.

        Args:
            path: The ``.safetensors`` file.
            expect_lm_fingerprint: Refuse a policy trained on another LM (compared exactly, or by
                :func:`fingerprint_model_part`).
            expect_feature_set: Refuse a policy with another feature-set kind (``"active"``, ...).

        Returns:
            The policy, in eval mode on the CPU.

        Raises:
            PolicyError: Missing file; not a (complete) safetensors file; no / non-JSON metadata; another
                format or a newer ``format_version``; tensors that do not match their hash; metadata whose
                architecture does not match the tensors; another LM or feature set than expected.
        """
        where = f"policy file {str(path)!r}"
        path = Path(path)
        if not path.is_file():
            raise PolicyError(f"{where} not found; expected a .safetensors file written by SelectorPolicy.save")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except Exception as exc:  # SafetensorError (truncated, garbage header), OSError
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise PolicyError(
                f"{where} is not a readable safetensors file ({first}); expected a complete file written by "
                "SelectorPolicy.save"
            ) from None
        doc = cls._read_document(where, metadata)
        if tensors_sha256(tensors) != doc["tensors_sha256"]:
            raise PolicyError(
                f"{where}: the tensor data do not match their recorded sha256 (corrupted or tampered with); "
                f"expected tensors_sha256={doc['tensors_sha256']!r}"
            )
        try:
            feature_spec = FeatureSpec.from_dict(doc["feature_spec"])
            task = TaskSpec.from_dict(doc["task"])
        except (ConfigError, TaskError) as exc:
            raise PolicyError(f"{where}: {exc}") from None
        qnet = cls._build_qnet(where, doc["qnet"], tensors, feature_spec)
        try:
            policy = cls(
                qnet, feature_spec=feature_spec, k=doc["k"], task=task, lm_id=doc["lm_id"],
                lm_fingerprint=doc["lm_fingerprint"], training=doc["training"], allow_stop=doc["allow_stop"],
                min_len=doc["min_len"],
            )
        except PolicyError as exc:
            raise PolicyError(f"{where}: {exc}") from None
        if expect_feature_set is not None and feature_spec.kind != expect_feature_set:
            raise PolicyError(
                f"{where} uses feature set {feature_spec.kind!r}; expected {expect_feature_set!r}"
            )
        if expect_lm_fingerprint is not None and not (
            policy.lm_fingerprint == expect_lm_fingerprint
            or fingerprint_model_part(policy.lm_fingerprint) == fingerprint_model_part(expect_lm_fingerprint)
        ):
            raise PolicyError(
                f"{where} was trained on LM {policy.lm_id!r} with fingerprint {policy.lm_fingerprint!r}; "
                f"expected fingerprint {expect_lm_fingerprint!r}"
            )
        return policy

    @staticmethod
    def _read_document(where: str, metadata: Mapping[str, str]) -> dict[str, Any]:
        """The JSON document of a file's metadata, with its format, version and keys checked."""
        raw = metadata.get(METADATA_KEY)
        if raw is None:
            raise PolicyError(
                f"{where} has no {METADATA_KEY!r} metadata (keys: {sorted(metadata)}); expected a selector "
                "policy written by SelectorPolicy.save, not a bare weights file"
            )
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise PolicyError(f"{where}: the {METADATA_KEY!r} metadata is not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise PolicyError(f"{where}: the {METADATA_KEY!r} metadata holds {type(doc).__name__}; expected an object")
        if doc.get("format") != FORMAT_NAME:
            raise PolicyError(f"{where} has format {doc.get('format')!r}; expected {FORMAT_NAME!r}")
        version = doc.get("format_version")
        if not _is_int(version) or version < 1:
            raise PolicyError(f"{where} has format_version {version!r}; expected an integer from 1 to {FORMAT_VERSION}")
        if version > FORMAT_VERSION:
            raise PolicyError(
                f"{where} has format_version {version}, newer than this rl_select reads; expected <= "
                f"{FORMAT_VERSION} (upgrade rl_select)"
            )
        missing = [key for key in _REQUIRED if key not in doc]
        if missing:
            raise PolicyError(f"{where}: the metadata lacks {missing}; expected all of {list(_REQUIRED)}")
        if not isinstance(doc["tensors_sha256"], str):
            raise PolicyError(f"{where}: tensors_sha256 is {doc['tensors_sha256']!r:.80}; expected a hex string")
        return doc

    @staticmethod
    def _build_qnet(
        where: str, arch: Any, tensors: Mapping[str, Tensor], feature_spec: FeatureSpec
    ) -> CandidateQNet:
        """A network built from the metadata's architecture, refusing any mismatch with the stored tensors."""
        ok = isinstance(arch, dict) and arch.get("class", "CandidateQNet") == "CandidateQNet"
        ok = ok and _is_int(arch.get("state_dim")) and _is_int(arch.get("cand_dim"))
        ok = ok and isinstance(arch.get("hidden"), list) and all(_is_int(h) for h in arch["hidden"])
        if not ok:
            raise PolicyError(
                f"{where}: q-net architecture {arch!r:.200} is malformed; expected {{'class': 'CandidateQNet', "
                "'state_dim': int, 'cand_dim': int, 'hidden': [int, ...]}"
            )
        want = (feature_spec.state_dim, feature_spec.cand_dim)
        if (arch["state_dim"], arch["cand_dim"]) != want:
            raise PolicyError(
                f"{where}: q-net dims (state_dim={arch['state_dim']}, cand_dim={arch['cand_dim']}) do not match "
                f"feature set {feature_spec.kind!r}; expected {want}"
            )
        try:
            qnet = CandidateQNet(arch["state_dim"], arch["cand_dim"], tuple(arch["hidden"]))
        except ValueError as exc:
            raise PolicyError(f"{where}: {exc}") from None
        expected = {name: tuple(t.shape) for name, t in qnet.state_dict().items()}
        found = {name: tuple(t.shape) for name, t in tensors.items()}
        if expected != found:
            diff = sorted(set(expected) ^ set(found)) or [n for n in sorted(expected) if expected[n] != found[n]]
            name = diff[0]
            raise PolicyError(
                f"{where}: the metadata's architecture (hidden={arch['hidden']}) does not match the stored tensors "
                f"({name!r}: file has {found.get(name, 'nothing')}, architecture expects "
                f"{expected.get(name, 'nothing')})"
            )
        bad = [name for name, t in tensors.items() if not t.is_floating_point()]
        if bad:
            raise PolicyError(f"{where}: tensors {bad} are not floating point; expected float weights")
        qnet.load_state_dict(dict(tensors), strict=True)
        return qnet.eval()

    # --- inference --------------------------------------------------------------------------------

    def check_scorer(self, scorer: Scorer, *, strict: bool = False) -> bool:
        """Whether ``scorer`` runs the LM this policy was trained on (by :func:`fingerprint_model_part`).

        Args:
            scorer: Any scorer; one without a ``fingerprint`` is not checked.
            strict: Raise instead of warning.

        Returns:
            ``True`` when the model parts agree (or the scorer has no fingerprint), else ``False``
            after a :class:`PolicyWarning`.

        Raises:
            PolicyError: The fingerprints differ and ``strict`` is set.
        """
        fp = getattr(scorer, "fingerprint", None)
        if fp is None or fingerprint_model_part(str(fp)) == fingerprint_model_part(self.lm_fingerprint):
            return True
        msg = (
            f"this policy was trained on LM {self.lm_id!r} (fingerprint {self.lm_fingerprint!r}) but the scorer "
            f"has fingerprint {str(fp)!r}; its choices may not transfer"
        )
        if strict:
            raise PolicyError(f"{msg}; expected a scorer of the training LM")
        warnings.warn(f"{msg} (pass strict=True to refuse)", PolicyWarning, stacklevel=3)
        return False

    def select(
        self,
        pool: Sequence[Example],
        *,
        scorer: Scorer,
        val: Sequence[Example],
        k: int | None = None,
        embedder: Embedder | None = None,
        strict: bool = False,
    ) -> list[Example]:
        """Choose an ordered list of demonstrations from ``pool`` by the greedy Q-network rollout.

        At each step the features of the current prompt are computed exactly as the env does
        (:class:`~rl_select.features.Featurizer`), chosen candidates are masked, STOP is masked unless
        ``allow_stop`` and at least ``min(min_len, k)`` demos are chosen, and the arg-max of the masked
        Q-values is taken (first index on ties). STOP ends the selection early.

        Args:
            pool: The N candidate demonstrations.
            scorer: The frozen LM (ideally the one the policy was trained with).
            val: Queries that summarise the prompt in the state features (a small unlabelled-OK split;
                labels are read only by ``labelled`` features' accuracy bookkeeping).
            k: Demo budget; defaults to the policy's ``k``.
            embedder: For ``labelled`` features' similarities (default: the hashing embedder).
            strict: Raise :class:`PolicyError` instead of warning when the scorer's LM differs.

        Returns:
            The chosen examples in prompt order (at most ``k``; fewer after a STOP).

        Raises:
            SelectionError: ``k < 1`` or ``k`` larger than the pool; an empty ``val``.
            PolicyError: Another LM and ``strict``.
        """
        pool_t = tuple(pool)
        k = self.k if k is None else k
        if not _is_int(k) or k < 1:
            raise SelectionError(f"k={k!r}; expected an integer >= 1")
        if k > len(pool_t):
            raise SelectionError(
                f"k={k} is larger than the pool of {len(pool_t)} candidates; expected k <= {len(pool_t)}"
            )
        self.check_scorer(scorer, strict=strict)
        featurizer = Featurizer(self.feature_spec, scorer, val=val, embedder=embedder)
        stats = getattr(scorer, "stats", None)
        before = stats.copy() if hasattr(stats, "copy") else None
        queries_before = int(getattr(stats, "queries", 0))
        min_len = min(self.min_len, k)
        n = len(pool_t)
        device = next(self.qnet.parameters()).device
        chosen: list[int] = []
        steps: list[dict[str, Any]] = []
        stopped = False
        with torch.no_grad():
            while len(chosen) < k:
                state, cands = featurizer.features(pool_t, chosen, k)
                q = self.qnet(
                    torch.as_tensor(state, device=device).unsqueeze(0),
                    torch.as_tensor(cands, device=device).unsqueeze(0),
                )[0]
                mask = torch.ones(n + 1, dtype=torch.bool, device=device)
                mask[chosen] = False
                mask[n] = self.allow_stop and len(chosen) >= min_len
                action = int(torch.argmax(masked_q(q, mask)).item())
                q_list = [float(v) for v in q.cpu()]
                steps.append({
                    "step": len(chosen),
                    "action": "STOP" if action == n else action,
                    "q_action": q_list[action],
                    "q_stop": q_list[n],
                    "q": q_list,
                })
                if action == n:
                    stopped = True
                    break
                chosen.append(action)
        after = getattr(scorer, "stats", None)
        self.last_selection_info = {
            "k": k,
            "chosen": list(chosen),
            "stopped": stopped,
            "steps": steps,
            "lm_queries": int(getattr(after, "queries", 0)) - queries_before,
            "scorer_stats": (after - before).as_dict() if before is not None and hasattr(after, "as_dict") else None,
        }
        return [pool_t[i] for i in chosen]

    def build_prompt(self, query: Example | str | tuple[str, str], demos: Sequence[Example]) -> str:
        """The direct-mode prompt for the frozen LLM: instruction, demonstrations, then the query.

        Args:
            query: An :class:`Example` (its label is ignored), a bare string (single-input tasks), or a
                ``(text, text2)`` tuple (sentence-pair tasks).
            demos: The demonstrations in prompt order (e.g. :meth:`select`'s result).

        Returns:
            Text ending with the template's label cue (``"...\\nSentiment:"``), for the LLM to complete.

        Raises:
            SelectionError: A query of the wrong shape for the task, or a demo label the task lacks.
        """
        spec = self.task
        if isinstance(query, Example):
            ex = query
        elif isinstance(query, str):
            if spec.is_pair:
                raise SelectionError(
                    f"task {spec.name!r} takes a pair of inputs {list(spec.input_fields)}; expected a (text, text2) "
                    "tuple or an Example, not a bare string"
                )
            ex = Example(text=query, label=spec.labels[0])
        elif isinstance(query, tuple) and len(query) == len(spec.input_fields) and all(
            isinstance(s, str) for s in query
        ):
            ex = Example(text=query[0], text2=query[1] if spec.is_pair else None, label=spec.labels[0])
        else:
            shape = "(text, text2) tuple" if spec.is_pair else "string"
            raise SelectionError(
                f"query {query!r:.80} does not fit task {spec.name!r}; expected an Example or a {shape}"
            )
        unknown = sorted({d.label for d in demos if d.label not in spec.verbalizers})
        if unknown:
            raise SelectionError(
                f"demo labels {unknown} are not labels of task {spec.name!r}; expected {list(spec.labels)}"
            )
        return render_prompt(spec, list(demos), ex)
