"""Run `ehcp-record serve` as a real subprocess (gunicorn) for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from ehcp_record.store.mongod import free_port


@dataclass
class ServerProcess:
    process: subprocess.Popen
    base: str

    def kill_api_only(self) -> int:
        """SIGKILL every process of the server's group except mongod (gunicorn's master first,
        then its workers, again until none is left): the API dies mid-request, the embedded
        mongod it launched is left behind for the next start to take over. Returns the number
        of processes killed."""
        killed = 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = sorted(_group_members(self.process.pid), key=lambda pid: pid != self.process.pid)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        self.process.wait(10)
        return killed

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _group_members(pgid: int) -> list[int]:
    """Living processes in process group `pgid`, mongod left out."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            name = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X") and name != "mongod":
            found.append(int(entry.name))
    return found


def connections_per_worker(server_pid: int, port: int) -> list[int]:
    """Established client connections each gunicorn worker under `server_pid` holds on `port`
    now, busiest first: the workers' socket inodes (/proc/<pid>/fd) against the kernel's TCP
    table (/proc/net/tcp, state 01)."""
    established = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                established.add(fields[9])
    counts = []
    for pid in _descendants(server_pid):
        if "mongod" in _command_line(pid):
            continue
        sockets = set()
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                sockets.add(target[8:-1])
        counts.append(len(sockets & established))
    return sorted(counts, reverse=True)


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def start(data_dir: Path, env: dict[str, str], workers: int = 2, port: int | None = None) -> ServerProcess:
    port = port or free_port()
    command = [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--workers", str(workers)]
    full_env = {**os.environ, "EHCP_DATA_DIR": str(data_dir), "EHCP_ENV": "test", "EHCP_OUTBOUND_ALLOW": "127.0.0.1", **env}
    log = open(data_dir / "server.log", "ab")
    process = subprocess.Popen(command, env=full_env, stdout=log, stderr=log, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early: {(data_dir / 'server.log').read_text()[-2000:]}")
        try:
            if requests.get(base + "/readyz", timeout=1).status_code == 200:
                return ServerProcess(process, base)
        except requests.RequestException:
            pass
        time.sleep(0.2)
    ServerProcess(process, base).stop(signal.SIGKILL)
    raise RuntimeError("server did not become ready")
