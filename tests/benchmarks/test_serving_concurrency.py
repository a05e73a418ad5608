"""The concurrency benchmark's own arithmetic: percentiles, per-level figures, worker memory from
/proc, overrides, and the client loop's error counting against a real loopback HTTP server."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks import serving_concurrency as bench
from scripts.endpoints.local_server import free_port


def test_percentile_is_nearest_rank():
    hundred = [float(i) for i in range(100, 0, -1)]  # 100 .. 1, unsorted on purpose
    assert bench.percentile(hundred, 50) == 50.0
    assert bench.percentile(hundred, 99) == 99.0
    assert bench.percentile(hundred, 100) == 100.0
    assert bench.percentile(hundred, 1) == 1.0
    ten = [0.010, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.009]
    assert bench.percentile(ten, 99) == 0.010  # rank ceil(9.9) = 10: the slowest request
    assert bench.percentile(ten, 50) == 0.005
    assert bench.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert bench.percentile([7.0], 99) == 7.0
    assert math.isnan(bench.percentile([], 50))
    with pytest.raises(ValueError, match="outside"):
        bench.percentile([1.0], 0)


def test_a_level_adds_its_clients_and_slices_up():
    first = [
        bench.ClientRun([0.001, 0.002, 0.003], [], seconds=2.0),
        bench.ClientRun([0.004], ["HTTP 503: b'busy'", "HTTP 503: b'busy'", "timeout"], 1.5),
    ]
    second = [bench.ClientRun([0.005, 0.006], [], 0.5), bench.ClientRun([0.007], [], 1.0)]
    level = bench.aggregate(2, [first, second])
    assert level.clients == 2
    assert level.requests == 7
    assert level.errors == 3
    assert level.requests_per_s == 7 / 3  # 7 answers over 2 s + 1 s, each slice's slowest client
    assert level.p50_ms == pytest.approx(4.0)  # rank 4 of 7
    assert level.p99_ms == pytest.approx(7.0)
    assert level.error_samples == ("HTTP 503: b'busy'", "timeout")  # distinct, in order
    assert bench.aggregate(2, [first]).requests_per_s == 2.0
    empty = bench.aggregate(1, [[bench.ClientRun([], ["ConnectionRefusedError"], 0.1)]])
    assert (empty.requests, empty.errors, empty.requests_per_s) == (0, 1, 0.0)
    assert bench.aggregate(4, []).requests_per_s == 0.0


def test_proc_fields_are_read_past_odd_command_names():
    stat = "4242 (gunicorn: worker [a) b]) S 4200 4200 4200 0 -1 4194560 1234 0 0 0"
    assert bench.parent_pid(stat) == 4200
    status = "Name:\tpython\nVmPeak:\t  900000 kB\nVmRSS:\t  204800 kB\nRssAnon:\t 1 kB\n"
    assert bench.rss_bytes(status) == 209_715_200
    with pytest.raises(ValueError, match="no VmRSS"):
        bench.rss_bytes("Name:\tkthreadd\nState:\tS (sleeping)\n")


def _fake_process(proc, pid: int, ppid: int, rss_kb: int | None) -> None:
    folder = proc / str(pid)
    folder.mkdir()
    (folder / "stat").write_text(f"{pid} (python3) S {ppid} {ppid} 1 0 -1 0\n")
    status = f"Name:\tpython3\nPPid:\t{ppid}\n"
    if rss_kb is not None:
        status += f"VmRSS:\t{rss_kb:>8} kB\n"
    (folder / "status").write_text(status)


def test_worker_memory_sums_the_masters_children_only(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    _fake_process(proc, 10, 1, 50_000)  # the master
    _fake_process(proc, 11, 10, 300_000)  # workers
    _fake_process(proc, 12, 10, 200_000)
    _fake_process(proc, 13, 11, 999_999)  # a worker's own child: not a worker
    _fake_process(proc, 14, 10, None)  # exited between the two reads: skipped
    (proc / "self").mkdir()
    (proc / "meminfo").write_text("MemTotal: 1 kB\n")
    memory = bench.worker_memory(10, proc)
    assert memory.rss == {11: 307_200_000, 12: 204_800_000}
    assert memory.total == 512_000_000
    assert memory.largest == 307_200_000
    assert memory.describe() == "2 workers, 488 MB (max 293)"


def test_worker_memory_reads_the_real_proc():
    script = "import time; print('up', flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"up\n"  # running
        memory = bench.worker_memory(os.getpid())
        assert child.pid in memory.rss
        assert 1 << 20 < memory.rss[child.pid] < 1 << 30  # a Python interpreter: MBs, not GBs
    finally:
        child.kill()
        child.communicate()


def test_memory_growth_allows_noise_not_leaks():
    mb = 1 << 20
    before = bench.Memory({1: 200 * mb, 2: 200 * mb})  # 400 MB: 5% is 20 MB
    assert not bench.memory_grew(before, bench.Memory({1: 210 * mb, 2: 209 * mb}))
    assert bench.memory_grew(before, bench.Memory({1: 221 * mb, 2: 200 * mb}))
    small = bench.Memory({1: 100 * mb})  # 5% is 5 MB: the 16 MB floor applies
    assert not bench.memory_grew(small, bench.Memory({1: 115 * mb}))
    assert bench.memory_grew(small, bench.Memory({1: 117 * mb}))


def test_overrides_and_the_deployed_worker_class():
    overrides = bench.parse_overrides(["WORKER_COUNT=2", "GUNICORN_CMD_ARGS=--threads=2"])
    assert overrides == {"WORKER_COUNT": "2", "GUNICORN_CMD_ARGS": "--threads=2"}
    for bad in ("WORKER_COUNT", "=2", "WORKER COUNT=2"):
        with pytest.raises(ValueError, match="must be NAME=VALUE"):
            bench.parse_overrides([bad])
    assert bench.parse_compare("WORKER_COUNT=1,GUNICORN_CMD_ARGS=--threads 4") == {
        "WORKER_COUNT": "1",
        "GUNICORN_CMD_ARGS": "--threads 4",
    }
    deployed = {"WORKER_COUNT": "4", "SCORING_TIMEOUT_MS": "4000"}
    assert bench.effective_settings(deployed, {"WORKER_COUNT": "2"}) == {
        "WORKER_COUNT": "2",
        "SCORING_TIMEOUT_MS": "4000",
        "GUNICORN_CMD_ARGS": "--worker-class sync --threads 1",
    }
    threaded = bench.effective_settings(deployed, {"GUNICORN_CMD_ARGS": "--threads=2"})
    assert threaded["GUNICORN_CMD_ARGS"] == "--worker-class sync --threads 1 --threads=2"


def test_usage_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--set", "WORKER_COUNT"])
    assert exc.value.code == 2
    assert "must be NAME=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        bench.main(["--compare", "WORKER_COUNT=2,THREADS"])
    assert exc.value.code == 2
    assert "'THREADS' must be NAME=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        bench.main(["--model-dir", str(tmp_path / "missing")])
    assert exc.value.code == 2
    assert "is not a folder" in capsys.readouterr().err


class _EveryOtherFails(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the threaded local workers allow
    count = 0
    connections = 0

    def setup(self) -> None:
        type(self).connections += 1
        super().setup()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).count += 1
        status, body = (200, b"{}") if self.count % 2 else (503, b"busy")
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_client_loop_counts_answers_and_errors_over_real_http():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EveryOtherFails)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        run = bench.client_loop(server.server_address[1], [b"a", b"b"], 0, 30.0, 10, 5.0)
        assert _EveryOtherFails.connections == 1  # one kept-alive connection
        closing = bench.client_loop(server.server_address[1], [b"a"], 0, 30.0, 4, 5.0, True)
        assert _EveryOtherFails.connections == 1 + 4  # --close: one per request
        assert len(closing.latencies) + len(closing.errors) == 4
    finally:
        server.shutdown()
        server.server_close()
    assert len(run.latencies) == 5 and all(0 < t < 5 for t in run.latencies)
    assert run.errors == ["HTTP 503: b'busy'"] * 5
    refused = bench.client_loop(free_port(), [b"a"], 0, 30.0, 3, 1.0)
    assert refused.latencies == []
    assert len(refused.errors) == 3 and "ConnectionRefusedError" in refused.errors[0]


def _level(clients: int, p99_ms: float, errors: int = 0) -> bench.Level:
    return bench.Level(clients, 100, errors, 50.0, 1.0, p99_ms, ())


def test_goals_judge_errors_the_slowest_p99_and_memory():
    mb = 1 << 20
    before = bench.Memory({7: 120 * mb, 8: 121 * mb})
    flat = bench.Memory({7: 121 * mb, 8: 122 * mb})
    singles = [_level(1, 9.0), _level(2, 20.0), _level(4, 60.0)]
    batches = [_level(1, 100.0), _level(4, 1250.0)]
    results = bench.goals(singles, batches, before, flat, 5000)
    assert [met for _, met in results] == [True, True, True, True]
    assert "worst p99 1250 ms (4 clients, batches)" in results[1][0]
    assert "5000 / 4 = 1250 ms" in results[1][0]
    slow = bench.goals(singles, [_level(4, 1251.0)], before, flat, 5000)
    assert [met for _, met in slow] == [True, False, True, True]
    failing = [_level(1, 9.0), _level(4, 60.0, errors=2)]
    assert not bench.goals(failing, [], before, flat, 5000)[0][1]
    restarted = bench.Memory({7: 121 * mb, 9: 122 * mb})  # a worker replaced during the load
    assert not bench.goals(singles, [], before, restarted, 5000)[2][1]
    heavy = bench.Memory({7: 301 * mb, 8: 121 * mb})
    assert [met for _, met in bench.goals(singles, [], before, heavy, 5000)][2:] == [False, False]
