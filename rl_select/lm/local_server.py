"""Start and stop a local llama-cpp-python OpenAI-compatible server (tests, benchmarks, quick trials).

``LlamaCppServer`` runs ``python -m llama_cpp.server`` (the ``server`` extra: ``pip install
'rl-select[server]'``) on ``127.0.0.1`` and a free port, serving a GGUF file (by default the bundled
SmolLM2) under a model alias, with ``logits_all`` on (prompt log-probs need it). Used as a context
manager it waits until ``/v1/models`` answers and stops the server on exit (SIGTERM, then SIGKILL).

Notes on that server, measured with llama-cpp-python 0.3.x (see ``docs/serving.md``): it takes one
prompt per request (a list gets HTTP 500); it returns next-token log-probs (the scorer's
``"next_token"`` style, chosen by ``"auto"`` for one-token labels: one request per query, and the
server reuses the previous prompt's KV cache for the shared demonstrations); it echoes prompt
log-probs one token late (the scorer detects this and corrects it, see :mod:`rl_select.lm.openai`), and
in echo it turns every prompt token's logits into sorted log-probs in Python, which makes it slow (tens
of tokens per second on 2 cores) whatever the model.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from rl_select.errors import ModelError
from rl_select.lm.bundled import bundled_gguf_path

DEFAULT_ALIAS = "smollm2"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaCppServer:
    """A llama-cpp-python server subprocess on 127.0.0.1.

    Args:
        model_path: GGUF file (default: the bundled SmolLM2's).
        alias: Model name the server answers to.
        port: Port (default: a free one).
        n_ctx: Context window in tokens.
        n_threads: CPU threads of the server.
        log_path: File for the server's stdout/stderr (default: discarded).
        startup_timeout: Seconds to wait for ``/v1/models``.
    """

    def __init__(self, model_path: str | os.PathLike | None = None, *, alias: str = DEFAULT_ALIAS,
                 port: int | None = None, n_ctx: int = 2048, n_threads: int | None = None,
                 log_path: str | os.PathLike | None = None, startup_timeout: float = 120.0) -> None:
        self.model_path = Path(model_path) if model_path is not None else bundled_gguf_path()
        self.alias = alias
        self.port = port or free_port()
        self.n_ctx = n_ctx
        self.n_threads = n_threads or max(1, os.cpu_count() or 1)
        self.log_path = Path(log_path) if log_path is not None else None
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def available() -> bool:
        """Whether ``llama_cpp.server`` can be imported here (the ``server`` extra is installed)."""
        import importlib.util

        return importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("uvicorn") is not None

    def start(self) -> LlamaCppServer:
        """Launch the server and wait until it answers.

        Raises:
            ModelError: the extra is missing, the server exits early, or does not answer in time.
        """
        if not self.available():
            raise ModelError("llama-cpp-python's server is not installed; expected pip install 'rl-select[server]'")
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_path), "--model_alias", self.alias,
               "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx), "--logits_all", "true",
               "--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads)]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if self.log_path:
                out.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ModelError(f"llama-cpp-python server exited with status {self.proc.returncode} while starting "
                                 f"(model {str(self.model_path)!r}); see {self.log_path or 'its log'}")
            try:
                with urllib.request.urlopen(self.url + "/v1/models", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.2)
        self.stop()
        raise ModelError(f"llama-cpp-python server did not answer on {self.url} within {self.startup_timeout:g}s")

    def kill(self) -> None:
        """SIGKILL the server at once (a crash, for fault tests)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> LlamaCppServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
