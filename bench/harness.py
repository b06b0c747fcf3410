"""What every benchmark here shares: the server on its own embedded mongod, dev tokens, a light
keep-alive HTTP client, and a timed load loop. `bench.py` and `search.py` both use it.

Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from api.auth import issue_dev_token  # noqa: E402
from ehcp_record.config import load_settings  # noqa: E402
from ehcp_record.store.mongod import free_port, uri_for  # noqa: E402
from tests.e2e.server_process import connections_per_worker  # noqa: E402


def server_env(data_dir: Path) -> dict[str, str]:
    """The environment `ehcp-record` runs in here: this checkout's code first on the path, the
    embedded mongod in `data_dir` (never a database from the caller's environment)."""
    env = {**os.environ, "EHCP_DATA_DIR": str(data_dir), "EHCP_ENV": "local",
           "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    env.pop("EHCP_MONGODB_URI", None)
    return env


class Server:
    """`ehcp-record serve` (gunicorn) with its embedded mongod in `data_dir`, serving this
    checkout's code (ROOT first on the server's PYTHONPATH)."""

    def __init__(self, data_dir: Path, workers: int, launcher: list[str] | None = None) -> None:
        """`launcher`: the command that runs `api.cli` (default `python -m api.cli`)."""
        self.port = free_port()
        env = server_env(data_dir)
        command = (launcher or [sys.executable, "-m", "api.cli"]) + ["serve", "--host", "127.0.0.1", "--port", str(self.port),
                   "--workers", str(workers)]
        self.log = open(data_dir / "server.log", "wb")
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=self.log, start_new_session=True)
        self.base = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError((data_dir / "server.log").read_text()[-2000:])
            try:
                if requests.get(self.base + "/readyz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not start")

    @property
    def mongo_uri(self) -> str:
        return uri_for(self.data_dir)

    def token(self, role: str, **claims: str | None) -> str:
        """A dev token signed by this server's key (organization=, fhir_user=, ...)."""
        return issue_dev_token(load_settings({"data_dir": str(self.data_dir)}), role, **claims)

    def connections_per_worker(self) -> list[int]:
        """Established client connections each gunicorn worker holds now, busiest first."""
        return connections_per_worker(self.process.pid, self.port)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


class Reply:
    def __init__(self, status: int, body: bytes) -> None:
        self.status_code = status
        self.content = body

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> dict:
        return json.loads(self.content)


class Client:
    """One keep-alive HTTP/1.1 connection (http.client): light enough that the load generator
    does not take the server's CPU on a 2-core machine. Not shared between threads."""

    def __init__(self, base: str, token: str, timeout: float = 60) -> None:
        self.base = base
        host, port = base.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}

    @property
    def token(self) -> str:
        return self.headers["Authorization"].split()[1]

    def _call(self, method: str, path: str, body: dict | None = None, extra: dict | None = None) -> Reply:
        data = json.dumps(body).encode() if body is not None else None
        for attempt in (1, 2):
            try:
                self.connection.request(method, path, body=data, headers={**self.headers, **(extra or {})})
                response = self.connection.getresponse()
                return Reply(response.status, response.read())
            except (http.client.HTTPException, ConnectionError):
                self.connection.close()
                if attempt == 2:
                    raise
        raise RuntimeError("unreachable")

    def get(self, path: str) -> Reply:
        return self._call("GET", path)

    def request(self, method: str, path: str, body: dict | None = None, token: str | None = None) -> Reply:
        """Any method, optionally as another caller (`token`) on this same connection."""
        return self._call(method, path, body, {"Authorization": f"Bearer {token}"} if token else None)

    def post(self, path: str, body: dict) -> Reply:
        return self._call("POST", path, body)

    def put(self, path: str, body: dict, version: int | None = None) -> Reply:
        return self._call("PUT", path, body, {"If-Match": f'W/"{version}"'} if version is not None else None)


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (the largest value for small samples)."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def measure(name: str, clients: int, seconds: float, make_worker: Callable[[int], Callable[[], None]],
            min_requests: int = 0, max_seconds: float | None = None, probe: Callable[[], object] | None = None) -> dict:
    """Run `clients` threads each calling its worker until time is up; latency per call.

    Each thread builds its worker (its own connection) before the clock starts. With
    `min_requests`, the run goes on past `seconds` until that many calls are done in all, but
    never past `max_seconds` (default 3x `seconds`): slow requests still get a sample.
    `probe`, if given, is called once halfway through and its answer kept as `probe`.
    """
    latencies: list[float] = []
    lock = threading.Lock()
    done = [0]
    clock: dict[str, float] = {}
    probed: dict[str, object] = {}

    def start_clock() -> None:  # run once, when every worker has its connection
        clock["started"] = time.monotonic()
        clock["stop_at"] = clock["started"] + seconds
        clock["hard_stop"] = clock["started"] + (max_seconds if max_seconds is not None else 3 * seconds)
        if probe is not None:
            timer = threading.Timer(seconds / 2, lambda: probed.setdefault("probe", probe()))
            timer.daemon = True
            timer.start()

    ready = threading.Barrier(clients, action=start_clock)

    def run(index: int) -> None:
        try:
            work = make_worker(index)
        except BaseException:
            ready.abort()
            raise
        mine = []
        ready.wait()
        while True:
            now = time.monotonic()
            if now >= clock["hard_stop"] or (now >= clock["stop_at"] and done[0] >= min_requests):
                break
            started = time.perf_counter()
            work()
            mine.append(time.perf_counter() - started)
            with lock:
                done[0] += 1
        with lock:
            latencies.extend(mine)

    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(run, i) for i in range(clients)]:
            future.result()
    started = clock["started"]
    elapsed = time.monotonic() - started
    latencies.sort()
    return {"name": name, "clients": clients, "requests": len(latencies), "per_second": len(latencies) / elapsed,
            "p50_ms": 1000 * percentile(latencies, 0.50), "p95_ms": 1000 * percentile(latencies, 0.95),
            "p99_ms": 1000 * percentile(latencies, 0.99), **probed}
