"""Concurrency of the deployed scoring configuration: 1, 2 and 4 clients against azmlinfsrv.

The server is serving/code/score.py (whatever scorer it is today) under the real ``azmlinfsrv``
with the deployment's own settings: the environment variables of serving/deployment.yml
(``specs.server_settings()``, as ``python -m scripts serve`` reads them: WORKER_COUNT, the
thread and timeout variables), optionally changed with ``--set NAME=VALUE``, on 127.0.0.1.
The workers are azmlinfsrv's own gunicorn *sync* workers, as on the endpoint (one request per
worker at a time, a new connection per request), unless the configuration sets
``GUNICORN_CMD_ARGS`` itself (``--set GUNICORN_CMD_ARGS=--threads=2`` makes threaded workers,
as it would on Azure). ``python -m scripts serve`` uses threaded workers instead; this
benchmark measures what the endpoint runs.

Each level runs N client processes (each one ``http.client`` connection, kept alive when the
server allows it; ``--close``: a new one per request) that send single real MNIST test images
for ``--seconds`` (at most ``--max-requests`` each), then a shorter round of batches of 256
images. ``--compare NAME=VALUE[,NAME=VALUE]`` starts more servers beside the first, and every
level is cut into ``--rounds`` slices that the servers take in turn (rotating), so that all see
the same machine load. Printed per configuration and level: requests/s, p50, p99, errors
(non-200 answers, timeouts at the deployment's ``request_timeout_ms``, connection errors) and
the RSS of the gunicorn workers (sum and largest, read from /proc) after warm-up and after
each level, with ratios against the 1-client level and against the first configuration. Each
configuration's goals print PASS or FAIL (no errors, the worst p99 within a quarter of
``request_timeout_ms``, no memory growth, workers <= 300 MB); the exit status is 1 if one of
the first configuration's fails.

    MNIST_DATA_DIR=../shared/data/mnist python -m benchmarks.serving_concurrency \\
        --model-dir outputs [--set WORKER_COUNT=2] [--compare GUNICORN_CMD_ARGS=--threads=2]

Client and server share this machine's cores: with 2 cores the clients take CPU from the
workers, so the figures say how the configuration behaves under contention (queueing, errors,
memory), not what a 4-vCPU instance serves.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.endpoints import specs
from scripts.endpoints.local_server import LocalServer, ServerError

LEVELS = (1, 2, 4)
BATCH = 256
SYNC_WORKERS = "--worker-class sync --threads 1"  # azmlinfsrv's gunicorn defaults, as deployed
PROC = Path("/proc")
# Worker memory may move a little as allocators settle; more than this after the load is growth.
RSS_GROWTH_TOLERANCE = 0.05
RSS_GROWTH_FLOOR_BYTES = 16 << 20
# The slowest p99 (4 clients, batches included) must leave this factor to request_timeout_ms:
# Azure nodes can be slower than this machine, as specs.FULL_BATCH_SAFETY says for a batch.
TIMEOUT_MARGIN = 4.0
RSS_GOAL_BYTES = 300 << 20  # issue 12: a scoring worker without TensorFlow


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100): the smallest value with at least
    ``q`` percent of the values at or below it. NaN for no values."""
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} is outside (0, 100]")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


@dataclass
class ClientRun:
    """What one client process measured: seconds per successful request, and its errors."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0  # from the shared start to this client's last answer


@dataclass(frozen=True)
class Level:
    clients: int
    requests: int
    errors: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    error_samples: tuple[str, ...]


def aggregate(clients: int, slices: Iterable[Sequence[ClientRun]]) -> Level:
    """One level's figures from its slices: each slice is one timed run of all its clients,
    started together, and lasts as long as its slowest client; throughput is the successful
    requests of all slices over their summed time."""
    slices = [list(one) for one in slices]
    runs = [run for one in slices for run in one]
    latencies = [t for run in runs for t in run.latencies]
    errors = [e for run in runs for e in run.errors]
    wall = sum(max((run.seconds for run in one), default=0.0) for one in slices)
    return Level(
        clients=clients,
        requests=len(latencies),
        errors=len(errors),
        requests_per_s=len(latencies) / wall if wall > 0 else 0.0,
        p50_ms=percentile(latencies, 50) * 1e3,
        p99_ms=percentile(latencies, 99) * 1e3,
        error_samples=tuple(dict.fromkeys(errors))[:3],
    )


# --------------------------------------------------------------------------- worker memory


def parent_pid(stat_text: str) -> int:
    """The parent PID from a /proc/<pid>/stat line. The command name (field 2) is in
    parentheses and may hold spaces or parentheses itself, so fields are counted after its
    last ')'."""
    return int(stat_text.rsplit(")", 1)[1].split()[1])


def rss_bytes(status_text: str) -> int:
    """Resident memory from a /proc/<pid>/status text (its ``VmRSS:  N kB`` line)."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            if unit != "kB":
                raise ValueError(f"unexpected VmRSS unit {unit!r}")
            return int(value) * 1024
    raise ValueError("no VmRSS line (a kernel thread, or a process that has exited)")


def child_pids(pid: int, proc: Path = PROC) -> list[int]:
    """The live children of ``pid``: the gunicorn workers of a master."""
    children = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if parent_pid((entry / "stat").read_text()) == pid:
                children.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not a process entry
    return sorted(children)


@dataclass(frozen=True)
class Memory:
    rss: dict[int, int]  # worker PID -> bytes

    @property
    def total(self) -> int:
        return sum(self.rss.values())

    @property
    def largest(self) -> int:
        return max(self.rss.values(), default=0)

    def describe(self) -> str:
        return (
            f"{len(self.rss)} workers, {self.total / 2**20:.0f} MB (max {self.largest / 2**20:.0f})"
        )


def worker_memory(master: int, proc: Path = PROC) -> Memory:
    """RSS of each worker of the gunicorn master ``master``."""
    rss = {}
    for pid in child_pids(master, proc):
        try:
            rss[pid] = rss_bytes((proc / str(pid) / "status").read_text())
        except (OSError, ValueError):
            continue
    return Memory(rss)


def memory_grew(before: Memory, after: Memory) -> bool:
    """More resident memory after the load than before, beyond the tolerance."""
    allowed = max(RSS_GROWTH_FLOOR_BYTES, RSS_GROWTH_TOLERANCE * before.total)
    return after.total - before.total > allowed


# --------------------------------------------------------------------------- configuration


def parse_overrides(pairs: Sequence[str]) -> dict[str, str]:
    """``NAME=VALUE`` strings as a mapping; ValueError says what is wrong with a malformed one."""
    overrides = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not name.replace("_", "").isalnum():
            raise ValueError(
                f"--set {pair!r} must be NAME=VALUE, an environment variable name and its "
                "value, e.g. --set WORKER_COUNT=2."
            )
        overrides[name] = value
    return overrides


def effective_settings(deployed: dict[str, str], overrides: dict[str, str]) -> dict[str, str]:
    """The server's variables: the deployment's, the overrides, and sync workers as deployed
    (gunicorn arguments the configuration sets itself come after, so they win)."""
    settings = {**deployed, **overrides}
    own = settings.get("GUNICORN_CMD_ARGS", "")
    settings["GUNICORN_CMD_ARGS"] = f"{SYNC_WORKERS} {own}".strip()
    return settings


def deployment_problems(overrides: dict[str, str], startup_seconds: float | None) -> list[str]:
    """specs.check_deployment on deployment.yml with the overrides applied."""
    deployment = specs.load_deployment()
    deployment.environment_variables = {**deployment.environment_variables, **overrides}
    return specs.check_deployment(deployment, startup_seconds=startup_seconds)


# --------------------------------------------------------------------------- load


def request_bodies(count: int, batch: int) -> tuple[list[bytes], bytes]:
    """``count`` single-image JSON bodies (real MNIST test digits) and one batch body."""
    from training.data import load_mnist

    images = load_mnist().x_test[: max(count, batch)]
    flat = images.reshape(len(images), -1) / 255.0
    singles = [json.dumps({"data": flat[i : i + 1].tolist()}).encode() for i in range(count)]
    return singles, json.dumps({"data": flat[:batch].tolist()}).encode()


class Connection:
    """One client's connection, reopened whenever the server closes it (sync workers do after
    every answer)."""

    def __init__(self, port: int, timeout: float, close: bool = False) -> None:
        self.port = port
        self.timeout = timeout
        self.headers = {"Content-Type": "application/json"}
        if close:  # a caller (or front end) that opens a connection per request
            self.headers["Connection"] = "close"
        self.conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            self.conn.request("POST", "/score", body, self.headers)
            response = self.conn.getresponse()
            data = response.read()
        except BaseException:
            self.close()
            raise
        if response.will_close or "Connection" in self.headers:
            self.close()
        return response.status, data

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def client_loop(
    port: int,
    bodies: Sequence[bytes],
    offset: int,
    seconds: float,
    max_requests: int,
    timeout: float,
    close: bool = False,
) -> ClientRun:
    """Send the bodies in turn (from ``offset``) until the time or the count is used up;
    ``close``: a new connection for every request."""
    run = ClientRun()
    conn = Connection(port, timeout, close)
    started = time.perf_counter()
    deadline = started + seconds
    sent = 0
    while sent < max_requests and time.perf_counter() < deadline:
        body = bodies[(offset + sent) % len(bodies)]
        sent += 1
        begun = time.perf_counter()
        try:
            status, data = conn.post(body)
        except (OSError, http.client.HTTPException) as exc:  # timeouts are OSErrors
            run.errors.append(f"{type(exc).__name__}: {exc}")
            continue
        if status == 200:
            run.latencies.append(time.perf_counter() - begun)
        else:
            run.errors.append(f"HTTP {status}: {data[:120]!r}")
    conn.close()
    run.seconds = time.perf_counter() - started
    return run


def _client_process(barrier: Any, results: Any, index: int, args: tuple[Any, ...]) -> None:
    barrier.wait()
    results.put((index, client_loop(*args)))


def run_clients(
    clients: int,
    port: int,
    bodies: Sequence[bytes],
    seconds: float,
    max_requests: int,
    timeout: float,
    close: bool = False,
) -> list[ClientRun]:
    """``clients`` processes (the GIL would serialise threads) started together."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(clients)
    results = context.Queue()
    processes = [
        context.Process(
            target=_client_process,
            args=(
                barrier,
                results,
                i,
                (port, bodies, i * 97, seconds, max_requests, timeout, close),
            ),
            daemon=True,
        )
        for i in range(clients)
    ]
    for process in processes:
        process.start()
    runs = [results.get(timeout=seconds + timeout + 60)[1] for _ in processes]
    for process in processes:
        process.join(10)
    return runs


# --------------------------------------------------------------------------- configurations


@dataclass
class Config:
    """One server configuration under test and what was measured on it."""

    label: str
    overrides: dict[str, str]
    server: LocalServer
    before: Memory = Memory({})
    slices: dict[tuple[str, int], list[list[ClientRun]]] = field(default_factory=dict)
    memory: dict[tuple[str, int], Memory] = field(default_factory=dict)

    @property
    def master(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    def levels(self, kind: str, levels: Sequence[int]) -> list[Level]:
        return [aggregate(n, self.slices.get((kind, n), [])) for n in levels]


def parse_compare(text: str) -> dict[str, str]:
    """``NAME=VALUE,NAME=VALUE``: one more configuration to measure beside the first."""
    return parse_overrides([pair for pair in text.split(",") if pair])


def measure(
    configs: Sequence[Config],
    loads: dict[str, tuple[list[bytes], float, int]],
    args: argparse.Namespace,
) -> None:
    """Every level of every load on every configuration, interleaved: each level is cut into
    ``args.rounds`` slices, and the configurations take turns (in a rotating order), so that
    all of them see the same machine load."""
    timeout = args.request_timeout_ms / 1000
    top = max(args.levels)
    for config in configs:  # warm every worker (each takes connections in turn)
        for bodies, _, _ in loads.values():
            run_clients(top, config.server.port, bodies, 3.0, 20, timeout)
        config.before = worker_memory(config.master)
    for kind, (bodies, seconds, cap) in loads.items():
        for clients in args.levels:
            for round_ in range(args.rounds):
                shift = round_ % len(configs)
                for config in [*configs[shift:], *configs[:shift]]:
                    runs = run_clients(
                        clients,
                        config.server.port,
                        bodies,
                        seconds / args.rounds,
                        max(1, cap // args.rounds),
                        timeout,
                        args.close,
                    )
                    config.slices.setdefault((kind, clients), []).append(runs)
            for config in configs:
                config.memory[kind, clients] = worker_memory(config.master)


# --------------------------------------------------------------------------- report


def level_table(levels: Sequence[Level], memory: Sequence[Memory]) -> list[str]:
    base = levels[0]
    lines = [
        f"{'clients':>7} {'req/s':>8} {'x1':>6} {'p50 ms':>8} {'p99 ms':>8} {'p99 x1':>7} "
        f"{'requests':>9} {'errors':>7} {'worker RSS after, MB (max)':>27}",
    ]
    for level, mem in zip(levels, memory, strict=True):
        lines.append(
            f"{level.clients:>7} {level.requests_per_s:>8.1f} "
            f"{level.requests_per_s / base.requests_per_s if base.requests_per_s else 0:>5.2f}x "
            f"{level.p50_ms:>8.2f} {level.p99_ms:>8.2f} {level.p99_ms / base.p99_ms:>6.2f}x "
            f"{level.requests:>9} {level.errors:>7} "
            f"{mem.total / 2**20:>20.0f} ({mem.largest / 2**20:.0f})"
        )
        lines += [f"        error: {sample}" for sample in level.error_samples]
    return lines


def comparison(configs: Sequence[Config], kind: str, levels: Sequence[int]) -> list[str]:
    """Each configuration's req/s and p99 per level, as ratios of the first's."""
    first = configs[0].levels(kind, levels)
    lines = [f"{'configuration':<44} " + " ".join(f"{f'{n} client(s)':>26}" for n in levels)]
    for config in configs:
        cells = []
        for mine, base in zip(config.levels(kind, levels), first, strict=True):
            ratio = mine.requests_per_s / base.requests_per_s if base.requests_per_s else 0
            cells.append(f"{mine.requests_per_s:>7.1f}/s {ratio:4.2f}x p99 {mine.p99_ms:6.1f}")
        lines.append(f"{config.label[:44]:<44} " + " ".join(f"{c:>26}" for c in cells))
    return lines


def goals(
    levels: Sequence[Level],
    batches: Sequence[Level],
    before: Memory,
    after: Memory,
    request_timeout_ms: int,
) -> list[tuple[str, bool]]:
    """Pass or fail for one configuration. Throughput scaling is printed, not judged: here the
    clients take the server's cores, so more clients can lower it on a busy machine."""
    every = [*levels, *batches]
    errors = sum(level.errors for level in every)
    worst = max(every, key=lambda level: level.p99_ms)
    budget = request_timeout_ms / TIMEOUT_MARGIN
    same_workers = set(before.rss) == set(after.rss)
    return [
        (f"errors at every level: {errors} (goal 0)", errors == 0),
        (
            f"worst p99 {worst.p99_ms:.0f} ms ({worst.clients} clients"
            f"{', batches' if worst in batches else ''}) within request_timeout_ms "
            f"{request_timeout_ms} / {TIMEOUT_MARGIN:g} = {budget:.0f} ms",
            worst.p99_ms <= budget,
        ),
        (
            f"worker memory after the load: {after.describe()}, before {before.describe()} "
            f"(goal: no growth beyond {RSS_GROWTH_TOLERANCE:.0%}, same worker processes)",
            same_workers and not memory_grew(before, after),
        ),
        (
            f"largest worker RSS {after.largest / 2**20:.0f} MB (issue 12 goal <= "
            f"{RSS_GOAL_BYTES >> 20} MB)",
            0 < after.largest <= RSS_GOAL_BYTES,
        ),
    ]


def worker_kind(server: LocalServer) -> str:
    """Gunicorn's own line naming its worker class, from the server log."""
    for line in server.log_tail(400).splitlines():
        if "Using worker:" in line:
            return "gunicorn " + line.split("Using worker:", 1)[1].strip() + " workers"
    return "worker class not in the log"


def _describe_machine() -> str:
    cores = len(os.sched_getaffinity(0))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{cores} cores here, shared by the clients and the servers; load average {load}"


def report(config: Config, args: argparse.Namespace, kinds: Sequence[str]) -> bool:
    """Print one configuration's tables and goals; True when every goal is met."""
    after = worker_memory(config.master)
    print(
        f"\n=== {config.label}: started in {config.server.startup_seconds:.1f} s; "
        f"worker RSS after warm-up: {config.before.describe()}"
    )
    tables = {}
    for kind in kinds:
        tables[kind] = config.levels(kind, args.levels)
        memory = [config.memory[kind, n] for n in args.levels]
        print(f"{KINDS[kind]}:")
        print("\n".join(level_table(tables[kind], memory)))
    if "batch" in tables:
        rates = [f"{b.clients} clients {b.requests_per_s * BATCH:,.0f}" for b in tables["batch"]]
        print("  images/s: " + ", ".join(rates))
    problems = deployment_problems(config.overrides, config.server.startup_seconds)
    print("specs.check_deployment: " + ("; ".join(problems) or "consistent"))
    results = goals(
        tables["single"], tables.get("batch", []), config.before, after, args.request_timeout_ms
    )
    for text, met in results:
        print(f"{'PASS' if met else 'FAIL'}  {text}")
    return all(met for _, met in results)


KINDS = {"single": "single images (one per request)", "batch": f"batches of {BATCH} images"}


def _arguments(argv: list[str] | None) -> tuple[argparse.Namespace, list[dict[str, str]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default="outputs", help="training output or model folder")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="change one of deployment.yml's environment variables (repeatable)",
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=VALUE[,NAME=VALUE]",
        help="also measure the configuration with these changes, interleaved (repeatable)",
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="time per level and server")
    parser.add_argument("--max-requests", type=int, default=20000, help="cap per client, level")
    parser.add_argument("--batch-seconds", type=float, default=5.0, help="0: no batch round")
    parser.add_argument("--rounds", type=int, default=5, help="slices per level (interleaving)")
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    parser.add_argument(
        "--close",
        action="store_true",
        help="a new connection per request (Connection: close), as a front end that does not "
        "keep connections to the container alive would",
    )
    args = parser.parse_args(argv)
    try:
        base = parse_overrides(args.set)
        variants = [base] + [{**base, **parse_compare(text)} for text in args.compare]
    except ValueError as exc:
        parser.error(str(exc))
    if args.rounds < 1 or args.seconds <= 0 or min(args.levels) < 1:
        parser.error("--rounds, --seconds and --levels must be positive.")
    if not Path(args.model_dir).is_dir():
        parser.exit(
            2,
            f"--model-dir {args.model_dir} is not a folder: train one first "
            "(python -m training.train --output-dir DIR) and pass DIR.\n",
        )
    if not os.environ.get("MNIST_DATA_DIR"):
        parser.exit(2, "Set MNIST_DATA_DIR to the MNIST folder: the clients send test digits.\n")
    return args, variants


def main(argv: list[str] | None = None) -> int:
    args, variants = _arguments(argv)
    deployment = specs.load_deployment()
    args.request_timeout_ms = (
        deployment.request_settings and deployment.request_settings.request_timeout_ms
    ) or specs.DEFAULT_REQUEST_TIMEOUT_MS
    singles, batch = request_bodies(200, BATCH)
    loads = {"single": (singles, args.seconds, args.max_requests)}
    if args.batch_seconds > 0:
        loads["batch"] = ([batch], args.batch_seconds, 1000)
    print(
        f"deployment.yml: {specs.model_settings_summary(deployment)}; client timeout "
        f"{args.request_timeout_ms} ms (request_timeout_ms); "
        + (
            "a new connection per request."
            if args.close
            else "connections kept alive when the server allows."
        )
    )
    print(f"Machine: {_describe_machine()}.", flush=True)

    with tempfile.TemporaryDirectory(prefix="serving-concurrency-") as folder:
        configs = []
        try:
            for i, overrides in enumerate(variants):
                settings = effective_settings(specs.server_settings(), overrides)
                server = LocalServer(
                    model_dir=args.model_dir,
                    settings=settings,
                    log_path=Path(folder) / f"server-{i}.log",
                )
                label = " ".join(f"{k}={v}" for k, v in overrides.items()) or "as deployed"
                configs.append(Config(label, overrides, server))
                server.start(timeout=300)  # one at a time: each start-up measured on its own
                shown = " ".join(f"{k}={v}" for k, v in settings.items())
                print(
                    f"[{label}] healthy after {server.startup_seconds:.1f} s; "
                    f"{worker_kind(server)}; {shown}",
                    flush=True,
                )
            measure(configs, loads, args)
            met = [report(config, args, list(loads)) for config in configs]
        except ServerError as exc:
            print(exc, file=sys.stderr)
            return 1
        finally:
            for config in configs:
                config.server.stop()
    if len(configs) > 1:
        for kind in loads:
            print(f"\n{KINDS[kind]}, interleaved; ratios against {configs[0].label}:")
            print("\n".join(comparison(configs, kind, args.levels)))
    print(f"\nMachine after the run: {_describe_machine()}.")
    return 0 if met[0] else 1


if __name__ == "__main__":
    sys.exit(main())
