"""Build, or reuse, the pinned local Horovod virtualenv (Horovod 0.28.1 on TensorFlow 2.13).

Horovod has no wheels: pip compiles it against the TensorFlow already installed, and its
last release (0.28.1) compiles against TensorFlow 2.13 but not 2.21 (Keras 3). So it gets its own
virtualenv, separate from the project's ``.venv`` (TensorFlow 2.21, Keras 3)::

    make horovod-env                                # or:
    python3 training/environments/horovod/build_env.py [--print-python]

The environment lives in ``$HOROVOD_VENV`` (default ``~/.cache/tf-mnist-azureml/venv-horovod``:
outside the work tree, so every clone on a machine, CI's included, shares one build). It is
rebuilt only when its fingerprint changes: the SHA-256 of ``requirements.txt``, the Horovod
build flags below and the Python minor version, stored in the venv once a build has passed
its smoke test. A build takes 5-7 minutes on 2 cores; concurrent callers wait on a lock
instead of building twice. Installation runs in two steps because Horovod's build imports
TensorFlow: first every pin but Horovod, then Horovod with ``--no-build-isolation``.

Standard library only, so it runs with any Python 3 before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements.txt"
VENV_ENV = "HOROVOD_VENV"
PYTHON_ENV = "HOROVOD_PYTHON"
DEFAULT_VENV = Path.home() / ".cache" / "tf-mnist-azureml" / "venv-horovod"
STAMP = "horovod-env.sha256"
BUILD_LOG = "build.log"
SUPPORTED_PYTHONS = ((3, 11), (3, 10), (3, 9), (3, 8))  # what TensorFlow 2.13 has wheels for

# Local builds talk Gloo over TCP: no MPI library needed. (The Azure ML image, which has
# OpenMPI and CUDA, builds with MPI and NCCL: see the Dockerfile beside this file.)
BUILD_FLAGS = {
    "HOROVOD_WITH_TENSORFLOW": "1",
    "HOROVOD_WITH_GLOO": "1",
    "HOROVOD_WITHOUT_MPI": "1",
    "HOROVOD_WITHOUT_PYTORCH": "1",
    "HOROVOD_WITHOUT_MXNET": "1",
}
SMOKE_TEST = (
    "import horovod, horovod.tensorflow as hvd, tensorflow as tf; "
    "assert hvd.gloo_built(), 'Horovod was built without Gloo'; "
    "print('horovod', horovod.__version__, 'tensorflow', tf.__version__)"
)


class HorovodEnvError(Exception):
    """The Horovod environment cannot be built here; the message says what is missing."""


def requirement_lines(path: Path = REQUIREMENTS) -> tuple[list[str], list[str]]:
    """(every pin but Horovod, the Horovod pin): the two installation steps."""
    pins = [
        line.split("#", 1)[0].strip()
        for line in path.read_text().splitlines()
        if line.split("#", 1)[0].strip()
    ]
    horovod = [pin for pin in pins if pin.lower().startswith("horovod")]
    if len(horovod) != 1:
        raise HorovodEnvError(f"{path} must pin horovod exactly once (found {horovod}).")
    return [pin for pin in pins if pin not in horovod], horovod


def fingerprint(python_version: str, requirements: Path = REQUIREMENTS) -> str:
    """What the built environment depends on; any change triggers a rebuild."""
    digest = hashlib.sha256(requirements.read_bytes())
    digest.update(json.dumps({"flags": BUILD_FLAGS, "python": python_version}).encode())
    return digest.hexdigest()


def venv_location() -> Path:
    return Path(os.environ.get(VENV_ENV) or DEFAULT_VENV).expanduser()


def venv_python(location: Path) -> Path:
    return location / "bin" / "python"


def _probe(python: str) -> dict[str, str] | None:
    """Version and C header folder of an interpreter, or None if it does not run."""
    code = (
        "import json, sys, sysconfig; print(json.dumps({'version': '%d.%d' % "
        "sys.version_info[:2], 'include': sysconfig.get_paths()['include']}))"
    )
    try:
        result = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return json.loads(result.stdout)


def find_python() -> tuple[str, dict[str, str]]:
    """An interpreter TensorFlow 2.13 supports: $HOROVOD_PYTHON, else python3.11 ... 3.8."""
    supported = {f"{major}.{minor}" for major, minor in SUPPORTED_PYTHONS}
    chosen = os.environ.get(PYTHON_ENV)
    candidates = (
        [chosen]
        if chosen
        else [f"python{v}" for v in sorted(supported, reverse=True)] + [sys.executable]
    )
    for candidate in candidates:
        path = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
        info = _probe(path) if path else None
        if info and info["version"] in supported:
            return path, info
    raise HorovodEnvError(
        f"No Python that TensorFlow 2.13 supports ({', '.join(sorted(supported))}) was found"
        + (f" at {PYTHON_ENV}={chosen}" if chosen else " on PATH")
        + ". Install python3.11 (with its venv and dev packages, e.g. `apt-get install "
        f"python3.11-venv python3.11-dev`) or point {PYTHON_ENV} at one."
    )


def check_toolchain(python_info: dict[str, str]) -> None:
    """Fail early, naming what is missing, rather than minutes into a compiler log."""
    missing = []
    compiler = os.environ.get("CXX") or next(
        (c for c in ("c++", "g++", "clang++") if shutil.which(c)), None
    )
    if not compiler or not shutil.which(compiler.split()[0]):
        missing.append("a C++17 compiler (apt-get install g++)")
    if not shutil.which("make"):
        missing.append("make (apt-get install make)")
    if not (Path(python_info["include"]) / "Python.h").is_file():
        missing.append(
            f"the Python {python_info['version']} headers "
            f"(apt-get install python{python_info['version']}-dev)"
        )
    if missing:
        raise HorovodEnvError(
            "Cannot build Horovod on this machine: it compiles from source and needs "
            + "; ".join(missing)
            + ". CMake comes from the pinned requirements. Or train with tf.distribute "
            "(training/jobs/multi_worker.yml), which needs no build."
        )


def is_current(location: Path, python_version: str | None = None) -> bool:
    """Whether ``location`` holds a finished build of the current pins."""
    stamp = location / STAMP
    if not (stamp.is_file() and venv_python(location).exists()):
        return False
    version = python_version or (_probe(str(venv_python(location))) or {}).get("version")
    return version is not None and stamp.read_text().strip() == fingerprint(version)


def _run(command: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise HorovodEnvError(
            f"Building the Horovod environment failed at `{' '.join(command[:6])} ...` "
            f"(exit {code}). Last lines of {log}:\n{tail}"
        )


def build(location: Path, python: str, python_info: dict[str, str], say: Callable) -> None:
    """Create the venv at ``location`` from scratch and stamp it once it works."""
    check_toolchain(python_info)
    shutil.rmtree(location, ignore_errors=True)
    location.mkdir(parents=True)
    log = location / BUILD_LOG
    base, horovod = requirement_lines()
    say(
        f"Building the Horovod environment in {location} (Python {python_info['version']}, "
        f"{horovod[0]}): about 5-7 minutes on 2 cores. Log: {log}"
    )
    began = time.monotonic()
    # Console scripts (horovodrun) point at this path: a venv cannot be moved after, so it
    # is built in place and only the stamp, written last, marks it as usable.
    _run([python, "-m", "venv", str(location)], log)
    py = str(venv_python(location))
    _run([py, "-m", "pip", "install", "--no-input", *base], log)
    env = {
        **os.environ,
        **BUILD_FLAGS,
        "PATH": f"{location / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOROVOD_CMAKE": str(location / "bin" / "cmake"),  # the pinned CMake 3, not CMake 4
    }
    # --no-cache-dir: pip would otherwise reuse a Horovod wheel it built earlier against
    # whatever TensorFlow was installed then (Horovod has no wheels on PyPI, and pip's
    # cache key is the source archive alone), which breaks when the pins change.
    pip = [py, "-m", "pip", "install", "--no-input"]
    _run([*pip, "--no-cache-dir", "--no-build-isolation", *horovod], log, env)
    _run([py, "-c", SMOKE_TEST], log)
    (location / STAMP).write_text(fingerprint(python_info["version"]) + "\n")
    say(f"Horovod environment ready in {time.monotonic() - began:.0f} s: {py}")


def ensure(location: Path | None = None, say: Callable = print) -> Path:
    """The Horovod venv's python, building the venv first unless it is current."""
    location = venv_location() if location is None else location
    if is_current(location):
        return venv_python(location)
    python, info = find_python()
    location.parent.mkdir(parents=True, exist_ok=True)
    with open(location.with_name(location.name + ".lock"), "w") as lock:
        if not _try_lock(lock):
            say(f"Waiting for another build of {location} to finish...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_current(location, info["version"]):
            build(location, python, info, say)
    return venv_python(location)


def _try_lock(lock) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--print-python", action="store_true", help="print only the venv's python path"
    )
    args = parser.parse_args(argv)

    def say(message: str) -> None:
        print(message, file=sys.stderr if args.print_python else sys.stdout, flush=True)

    try:
        python = ensure(say=say)
    except HorovodEnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(python if args.print_python else f"Horovod environment: {python}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
