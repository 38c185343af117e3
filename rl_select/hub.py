"""Is the Hugging Face hub reachable? Answered in a few seconds, so a missing network fails fast.

Without a network the hub libraries retry every request with back-off (~25 s per file, ~50 s for a
model's tokenizer and weights) before they give up. The loaders (:func:`rl_select.data.load_hf`,
:func:`rl_select.lm.hf.load_causal_lm`) ask here first:

* :func:`offline_env` names the variable that asks for offline mode (``HF_HUB_OFFLINE=1``, ...), if any;
* otherwise :func:`hub_unreachable` sends one HTTP ``HEAD`` to the hub endpoint (``$HF_ENDPOINT``, else
  https://huggingface.co; through the environment's proxy, if any) with a hard time-out that a
  stalled DNS lookup cannot outlast;

and when either says "no", they load from the local cache only (``local_files_only=True``, or
:func:`forced_offline` for ``datasets``), which fails at once when nothing is cached. Users with a
network see no change: the probe is one quick request, then the ordinary hub loading.

Stdlib only, no ``rl_select`` imports: a bottom-layer module both ``rl_select.data`` and ``rl_select.lm``
may use.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

DEFAULT_ENDPOINT = "https://huggingface.co"
"""The hub, unless ``$HF_ENDPOINT`` names a mirror."""

PROBE_TIMEOUT_S = 3.0
"""Longest a reachability probe may take, DNS lookup included."""

_TRUE = frozenset({"1", "ON", "YES", "TRUE"})  # as huggingface_hub and datasets read these variables


def hub_endpoint() -> str:
    """``$HF_ENDPOINT`` if set, else https://huggingface.co (no trailing slash)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline_env(*, datasets: bool = False) -> str | None:
    """The environment setting that asks for offline mode, e.g. ``"HF_HUB_OFFLINE=1"``, or ``None``.

    Models: ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``. Datasets (``datasets=True``):
    ``HF_DATASETS_OFFLINE`` when it is set (``0`` turns offline mode off for datasets), else
    ``HF_HUB_OFFLINE``, as ``datasets`` itself decides.
    """
    names = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE") if datasets else ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    for name in names:
        value = os.environ.get(name)
        if value:
            if value.strip().upper() in _TRUE:
                return f"{name}={value}"
            if datasets and name == "HF_DATASETS_OFFLINE":
                return None
    return None


def hub_unreachable(endpoint: str | None = None, *, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """``None`` if the hub answers an HTTP ``HEAD`` within ``timeout`` seconds, else why it cannot be reached.

    The request goes through the proxy the environment names (``HTTPS_PROXY``, ``NO_PROXY``, ...), as
    the hub libraries' own would. It runs in a daemon thread that is waited for at most ``timeout``
    seconds, so a DNS resolver that hangs (``getaddrinfo`` has no time-out of its own) cannot stall the
    caller. Any HTTP answer (even 404) counts as reachable, and so does a TLS failure (the hub
    libraries may trust other certificates): only "no such host", "connection refused / reset" and
    silence count as unreachable, so a user with a network is never kept from the hub.

    Args:
        endpoint: The hub URL; default :func:`hub_endpoint`.
        timeout: Seconds to wait in all.

    Returns:
        ``None`` when reachable; otherwise one line naming the endpoint, e.g.
        ``"the Hugging Face hub at https://huggingface.co is unreachable (cannot resolve huggingface.co)"``.
    """
    endpoint = endpoint or hub_endpoint()
    parts = urlsplit(endpoint)
    try:
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:  # a port that is not a number
        valid = False
    if not valid:
        return f"HF_ENDPOINT {endpoint!r} is not an http(s) URL, so the Hugging Face hub is unreachable"
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
            outcome.append(None)
        except urllib.error.HTTPError:  # the server answered
            outcome.append(None)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, ssl.SSLError | ssl.CertificateError):
                outcome.append(None)  # something answered TLS; let the hub libraries judge the certificate
            elif isinstance(reason, socket.gaierror):
                outcome.append(f"cannot resolve {parts.hostname}")
            elif isinstance(reason, TimeoutError | socket.timeout):
                outcome.append(f"no answer within {timeout:g} s")
            elif isinstance(reason, OSError):
                outcome.append(reason.strerror or type(reason).__name__)
            else:
                outcome.append(str(reason) or type(reason).__name__)
        except Exception:  # an odd failure of the probe itself: let the hub libraries try
            outcome.append(None)

    thread = threading.Thread(target=attempt, name="rl-select-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    why = outcome[0] if outcome else f"no answer within {timeout:g} s"
    return None if why is None else f"the Hugging Face hub at {endpoint} is unreachable ({why})"


@contextmanager
def forced_offline() -> Iterator[None]:
    """Within the block, ``huggingface_hub`` and ``datasets`` (if imported) act as if ``HF_HUB_OFFLINE=1``.

    Both read the variable once, at import; this sets their module flags and restores them after.
    ``datasets.load_dataset`` then goes straight to its local cache (it has no per-call
    ``local_files_only``). Not thread-safe: meant for a loader's single call.
    """
    flags = [("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE"),
             ("datasets.config", "HF_DATASETS_OFFLINE")]
    saved = []
    for module_name, attr in flags:
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, attr):
            saved.append((module, attr, getattr(module, attr)))
            setattr(module, attr, True)
    try:
        yield
    finally:
        for module, attr, value in reversed(saved):
            setattr(module, attr, value)
