"""The one artifact format: tensors in a safetensors file, a JSON document in its metadata (no pickle).

Every trained object rl_select writes (the exported :class:`~rl_select.mdp.policy.SelectorPolicy`, an
agent's checkpoint, a tabular Q-table) is this format; ``kind`` says which document it holds::

    metadata {"rl_select": "<JSON>"} with JSON
    {"format": "rl_select", "format_version": 3, "kind": "policy" | "agent", "tensors_sha256": "…",
     "sha256": "…",
     "qnet": {"class": "CandidateQNet", "state_dim": 6, "cand_dim": 6, "hidden": [64, 64],
              "n_parameters": 9090},      # when the tensors are a Q-network
     ...the kind's own fields}

Integrity covers everything that decides behaviour:

* ``tensors_sha256`` (:func:`tensors_sha256`) covers every tensor's name, dtype, shape and raw bytes;
* ``sha256`` (:func:`artifact_sha256`) covers the whole document (every field but ``sha256`` itself, in
  the canonical text of :func:`rl_select.types.document_sha256`) followed by the tensors' hash, so an
  edited ``k``, scorer spec or training record is refused even when the file is rewritten validly.

Reading never executes code: it reads the header and data, checks the format, version and kind, then
both hashes (a mismatch: one line saying the file was edited or corrupted), and rebuilds a Q-network only
when the stored tensors have exactly the names and shapes its recorded architecture gives; anything else
is refused with one line.

Versions: 3 is written and read. Older files (2: written before the whole-document hash, so an edit of
their metadata could not be told; 1: two older formats) and newer ones are refused with one line: retrain
or re-export them with this rl_select.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from rl_select.errors import ArtifactError, PolicyError, path_kind
from rl_select.mdp.qnet import CandidateQNet
from rl_select.types import document_sha256, is_int

FORMAT_NAME = "rl_select"
"""The ``format`` field of every artifact."""

FORMAT_VERSION = 3
"""The ``format_version`` this code writes (3: the whole-document ``sha256``)."""

LEGACY_VERSIONS: tuple[int, ...] = ()
"""Older versions still read: none (a version-2 file's metadata is not covered by a hash, so it is refused)."""

HASH_FIELD = "sha256"
"""The document field that holds :func:`artifact_sha256`."""

METADATA_KEY = "rl_select"
"""The safetensors metadata key that holds the JSON document."""


def tensors_sha256(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 over the tensors in name order: each name, dtype, shape, byte count and raw bytes.

    Args:
        tensors: Name -> tensor (any device; read as contiguous CPU memory).

    Returns:
        The hex digest.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous().reshape(-1)
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        h.update(f"{name}\0{t.dtype}\0{list(tensors[name].shape)}\0{len(raw)}\0".encode())
        h.update(raw)
    return h.hexdigest()


def artifact_sha256(doc: Mapping[str, Any], tensors_hash: str) -> str:
    """The whole-artifact hash: the document's canonical text (all but ``sha256``), then the tensors' hash.

    Args:
        doc: The artifact's JSON document (its ``sha256`` field, if any, is left out).
        tensors_hash: :func:`tensors_sha256` of the stored tensors.

    Returns:
        The hex digest.
    """
    return document_sha256(doc, exclude=HASH_FIELD, extra=tensors_hash)


def artifact_document(kind: str, tensors: Mapping[str, Tensor], doc: Mapping[str, Any]) -> dict[str, Any]:
    """``doc`` as JSON values with the format fields every artifact carries: format, version, kind, both hashes.

    Raises:
        TypeError, ValueError: ``doc`` is not JSON-serialisable.
    """
    th = tensors_sha256(tensors)
    full = json.loads(json.dumps({**dict(doc), "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                                  "kind": kind, "tensors_sha256": th}))
    full.pop(HASH_FIELD, None)
    full[HASH_FIELD] = artifact_sha256(full, th)
    return full


def write_artifact(path: str | Path, *, kind: str, tensors: Mapping[str, Tensor], doc: Mapping[str, Any]) -> Path:
    """Write ``tensors`` and the JSON document ``doc`` (plus format, version, kind, both hashes) atomically.

    The file is written next to ``path`` under a temporary name and moved into place with
    ``os.replace``, so a crash never leaves a half-written artifact under ``path``.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    full = artifact_document(kind, cpu, doc)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(cpu, tmp, metadata={METADATA_KEY: json.dumps(full, sort_keys=True)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_artifact(
    path: str | Path, *, kind: str, error: type[ArtifactError] = ArtifactError, what: str = "artifact",
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read and check a file written by :func:`write_artifact`.

    Args:
        path: The ``.safetensors`` file.
        kind: The document kind expected (``"policy"``, ``"agent"``).
        error: The :class:`ArtifactError` subclass to raise (e.g. ``PolicyError``).
        what: How messages name the file (``"policy file"``).

    Returns:
        ``(tensors, document)``.

    Raises:
        ArtifactError: Missing file; not a (complete) safetensors file; no or non-JSON metadata; another
            format, version or kind; tensors or a document that do not match their recorded hashes
            (edited or corrupted).
    """
    where = f"{what} {str(path)!r}"
    path = Path(path)
    if not path.is_file():
        said = "is a folder" if path.is_dir() else "not found"
        raise error(f"{where} {said}; expected a .safetensors file written by rl_select")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # SafetensorError (truncated, garbage header), OSError
        kind = path_kind(path)
        if kind not in ("binary content", "a text file") and "safetensors" not in kind:
            raise error(f"{where} is {kind}, not a .safetensors file; expected one written by rl_select") from None
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise error(f"{where} is not a readable safetensors file ({first}); expected a complete file written by "
                    "rl_select") from None
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        raise error(f"{where} has no {METADATA_KEY!r} metadata (keys: {sorted(metadata)}); expected an rl_select "
                    "artifact, not a bare weights file")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise error(f"{where}: the {METADATA_KEY!r} metadata is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise error(f"{where}: the {METADATA_KEY!r} metadata holds {type(doc).__name__}; expected an object")
    if doc.get("format") != FORMAT_NAME:
        raise error(f"{where} has format {doc.get('format')!r}; expected {FORMAT_NAME!r}")
    version = doc.get("format_version")
    if not is_int(version) or (version != FORMAT_VERSION and version not in LEGACY_VERSIONS):
        newer = is_int(version) and version > FORMAT_VERSION
        legacy = "".join(f" or {v}" for v in LEGACY_VERSIONS)
        raise error(f"{where} has format_version {version!r}; expected {FORMAT_VERSION}{legacy}"
                    + (" (upgrade rl_select)" if newer else " (retrain or re-export it with this rl_select)"))
    if doc.get("kind") != kind:
        raise error(f"{where} holds a {doc.get('kind')!r} document; expected {kind!r}")
    th = tensors_sha256(tensors)
    if th != doc.get("tensors_sha256"):
        raise error(f"{where} was edited or corrupted: its tensor data do not match their recorded "
                    "tensors_sha256; re-export it")
    sealed = version == FORMAT_VERSION or HASH_FIELD in doc  # a legacy version never wrote one
    if sealed and (version != FORMAT_VERSION or doc.get(HASH_FIELD) != artifact_sha256(doc, th)):
        raise error(f"{where} was edited or corrupted: its contents do not match their recorded {HASH_FIELD}; "
                    "re-export it")
    return tensors, doc


def refuse_other_scorer(diff: list[str], *, force: bool, warning: type[Warning], what: str = "this policy") -> bool:
    """The one rule for a policy used with another scorer than its training one: refused unless ``force``.

    Args:
        diff: How the scorers differ (``"field: trained vs given"`` each); empty: the same scorer.
        force: Use it anyway (warns with ``warning``).
        warning: The warning class of a forced use.
        what: How the message names the policy.

    Returns:
        ``True`` for the training scorer, ``False`` after the warning (forced).

    Raises:
        PolicyError: The scorers differ and ``force`` is not set (one line naming the fields).
    """
    if not diff:
        return True
    msg = f"{what} was trained with another scorer ({'; '.join(diff)}; trained vs given)"
    if not force:
        raise PolicyError(f"{msg}; expected the training scorer ({', '.join(_as_trained(d) for d in diff)}), or "
                          "force=True / --force to use it anyway")
    warnings.warn(f"{msg}; its choices may not transfer", warning, stacklevel=4)
    return False


_SWITCHES = ("calibrate", "length_norm", "mode")
"""The scorer settings the CLI takes as options of the same name (``--calibrate/--no-calibrate``, ``--mode M``)."""


def _as_trained(difference: str) -> str:
    """How to ask for the trained setting of one ``"name: trained vs given"`` difference (``--calibrate``,
    ``--mode direct``; ``model='...'`` for settings the CLI takes elsewhere)."""
    name, _, values = difference.partition(": ")
    trained = values.split(" vs ")[0]
    flag = "--" + name.replace("_", "-")
    if name not in _SWITCHES:
        return f"{name}={trained}"
    if trained in ("True", "False"):
        return flag if trained == "True" else "--no-" + flag[2:]
    return f"{flag} {trained.strip(chr(39))}"


def peek_kind(path: str | Path) -> str | None:
    """The ``kind`` an rl_select artifact declares (unchecked; ``None`` for anything else). To dispatch on, then load
    with the class of that kind, which checks the whole file."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            doc = json.loads((f.metadata() or {}).get(METADATA_KEY, "{}"))
    except Exception:  # not a readable artifact: the real loader says why
        return None
    return doc.get("kind") if isinstance(doc, dict) else None


def qnet_document(qnet: CandidateQNet) -> dict[str, Any]:
    """The ``"qnet"`` entry of a document: the architecture that rebuilds ``qnet``."""
    return {"class": type(qnet).__name__, "state_dim": qnet.state_dim, "cand_dim": qnet.cand_dim,
            "hidden": list(qnet.hidden), "n_parameters": int(sum(p.numel() for p in qnet.parameters()))}


def qnet_from_document(
    arch: Any, tensors: Mapping[str, Tensor], *, where: str, error: type[ArtifactError] = ArtifactError,
) -> CandidateQNet:
    """A network built from a ``"qnet"`` entry, refusing any mismatch with the stored tensors.

    Raises:
        ArtifactError: A malformed architecture, tensors whose names or shapes it does not give, or
            tensors that are not floating point.
    """
    ok = isinstance(arch, dict) and arch.get("class", "CandidateQNet") == "CandidateQNet"
    ok = ok and is_int(arch.get("state_dim")) and is_int(arch.get("cand_dim"))
    ok = ok and isinstance(arch.get("hidden"), list) and all(is_int(h) for h in arch["hidden"])
    if not ok:
        raise error(f"{where}: q-net architecture {arch!r:.200} is malformed; expected {{'class': 'CandidateQNet', "
                    "'state_dim': int, 'cand_dim': int, 'hidden': [int, ...]}")
    try:
        qnet = CandidateQNet(arch["state_dim"], arch["cand_dim"], tuple(arch["hidden"]))
    except ValueError as exc:
        raise error(f"{where}: {exc}") from None
    expected = {name: tuple(t.shape) for name, t in qnet.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    if expected != found:
        diff = sorted(set(expected) ^ set(found)) or [n for n in sorted(expected) if expected[n] != found[n]]
        name = diff[0]
        raise error(f"{where}: the metadata's architecture (hidden={arch['hidden']}) does not match the stored tensors "
                    f"({name!r}: file has {found.get(name, 'nothing')}, architecture expects "
                    f"{expected.get(name, 'nothing')})")
    bad = [name for name, t in tensors.items() if not t.is_floating_point()]
    if bad:
        raise error(f"{where}: tensors {bad} are not floating point; expected float weights")
    qnet.load_state_dict(dict(tensors), strict=True)
    return qnet.eval()

