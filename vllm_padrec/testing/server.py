"""A ``vllm serve`` subprocess for GPU tests and benchmarks: start, wait until healthy, send raw requests, stop.

with VllmServer(target, ["--speculative-model", draft], log_path="serve.log") as server:
    status, body, seconds = server.post("/v1/recommendations", '{"history": ["1"]}')
    reply = server.post_json("/v1/completions", {"model": SERVED_NAME, "prompt": [1, 2], "max_tokens": 4})

``post`` answers every status (hostile clients); ``post_json`` raises ``urllib.error.HTTPError`` on an error
status (a well-formed request that fails is the benchmark's failure).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

SERVED_NAME = "padrec-target"
PLUGINS = "padrec,padrec_recommendations"  # the general plugin and the endpoint plugin (VLLM_PLUGINS)


class VllmServer:
    def __init__(
        self,
        model: str,
        args: list[str] = (),
        *,
        port: int = 8031,
        env: dict[str, str] | None = None,
        log_path: str | Path = "vllm_serve.log",
        startup_timeout: float = 600.0,
    ) -> None:
        self.command = ["vllm", "serve", model, "--port", str(port), "--served-model-name", SERVED_NAME, *args]
        self.env = {**os.environ, "VLLM_PLUGINS": PLUGINS, **(env or {})}
        self.base = f"http://127.0.0.1:{port}"
        self.port = port
        self.log_path = Path(log_path)
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    def __enter__(self) -> VllmServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        print("+", " ".join(self.command), flush=True)
        log = open(self.log_path, "w")
        started = time.time()
        self.process = subprocess.Popen(
            self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        deadline = started + self.startup_timeout
        while time.time() < deadline:
            if not self.alive():
                raise RuntimeError(f"vllm serve exited with code {self.process.returncode}; log: {self.log_path}")
            if self.healthy():
                self.startup_seconds = time.time() - started
                return
            time.sleep(2)
        self.stop()
        raise TimeoutError(f"vllm serve not healthy after {self.startup_timeout:.0f} s; log: {self.log_path}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self, timeout: float = 5.0) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/health", timeout=timeout) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException):
            return False

    def post(
        self, path: str, body: str | bytes, headers: dict[str, str] | None = None, timeout: float = 300.0
    ) -> tuple[int, dict | str, float]:
        """(status, JSON body or raw text, seconds) of one POST; HTTP errors are answers, not exceptions."""
        data = body.encode() if isinstance(body, str) else body
        request = urllib.request.Request(
            f"{self.base}{path}", data, {"Content-Type": "application/json", **(headers or {})}
        )
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        seconds = time.perf_counter() - started
        try:
            return status, json.loads(raw), seconds
        except ValueError:
            return status, raw.decode(errors="replace"), seconds

    def post_json(self, path: str, payload: dict, timeout: float = 120.0) -> dict:
        """The JSON answer to one POST of ``payload``; an HTTP error status raises ``urllib.error.HTTPError``
        (its body is ``error.read()``)."""
        request = urllib.request.Request(
            f"{self.base}{path}", json.dumps(payload).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


# The line vLLM's engine core logs once when it dies (v1/engine/core.py:1332, :2350); the server then
# answers every request with EngineDeadError ("EngineCore encountered an issue", v1/engine/exceptions.py).
ENGINE_DEATH_MARKER = "EngineCore encountered a fatal error"
ENGINE_DEAD_ANSWER = "EngineCore encountered an issue"


def engine_deaths(log: str) -> int:
    """How many times the engine died, by the server log."""
    return log.count(ENGINE_DEATH_MARKER)
