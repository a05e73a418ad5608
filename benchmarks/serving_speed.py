"""Scoring speed under the real azmlinfsrv: serving/code/score.py against two baselines.

Servers with one worker each (``WORKER_COUNT=1``, otherwise deployment.yml's settings) on
loopback ports, timed by one client in a bounded loop (``http.client``, a persistent client:
the local server's threaded workers keep its connection open; under azmlinfsrv's own sync
workers, as deployed, set ``GUNICORN_CMD_ARGS="--worker-class sync --threads 1"``, every request
pays a loopback TCP connect, for every scorer alike). score.py and the empty floor run side by
side and are timed
round-robin, one request to each in turn, so that both see the same load on a shared machine;
the naive scorer runs afterwards on its own:

- **score.py**: this project's scoring script;
- **naive**: the scoring script most samples ship (``model.predict`` per request,
  ``benchmarks/serving_baselines/naive_score.py``);
- **empty**: a ``run()`` that does nothing, the floor the server itself sets
  (``benchmarks/serving_baselines/empty_score.py``).

Measured for each: single-image requests per second, their p50 and p99 latency, and images
per second in requests of 256. The images are real MNIST test digits when MNIST is available.

Then the two request formats at batch 256, on servers of their own, round-robin: score.py with
a JSON body, with a ``.npy`` body (``Content-Type: application/x-npy``, float32 and uint8),
and **JSON before**, score.py reading JSON as it did before issue 12 (body and parser,
``benchmarks/serving_baselines/json_before_score.py``), today's JSON figure measured in the
same run; images/s from each one's median request. Goals: JSON >= 1.5x and npy >= 5x that
figure.

Then the worker itself, each server started on its own, in turn, ``--startups`` times: the
time until the health route answers (interpreter, imports, ``init()``), and the gunicorn
worker's resident memory (VmRSS from /proc) after a few single-image and batch requests, for
score.py on ONNX Runtime (the model folder's ``data/model.onnx``), score.py on TensorFlow (the
same folder without it: the fallback, and the worker before issue 12) and the empty scorer.

    MNIST_DATA_DIR=../shared/data/mnist python -m benchmarks.serving_speed [--model-dir outputs]

Goals: >= 10x the naive scorer's single-image throughput, p99 < 5 ms, >= 0.85x the empty
run()'s single-image throughput, a worker of at most 300 MB that is ready within 2x the empty
scorer's start.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scripts.endpoints import specs
from scripts.endpoints.local_server import SCORE_SCRIPT, LocalServer
from serving.code.predictor import find_model_dir

ROOT = Path(__file__).resolve().parents[1]
BASELINES = Path(__file__).resolve().parent / "serving_baselines"
SCORERS = {
    "score.py": SCORE_SCRIPT,
    "naive": BASELINES / "naive_score.py",
    "empty": BASELINES / "empty_score.py",
    "json-before": BASELINES / "json_before_score.py",
}
BATCH = 256
ONNX_FILES = ("data/model.onnx", "data/onnx_probe.npz")  # what the TensorFlow copy leaves out
JSON_TYPE = "application/json"
NPY_TYPE = "application/x-npy"


@dataclass
class Result:
    name: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    images_per_s: float
    single_requests: int
    batch_requests: int


def _images(n: int) -> tuple[np.ndarray, str]:
    """``n`` images scaled to [0, 1]: MNIST test digits if available, else random pixels."""
    from training.data import COLS, ROWS, load_mnist

    if os.environ.get("MNIST_DATA_DIR"):
        return load_mnist().x_test[:n].reshape(n, -1) / 255.0, "MNIST test digits"
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (n, ROWS * COLS)) / 255.0
    return pixels, "random pixels (MNIST_DATA_DIR not set)"


def _model_dir(requested: str | None, work: Path) -> Path:
    """The model to serve: --model-dir, ./outputs, or a 1-epoch training run made here."""
    for candidate in (requested, "outputs"):
        if candidate and Path(candidate).is_dir():
            model = find_model_dir(candidate)
            return model.parent  # the folder above model/, as every scorer here expects
    if requested:
        sys.exit(f"--model-dir {requested} does not exist")
    out = work / "trained"
    print("No model given and none in ./outputs: training one epoch first...", flush=True)
    subprocess.run(
        [sys.executable, "-m", "training.train", "--epochs", "1", "--output-dir", str(out)],
        cwd=ROOT,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"},
        check=True,
    )
    return out


class Client:
    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def post(self, body: bytes, content_type: str = JSON_TYPE) -> float:
        """Seconds for one request, from send to the last byte of the answer."""
        headers = {"Content-Type": content_type}
        started = time.perf_counter()
        try:
            self.conn.request("POST", "/score", body, headers)
            response = self.conn.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            # The server closed the kept-alive connection while it sat idle: reconnect once.
            self.conn.close()
            started = time.perf_counter()
            self.conn.request("POST", "/score", body, headers)
            response = self.conn.getresponse()
        data = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:300]!r}")
        if response.will_close:
            self.conn.close()  # reconnects on the next request
        return elapsed


def _round_robin(
    clients: dict[str, Client], body: bytes, caps: dict[str, int], max_seconds: float
) -> dict[str, list[float]]:
    """Time requests to every server in turn, so that they all see the same machine load.

    Each round sends one request to each server that is under its cap (in a rotating order);
    the loop ends when every cap is reached or the time is up.
    """
    times: dict[str, list[float]] = {name: [] for name in clients}
    names = list(clients)
    deadline = time.perf_counter() + max_seconds
    round_ = 0
    while time.perf_counter() < deadline:
        due = [n for n in names if len(times[n]) < caps[n]]
        if not due:
            break
        shift = round_ % len(due)
        for name in due[shift:] + due[:shift]:
            times[name].append(clients[name].post(body))
        round_ += 1
    return times


def _result(name: str, singles: list[float], batches: list[float]) -> Result:
    ordered = sorted(singles)
    return Result(
        name,
        requests_per_s=len(singles) / sum(singles),
        p50_ms=statistics.median(singles) * 1e3,
        p99_ms=ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3,
        images_per_s=BATCH * len(batches) / sum(batches),
        single_requests=len(singles),
        batch_requests=len(batches),
    )


def _one_worker() -> dict[str, str]:
    """deployment.yml's server settings with one worker: each server is timed alone."""
    return {**specs.server_settings(), "WORKER_COUNT": "1"}


@contextlib.contextmanager
def _serving(
    names: list[str], model_dir: Path, log_dir: Path, prefix: str = ""
) -> Iterator[dict[str, Client]]:
    """One-worker servers of these scorers side by side on loopback, a client for each; all
    are stopped (by their own PIDs) when the block ends, however it ends."""
    settings = _one_worker()
    servers = {
        name: LocalServer(
            model_dir=model_dir,
            settings=settings,
            log_path=log_dir / f"{prefix}{SCORERS[name].stem}.log",
            entry_script=SCORERS[name],
        )
        for name in names
    }
    try:
        for server in servers.values():
            server.start()
        yield {name: Client(server.port) for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()


def _measure(
    names: list[str],
    model_dir: Path,
    single: bytes,
    batch: bytes,
    args: argparse.Namespace,
    log_dir: Path,
) -> dict[str, Result]:
    """Start these servers side by side, warm them up, then time them round-robin."""
    with _serving(names, model_dir, log_dir) as clients:
        _round_robin(clients, single, dict.fromkeys(clients, args.warmup), 120)
        _round_robin(clients, batch, dict.fromkeys(clients, 3), 120)
        caps = {name: args.naive_requests if name == "naive" else args.requests for name in names}
        singles = _round_robin(clients, single, caps, args.seconds)
        batches = _round_robin(
            clients, batch, dict.fromkeys(names, args.batch_requests), args.seconds
        )
    return {name: _result(name, singles[name], batches[name]) for name in names}


def measure(
    model_dir: Path, single: bytes, batch: bytes, args: argparse.Namespace, log_dir: Path
) -> dict[str, Result]:
    """score.py and the empty floor side by side (the ratio that needs the same conditions),
    then the naive scorer on its own (its busy Keras threads would slow the others down)."""
    results = _measure(["score.py", "empty"], model_dir, single, batch, args, log_dir)
    results.update(_measure(["naive"], model_dir, single, batch, args, log_dir))
    return {name: results[name] for name in ("score.py", "naive", "empty")}


@dataclass
class Start:
    """One scorer's worker, started on its own: seconds until healthy, MB resident after use."""

    ready_s: list[float]
    rss_mb: list[float]


def worker_rss_mb(server: LocalServer) -> float:
    """The resident memory (VmRSS) of the server's one gunicorn worker, from /proc: the worker
    is the child of the azmlinfsrv (gunicorn master) process."""
    assert server.process is not None
    pid = server.process.pid
    (worker,) = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for line in Path(f"/proc/{worker}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for the worker {worker}")


def without_onnx(model_dir: Path, work: Path) -> Path:
    """A copy of the training output's model folder without its ONNX files: served by
    TensorFlow, as a model trained without tf2onnx is (and as every model was before)."""
    copy = work / "tensorflow-only"
    model = find_model_dir(model_dir)
    shutil.copytree(model, copy / model.name)
    for name in ONNX_FILES:
        (copy / model.name / name).unlink(missing_ok=True)
    return copy


def measure_starts(
    servers: dict[str, tuple[Path, Path]],
    single: bytes,
    batch: bytes,
    rounds: int,
    log_dir: Path,
) -> dict[str, Start]:
    """Start each server (label -> entry script, model folder) on its own, in a rotating order
    for ``rounds`` rounds: its time to healthy, then its worker's RSS after 20 single-image
    requests and 3 batches."""
    settings = _one_worker()
    starts = {label: Start([], []) for label in servers}
    labels = list(servers)
    for round_ in range(rounds):
        shift = round_ % len(labels)
        for label in labels[shift:] + labels[:shift]:
            script, model_dir = servers[label]
            server = LocalServer(
                model_dir=model_dir,
                settings=settings,
                log_path=log_dir / f"start-{label.replace(' ', '-')}.log",
                entry_script=script,
            )
            try:
                server.start(timeout=240)
                client = Client(server.port)
                for body in [single] * 20 + [batch] * 3:
                    client.post(body)
                starts[label].rss_mb.append(worker_rss_mb(server))
            finally:
                server.stop()
            assert server.startup_seconds is not None
            starts[label].ready_s.append(server.startup_seconds)
    return starts


def start_goals(starts: dict[str, Start]) -> list[tuple[str, bool]]:
    """Print each worker's start and memory (medians); the goals for score.py's."""
    print(f"\nworker, each started on its own ({len(starts['empty'].ready_s)} times, medians):")
    print(f"  {'scorer':<26} {'ready s':>8} {'worker RSS MB':>14}")
    for label, start in starts.items():
        ready, rss = statistics.median(start.ready_s), statistics.median(start.rss_mb)
        print(f"  {label:<26} {ready:>8.2f} {rss:>14.0f}")
    ours, empty = starts["score.py"], starts["empty"]
    rss = max(ours.rss_mb)
    ratio = statistics.median(ours.ready_s) / statistics.median(empty.ready_s)
    return [
        (f"worker RSS after use: {rss:.0f} MB, the largest of {len(ours.rss_mb)} starts "
         "(goal <= 300 MB)", rss <= 300),
        (f"ready (health route answers) {ratio:.2f}x the empty scorer's start (goal <= 2x)",
         ratio <= 2),
    ]  # fmt: skip


@dataclass(frozen=True)
class BatchTarget:
    """One way of sending the batch: to which server, as which bytes."""

    server: str
    body: bytes
    content_type: str


def batch_targets(images: np.ndarray) -> dict[str, BatchTarget]:
    """The batch as JSON (to score.py and to the JSON-before baseline) and as .npy bodies."""

    def npy(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return buffer.getvalue()

    json_body = json.dumps({"data": images.tolist()}).encode()
    pixels = np.rint(images * 255).astype(np.uint8)  # the digits' own 0-255 values
    return {
        "JSON before": BatchTarget("json-before", json_body, JSON_TYPE),
        "JSON": BatchTarget("score.py", json_body, JSON_TYPE),
        "npy float32": BatchTarget("score.py", npy(images.astype(np.float32)), NPY_TYPE),
        "npy uint8": BatchTarget("score.py", npy(pixels), NPY_TYPE),
    }


def measure_formats(
    model_dir: Path, targets: dict[str, BatchTarget], args: argparse.Namespace, log_dir: Path
) -> dict[str, float]:
    """Images/s at batch 256 for each target, timed round-robin (one request to each in turn)
    on two one-worker servers: score.py and the JSON-before baseline. From the median request
    time: on a shared machine a burst of another process's work lands on a few requests,
    whichever format they happen to carry (one such burst halved a mean over 40 requests)."""
    times: dict[str, list[float]] = {label: [] for label in targets}
    names = sorted({target.server for target in targets.values()})
    with _serving(names, model_dir, log_dir, prefix="formats-") as clients:
        labels = list(targets)
        deadline = time.perf_counter() + args.seconds
        for round_ in range(3 + args.batch_requests):  # the first 3 rounds warm up
            if time.perf_counter() > deadline:
                break
            shift = round_ % len(labels)
            for label in labels[shift:] + labels[:shift]:
                target = targets[label]
                elapsed = clients[target.server].post(target.body, target.content_type)
                if round_ >= 3:
                    times[label].append(elapsed)
    return {label: BATCH / statistics.median(t) for label, t in times.items() if t}


def format_goals(
    rates: dict[str, float], targets: dict[str, BatchTarget]
) -> list[tuple[str, bool]]:
    """Print each format's images/s against today's JSON; the goals, met or not."""
    base = rates["JSON before"]
    print(f"\nbatch of {BATCH}, each format (round-robin, median request; ratio vs JSON before):")
    for label, rate in rates.items():
        size = len(targets[label].body)
        print(f"  {label:<12} {rate:>10.0f} images/s {rate / base:>6.2f}x  ({size:,} bytes)")
    json_ratio = rates["JSON"] / base
    npy_ratio = min(rates["npy float32"], rates["npy uint8"]) / base
    return [
        (f"JSON images/s at batch {BATCH} vs before: {json_ratio:.2f}x (goal >= 1.5x)",
         json_ratio >= 1.5),
        (f"npy images/s at batch {BATCH} (the slower dtype) vs JSON before: {npy_ratio:.1f}x "
         "(goal >= 5x)", npy_ratio >= 5),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", help="training output folder (default: ./outputs)")
    parser.add_argument("--requests", type=int, default=3000, help="single-image requests cap")
    parser.add_argument("--naive-requests", type=int, default=300, help="the same, naive scorer")
    parser.add_argument("--batch-requests", type=int, default=40, help="batch requests cap")
    parser.add_argument("--seconds", type=float, default=60.0, help="time cap per measurement")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--startups", type=int, default=3, help="starts of each worker timed")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="serving-speed-") as folder:
        work = Path(folder)
        model_dir = _model_dir(args.model_dir, work)
        images, source = _images(BATCH)
        single = json.dumps({"data": images[:1].tolist()}).encode()
        batch = json.dumps({"data": images.tolist()}).encode()
        print(
            f"Model {model_dir}; payload: {source}, {len(single)} bytes per single image, "
            f"{len(batch) / 1e6:.1f} MB per batch of {BATCH}; one worker per server.",
            flush=True,
        )
        results = measure(model_dir, single, batch, args, work)
        for r in results.values():
            print(f"  {r.name}: {r.single_requests} single-image and {r.batch_requests} batch "
                  "requests timed", flush=True)  # fmt: skip
        targets = batch_targets(images)
        rates = measure_formats(model_dir, targets, args, work)
        workers = {
            "score.py": (SCORE_SCRIPT, model_dir),
            "score.py on TensorFlow": (SCORE_SCRIPT, without_onnx(model_dir, work)),
            "empty": (SCORERS["empty"], model_dir),
        }
        starts = measure_starts(workers, single, batch, args.startups, work)

    print()
    print(f"{'scorer':<10} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'images/s @256':>14}")
    for r in results.values():
        print(
            f"{r.name:<10} {r.requests_per_s:>11.1f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
            f"{r.images_per_s:>14.0f}"
        )
    ours, naive, empty = results["score.py"], results["naive"], results["empty"]
    speedup = ours.requests_per_s / naive.requests_per_s
    floor = ours.requests_per_s / empty.requests_per_s
    goals = [
        (f"single-image throughput vs naive: {speedup:.1f}x (goal >= 10x)", speedup >= 10),
        (f"p99 latency: {ours.p99_ms:.2f} ms, the empty run()'s {empty.p99_ms:.2f} ms beside it "
         "(goal < 5 ms)", ours.p99_ms < 5),
        (f"single-image throughput vs the empty run() floor: {floor:.2f}x (goal >= 0.85x)",
         floor >= 0.85),
    ]  # fmt: skip
    print(
        f"batch of {BATCH}: {ours.images_per_s / naive.images_per_s:.1f}x the naive scorer's "
        f"images/s, {ours.images_per_s / BATCH:.1f} requests/s"
    )
    goals += format_goals(rates, targets)
    goals += start_goals(starts)
    for text, met in goals:
        print(f"{'PASS' if met else 'MISS'}  {text}")
    return 0 if all(met for _, met in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
