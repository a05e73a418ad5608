"""Signals to ``python -m scripts run``: every signal that ends the launcher first stops the
processes it started (their own process groups, grandchildren included), then the launcher
exits with 128 + the signal's number. Linux: the tests read the process tree from /proc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").is_file(), reason="reads the process tree from /proc (Linux)"
)

# The launcher as a shell would start it, whatever this test process ignores (nohup, `&`).
LAUNCHER = (
    "import runpy, signal, sys; "
    "signal.signal(signal.SIGINT, signal.default_int_handler); "
    "signal.signal(signal.SIGTERM, signal.SIG_DFL); "
    "signal.signal(signal.SIGHUP, signal.SIG_DFL); "
    "sys.argv[0] = 'scripts'; "
    "runpy.run_module('scripts', run_name='__main__', alter_sys=True)"
)

# Two TensorFlow workers whose command outlives any test: bash stays as each process's
# parent (`&&`), so a sleep is a grandchild of the launcher, in the worker's process group.
STALLED_SPEC = """\
$schema: https://azuremlschemas.azureedge.net/latest/commandJob.schema.json
type: command
command: sleep 300 && echo never
code: .
environment: azureml:stub@1
distribution:
  type: tensorflow
  worker_count: 2
"""


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # [state, ppid, pgrp, ...]


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` in the process tree now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found.update(kids)
        todo.extend(kids)
    return found


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"waited {seconds:.0f} s for {what}")
        time.sleep(0.2)


def start_launcher(tmp_path: Path, *argv: str) -> tuple[subprocess.Popen, Path, Path]:
    out, err = tmp_path / "launcher.out", tmp_path / "launcher.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, "run", *argv, "--outputs", str(tmp_path / "out")],
            cwd=ROOT,
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return process, out, err


def stop_and_check(process: subprocess.Popen, sig: int, grace: float) -> set[int]:
    """Send ``sig`` to the launcher alone; returns the processes it had started."""
    started = descendants(process.pid)
    process.send_signal(sig)
    try:
        status = process.wait(timeout=grace)
    finally:
        for pid in descendants(process.pid) | started:  # never leave the test's own orphans
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
    assert status == 128 + sig
    return started


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda sig: sig.name
)
def test_a_signal_to_run_stops_every_process_it_started(tmp_path: Path, sig: int) -> None:
    (tmp_path / "stalled.yml").write_text(STALLED_SPEC)
    process, out, err = start_launcher(tmp_path, str(tmp_path / "stalled.yml"), "--name", "s")
    try:
        # 2 workers, each bash with its sleep
        wait_for(lambda: len(descendants(process.pid)) >= 4, 60, "the workers to start")
    except AssertionError:
        process.kill()
        raise AssertionError(err.read_text()[-2000:]) from None
    started = stop_and_check(process, sig, grace=20)
    assert len(started) == 4
    left = [pid for pid in started if alive(pid)]
    assert left == [], f"{signal.Signals(sig).name} left processes running: {left}"
    name = signal.Signals(sig).name
    if sig == signal.SIGINT:
        assert "interrupted; stopping every process" in out.read_text()
        assert err.read_text().strip().endswith("interrupted")
    else:
        assert f"{name} received; stopping every process" in out.read_text()
        assert err.read_text().strip().endswith(f"stopped by {name}")
    assert "Traceback" not in err.read_text()


@pytest.mark.slow
def test_sigterm_stops_a_real_multi_worker_training_run(tmp_path: Path, mnist_dir: Path) -> None:
    spec = str(ROOT / "training" / "jobs" / "multi_worker.yml")
    sets = ["--set", "inputs.epochs=50", "--set", f"inputs.mnist={mnist_dir}"]
    process, out, err = start_launcher(tmp_path, spec, "--name", "long", *sets)

    def training() -> bool:  # the chief reports epoch 1: both workers are in epoch 2
        return process.poll() is not None or "[worker 0] epoch 1/50 " in out.read_text()

    wait_for(training, 240, "the first epoch")
    assert process.poll() is None, (out.read_text() + err.read_text())[-3000:]
    # TensorFlow's workers catch SIGTERM (preemption notice) and keep going: the launcher
    # gives them 10 s, then kills their process groups.
    began = time.monotonic()
    started = stop_and_check(process, signal.SIGTERM, grace=60)
    assert len(started) >= 2
    assert [pid for pid in started if alive(pid)] == []
    assert time.monotonic() - began < 30
    assert err.read_text().strip().endswith("stopped by SIGTERM")
    assert not (tmp_path / "out" / "long" / "run" / "model").exists()
