"""Start the real ``aipc serve`` in a subprocess on a free loopback port, and clients for it.

Imported by the test modules (a module is skipped when the serve extra or the clients are missing).

Every byte of these tests goes to 127.0.0.1; proxies from the environment are ignored.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="aipc serve needs the extra: pip install './core[serve]'")
pytest.importorskip("uvicorn", reason="aipc serve needs the extra: pip install './core[serve]'")
openai = pytest.importorskip("openai", reason="the serve tests drive the server with the openai client")
httpx = pytest.importorskip("httpx", reason="the serve tests send raw HTTP with httpx")

HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Server:
    """A running ``aipc serve``; its output goes to a log file the tests can read."""

    def __init__(self, args: list[str], log_path: Path, api_key: str | None = None, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.api_key = api_key
        self.log_path = log_path
        command = [sys.executable, "-m", "aipc", "serve", "--host", HOST, "--port", str(self.port), *args]
        if api_key:
            command += ["--api-key", api_key]
        self._log = open(log_path, "w")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "NO_PROXY": "*", **(env or {})},
                                        # Ctrl-C must work even when the tests run in the background
                                        # (`cmd &` ignores SIGINT, and children inherit that)
                                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"aipc serve exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.http().get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"aipc serve did not answer /health within {STARTUP_TIMEOUT_S} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def http(self, **kwargs) -> httpx.Client:
        """A raw HTTP client with the API key (pass headers={} to send none)."""
        kwargs.setdefault("headers", self.headers())
        kwargs.setdefault("timeout", 120)
        return httpx.Client(base_url=self.url, trust_env=False, **kwargs)

    def client(self, **kwargs) -> openai.OpenAI:
        """The official openai client, no retries (a 429 must reach the test)."""
        kwargs.setdefault("api_key", self.api_key or "unused")
        return openai.OpenAI(base_url=f"{self.url}/v1", max_retries=0, timeout=120,
                             http_client=openai.DefaultHttpxClient(trust_env=False), **kwargs)

    def health(self) -> dict:
        with self.http() as http:
            response = http.get("/health")
        assert response.status_code == 200, response.text
        return response.json()

    def model_status(self, model_id: str) -> dict:
        return self.health()["models"][model_id]

    def wait_for(self, predicate, timeout: float = 30.0, what: str = "condition") -> dict:
        """Poll /health until ``predicate(health)`` holds; return that health."""
        deadline = time.monotonic() + timeout
        while True:
            health = self.health()
            if predicate(health):
                return health
            if time.monotonic() > deadline:
                pytest.fail(f"{what} not reached within {timeout} s: {health}")
            time.sleep(0.1)

    def stop(self) -> int:
        """Ctrl-C, as a user would; kill if it does not stop in time. Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@contextmanager
def running_server(tmp_path_factory, *args: str, api_key: str | None = None, env: dict | None = None):
    log_path = tmp_path_factory.mktemp("serve") / "server.log"
    server = Server(list(args), log_path, api_key=api_key, env=env)
    try:
        yield server
    finally:
        server.stop()


def error_of(response) -> dict:
    """The OpenAI-style error object of a raw response, checked for shape."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"] and "\n" not in body["error"]["message"], body
    return body["error"]


def linked_model(tmp_path_factory, source: Path, name: str = "tiny-phi3") -> Path:
    """``source`` reached through a folder named ``name``: the model id the clients use."""
    link = tmp_path_factory.mktemp("models") / name
    link.symlink_to(source, target_is_directory=True)
    return link


def concurrently(call, refusal: type[BaseException], count: int = 6) -> tuple[list, list]:
    """Run ``call()`` from ``count`` threads at once; return (answers, the ``refusal`` errors)."""
    import threading

    results: list = []

    def one() -> None:
        try:
            results.append(call())
        except refusal as error:
            results.append(error)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == count
    return ([r for r in results if not isinstance(r, BaseException)],
            [r for r in results if isinstance(r, BaseException)])
