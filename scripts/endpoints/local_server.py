"""Run an entry script under the real ``azmlinfsrv`` on this machine (client side, not uploaded).

Used by ``python -m scripts serve``, the demo, the tests and the benchmark, so that all start the
server the same way: the same interpreter's ``azureml-inference-server-http``, the environment
variables of the deployment spec, a port of our choosing, and a wait on the health route
(``GET /`` answers only once every worker has finished ``init()``).

The server listens on the loopback interface (127.0.0.1) unless ``host`` says otherwise, with
threaded workers: both come from ``gunicorn_local.py``, passed to azmlinfsrv's gunicorn.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from scripts.endpoints.gunicorn_local import BIND_HOST_ENV, LOOPBACK

SCORE_SCRIPT = Path(__file__).resolve().parents[2] / "serving" / "code" / "score.py"
GUNICORN_CONFIG = Path(__file__).resolve().parent / "gunicorn_local.py"


class ServerError(Exception):
    """The server did not start (its log tail says why) or stopped unexpectedly."""


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command(entry_script: Path, port: int) -> list[str]:
    """``azmlinfsrv --entry_script ... --port ...`` from this interpreter's environment."""
    return [
        sys.executable,
        "-m",
        "azureml_inference_server_http",
        "--entry_script",
        str(entry_script),
        "--port",
        str(port),
    ]


def server_environment(
    model_dir: str | os.PathLike[str],
    settings: Mapping[str, str],
    base: Mapping[str, str],
    *,
    host: str = LOOPBACK,
) -> dict[str, str]:
    """The server's environment: ``base`` plus the deployment's settings and the model folder.

    Gunicorn reads ``gunicorn_local.py`` (bind ``host``, threaded workers). Its control socket
    is turned off: its default path is per user, and two local servers (a test run and a
    benchmark, say) would fight over it.
    """
    env = dict(base)
    env.update(settings)
    env["AZUREML_MODEL_DIR"] = str(Path(model_dir).resolve())
    env[BIND_HOST_ENV] = host
    extra = env.get("GUNICORN_CMD_ARGS", "")
    if "--no-control-socket" not in extra:
        extra = f"{extra} --no-control-socket"
    if "--config" not in extra and not extra.lstrip().startswith("-c"):
        extra = f"{extra} --config {GUNICORN_CONFIG}"
    env["GUNICORN_CMD_ARGS"] = extra.strip()
    return env


def client_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host``."""
    return LOOPBACK if host in ("", "0.0.0.0", "::") else host


def _healthy(port: int, timeout: float = 2.0, host: str = LOOPBACK) -> bool:
    try:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            return response.status == 200 and response.read() == b"Healthy"
        finally:
            conn.close()
    except OSError:
        return False


class LocalServer:
    """``azmlinfsrv`` in a subprocess on a loopback port (or ``host``); stops as a context manager.

    Output goes to ``log_path`` (read it with :meth:`log_tail`). ``startup_seconds`` is the
    time from start to the first healthy answer (interpreter, imports and ``init()`` of the
    first worker to finish, with the others booting alongside): what an endpoint's probes
    must wait for.
    """

    def __init__(
        self,
        *,
        model_dir: str | os.PathLike[str],
        settings: Mapping[str, str],
        log_path: str | os.PathLike[str],
        entry_script: str | os.PathLike[str] = SCORE_SCRIPT,
        port: int | None = None,
        base_env: Mapping[str, str] | None = None,
        host: str = LOOPBACK,
    ) -> None:
        self.entry_script = Path(entry_script).resolve()
        self.port = port or free_port()
        self.host = host
        self.log_path = Path(log_path)
        self.env = server_environment(
            model_dir, settings, os.environ if base_env is None else base_env, host=host
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://{client_host(self.host)}:{self.port}"

    def start(self, timeout: float = 120.0) -> LocalServer:
        """Start and wait until healthy; :class:`ServerError` with the log tail otherwise."""
        started = time.perf_counter()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                server_command(self.entry_script, self.port),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends the workers too
            )
        deadline = started + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"azmlinfsrv exited with status {self.process.returncode} before it was "
                    f"healthy. Its log ({self.log_path}) ends with:\n{self.log_tail()}"
                )
            if _healthy(self.port, host=client_host(self.host)):
                self.startup_seconds = time.perf_counter() - started
                return self
            time.sleep(0.2)
        self.stop()
        raise ServerError(
            f"azmlinfsrv was not healthy after {timeout:.0f} s. Its log ({self.log_path}) ends "
            f"with:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> int | None:
        """Stop the server (SIGTERM to its process group, SIGKILL if it lingers)."""
        process = self.process
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                return process.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        return process.poll()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
