"""Safe artifacts: tensors in one safetensors file with a JSON document in its metadata (no pickle).

Shared by the exported :class:`~rl_select.policy.SelectorPolicy` and the agents' own save files.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor


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


def write_safetensors(path: str | Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> Path:
    """Write ``tensors`` (copied to contiguous CPU memory) and string ``metadata`` atomically.

    The file is written next to ``path`` under a temporary name and moved into place with
    ``os.replace``, so a crash never leaves a half-written artifact under ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(cpu, tmp, metadata=dict(metadata))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
