"""Loading a transformers causal LM on this machine: device, dtype (bf16 only where the CPU has it natively),
the hub offline or cached, the bundled SmolLM2, the weights' fingerprint and the context window."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from rl_select.errors import ModelError
from rl_select.hub import hub_unreachable, offline_env
from rl_select.lm.bundled import BUNDLED_ID, ensure_plain_copy, is_bundled


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``"auto"``: bf16 on CUDA and on CPUs with native bf16, else fp32. Also ``"bf16"``/``"fp32"``/``"fp16"``."""
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32,
             "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16}
    if dtype == "auto":
        fast = device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16())
        return torch.bfloat16 if fast else torch.float32
    if dtype not in names:
        raise ModelError(f"unknown dtype {dtype!r}; expected one of auto, bf16, fp32, fp16")
    return names[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    """``"bf16"``, ``"fp32"`` or ``"fp16"``: the config name of a torch dtype."""
    names = {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}
    if dtype not in names:
        raise ModelError(f"model dtype {dtype}; expected one of bf16, fp32, fp16")
    return names[dtype]


def load_causal_lm(model_id: str, *, dtype: str = "auto", device: str = "auto"):
    """Load ``(model, tokenizer)`` in eval mode: the bundled SmolLM2, a local folder or a hub id.

    Raises:
        ModelError: with one line naming the id when it cannot be loaded (no network, no such folder).
    """
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    source = str(ensure_plain_copy()) if is_bundled(model_id) else model_id
    # A hub id with offline asked for, or no network: the local cache only, at once (not after ~50 s of retries).
    on_disk = os.path.exists(source)
    offline = None if on_disk else offline_env()
    unreachable = None if on_disk or offline else hub_unreachable()
    local_only = bool(offline or unreachable)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        if local_only and not _in_hub_cache(model_id):
            why = f"{offline} is set" if offline else unreachable
            raise ModelError(
                f"cannot load model {model_id!r}: not a local folder nor cached, and {why}; expected a local folder, "
                f"{BUNDLED_ID!r} or hub access" + (f" (unset {offline.split('=')[0]})" if offline else "")
            ) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "" if os.path.isdir(model_id) else " (no such local folder; is the hub reachable?)"
        raise ModelError(
            f"cannot load model {model_id!r}{hint}: {first if len(first) <= 70 else first[:67] + '...'}; expected a "
            f"local folder, a hub id or {BUNDLED_ID!r}"
        ) from None
    model.to(dev).eval()
    return model, tokenizer


def _in_hub_cache(model_id: str) -> bool:
    """Whether the local hub cache holds this id's ``config.json`` (so a load failure is not just "not cached")."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(model_id, "config.json"), str)
    except Exception:  # a malformed id, an unreadable cache
        return False


def model_fingerprint(model: PreTrainedModel) -> str:
    """Content hash of a model: class, dtype, and every parameter's name, shape, sum and first values."""
    h = hashlib.sha256(type(model).__name__.encode())
    h.update(str(next(model.parameters()).dtype).encode())
    with torch.inference_mode():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            h.update(name.encode())
            h.update(str(tuple(p.shape)).encode())
            h.update(np.float64(flat.double().sum().item()).tobytes())
            h.update(flat[:32].double().cpu().numpy().tobytes())
    return h.hexdigest()[:24]


def context_window(model: PreTrainedModel, tokenizer) -> int:
    """Longest sequence the model accepts."""
    n = getattr(model.config, "max_position_embeddings", None)
    if n is None:
        n = getattr(tokenizer, "model_max_length", 2048)
    return int(min(n, 10**7))

