"""Start a job's processes on this machine the way Azure ML starts them on a cluster.

For ``distribution: type: tensorflow`` Azure ML runs one process per worker and per parameter
server and gives each a ``TF_CONFIG`` naming every task (``worker`` and ``ps``, no ``chief``,
and an empty ``"ps": []`` when there are none). Here each task is a local process on a free
loopback port (127.0.0.1, never every interface) with exactly that ``TF_CONFIG``. Output
lines are prefixed with the task name. If any process fails, the others are stopped and its
exit status is returned.

Every process starts in its own process group, so a signal to the terminal's group does not
reach it half-way: the launcher stops them itself. ``stop_on_signals`` turns SIGTERM and
SIGHUP into ``Stopped`` (and SIGINT into ``KeyboardInterrupt``) so that ``run_tasks`` stops
every process it started before the command exits (status 128 + the signal's number).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

LOOPBACK = "127.0.0.1"  # what every local task binds and is addressed by
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGHUP)


@dataclass
class Task:
    """One process of a job: its name (``worker 0``), command and extra environment."""

    name: str
    command: Sequence[str]
    env: dict[str, str] = field(default_factory=dict)


def free_ports(count: int) -> list[int]:
    """Ports free on loopback right now (held open together so that they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((LOOPBACK, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def azureml_tf_configs(worker_count: int, ps_count: int = 0) -> list[tuple[str, dict]]:
    """(task name, TF_CONFIG) for every process, in the form Azure ML writes."""
    ports = free_ports(worker_count + ps_count)
    cluster = {
        "worker": [f"{LOOPBACK}:{port}" for port in ports[:worker_count]],
        "ps": [f"{LOOPBACK}:{port}" for port in ports[worker_count:]],
    }
    tasks = [("worker", i) for i in range(worker_count)] + [("ps", i) for i in range(ps_count)]
    return [
        (
            f"{role} {index}",
            {"cluster": cluster, "task": {"type": role, "index": index}, "environment": "cloud"},
        )
        for role, index in tasks
    ]


def tensorflow_tasks(command: Sequence[str], worker_count: int, ps_count: int = 0) -> list[Task]:
    """The processes of a ``type: tensorflow`` job, each with its TF_CONFIG."""
    return [
        Task(name, command, {"TF_CONFIG": json.dumps(config)})
        for name, config in azureml_tf_configs(worker_count, ps_count)
    ]


class Stopped(BaseException):
    """A signal (SIGTERM, SIGHUP) asked the command to stop; unwinds like ``KeyboardInterrupt``."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_status(self) -> int:
        """128 + the signal's number, as a shell reports a process the signal ended."""
        return 128 + self.signum


class _SignalGuard:
    """Turns the first stop signal into an exception, deferred while ``held`` (so a process
    is never started without being recorded, and never left half-stopped); later signals are
    ignored while the command unwinds, whose stops are bounded in time."""

    def __init__(self) -> None:
        self.held = 0
        self.pending: int | None = None
        self.raised = False

    def handle(self, signum: int, frame: Any) -> None:
        if self.raised:
            return
        if self.held:
            self.pending = signum
            return
        self._raise(signum)

    def _raise(self, signum: int) -> None:
        self.raised = True
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Stopped(signum)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        self.held += 1
        try:
            yield
        finally:
            self.held -= 1
            if not self.held and self.pending is not None and not self.raised:
                signum, self.pending = self.pending, None
                self._raise(signum)


_GUARD = _SignalGuard()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM/SIGHUP raise ``Stopped`` and SIGINT ``KeyboardInterrupt``.

    A signal this process was told to ignore (``nohup``) stays ignored. Outside the main
    thread, where Python cannot set handlers, nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _GUARD
    _GUARD = _SignalGuard()
    previous = {}
    for sig in (*STOP_SIGNALS, signal.SIGINT):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, _GUARD.handle)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _pump(name: str, stream, sink) -> None:
    for line in iter(stream.readline, ""):
        sink.write(f"[{name}] {line}" if name else line)
        sink.flush()
    stream.close()


def run_tasks(
    tasks: Sequence[Task],
    *,
    cwd: str | os.PathLike[str] | None = None,
    base_env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    sink=None,
) -> int:
    """Run every task to completion; the first failure stops the rest and is returned.

    Returns 0 when all exit 0, the failing exit status otherwise, 124 on timeout. On
    ``KeyboardInterrupt`` or ``Stopped`` every process is stopped before it propagates.
    """
    sink = sink or sys.stdout
    env_base = dict(os.environ if base_env is None else base_env)
    env_base.setdefault("PYTHONUNBUFFERED", "1")
    processes: list[tuple[Task, subprocess.Popen]] = []
    pumps = []
    prefix = len(tasks) > 1
    try:
        for task in tasks:
            with _GUARD.hold():  # a signal here waits until the process is on the list
                process = subprocess.Popen(
                    list(task.command),
                    cwd=cwd,
                    env={**env_base, **task.env},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,  # so that stopping a task stops its children too
                )
                processes.append((task, process))
            pump = threading.Thread(
                target=_pump, args=(task.name if prefix else "", process.stdout, sink), daemon=True
            )
            pump.start()
            pumps.append(pump)
        return _wait(processes, timeout, sink)
    except (KeyboardInterrupt, Stopped) as exc:
        why = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{exc} received"
        sink.write(f"{why}; stopping every process\n")
        raise
    finally:
        with _GUARD.hold():
            _stop(process for _, process in processes)
            for pump in pumps:
                pump.join(timeout=5)


def _wait(processes: Sequence[tuple[Task, subprocess.Popen]], timeout: float | None, sink) -> int:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        codes = [process.poll() for _, process in processes]
        failed = [
            (task, code)
            for (task, _), code in zip(processes, codes, strict=True)
            if code not in (None, 0)
        ]
        if failed:
            task, code = failed[0]
            sink.write(f"{task.name} failed with exit status {code}; stopping the others\n")
            return code
        if all(code == 0 for code in codes):
            return 0
        if deadline is not None and time.monotonic() > deadline:
            sink.write(f"timed out after {timeout:g} s; stopping every process\n")
            return 124
        time.sleep(0.2)


def _stop(processes) -> None:
    running = [p for p in processes if p.poll() is None]
    for process in running:
        _signal_group(process, signal.SIGTERM)
    end = time.monotonic() + 10
    for process in running:
        try:
            process.wait(timeout=max(end - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
