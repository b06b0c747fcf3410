"""A real 3-member replica set on loopback, from the same `mongod` binary the launcher uses.

Each member has its own dbpath and log under a temp dir and a free loopback port; the set has a
fresh name, member 0 has the highest priority (so it is primary first) and the election timeout
is MongoDB's default (10 s), so the gap without a primary is the one production meets. `close()` kills every member, whatever happened.
Access control is on as in the embedded launcher: the members share one keyfile (internal
authentication) and the first user is created through the localhost exception on the first
primary; every client after that authenticates.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

from ehcp_record.store.mongod import _die_with_parent, free_port, mongod_binary
from ehcp_record.store.mongod_auth import Credentials, create_first_user, ensure_credentials, ensure_keyfile

PRIORITIES = (3, 2, 1)
ELECTION_TIMEOUT_MS = 10000
FIRST_ELECTION_TIMEOUT_MS = 500
HEARTBEAT_MS = 500


@dataclass
class Member:
    index: int
    port: int
    db_path: Path
    log_path: Path
    keyfile: Path
    process: subprocess.Popen | None = None
    credentials: Credentials | None = None  # None until the first user exists

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, name: str) -> None:
        self.db_path.mkdir(parents=True, exist_ok=True)
        args = [str(mongod_binary()), "--dbpath", str(self.db_path), "--port", str(self.port),
                "--bind_ip", "127.0.0.1", "--replSet", name, "--keyFile", str(self.keyfile), "--logpath", str(self.log_path), "--logappend",
                "--wiredTigerCacheSizeGB", "0.25", "--setParameter", "diagnosticDataCollectionEnabled=false"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent)

    def kill(self) -> None:
        """SIGKILL: no step-down, no goodbye to the other members, no clean shutdown."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def client(self, **options: object) -> MongoClient:
        auth = self.credentials.client_options() if self.credentials else {}
        return MongoClient("127.0.0.1", self.port, directConnection=True, serverSelectionTimeoutMS=1000,
                           **auth, **options)


@dataclass
class ReplicaSet:
    root: Path
    name: str = field(default_factory=lambda: f"fo_{uuid.uuid4().hex[:8]}")
    members: list[Member] = field(default_factory=list)
    credentials: Credentials | None = None

    @property
    def uri(self) -> str:
        hosts = ",".join(m.host for m in self.members)
        assert self.credentials is not None, "start() first"
        return self.credentials.uri(hosts, self.name)

    def start(self, timeout: float = 60.0) -> "ReplicaSet":
        self.root.mkdir(parents=True, exist_ok=True)
        keyfile = ensure_keyfile(self.root / "keyfile")
        for index in range(len(PRIORITIES)):
            folder = self.root / f"member{index}"
            self.members.append(Member(index, free_port(), folder / "db", folder / "mongod.log", keyfile))
        try:
            for member in self.members:
                member.start(self.name)
            self._initiate(timeout)
            self._create_user(self.wait_for_primary(None, timeout))
            self._set_election_timeout(ELECTION_TIMEOUT_MS)
            self._step_up(self.members[0], timeout)
            self.wait_for_primary(self.members[0], timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _initiate(self, timeout: float) -> None:
        config = {"_id": self.name,
                  "members": [{"_id": m.index, "host": m.host, "priority": p}
                              for m, p in zip(self.members, PRIORITIES)],
                  # short at first: replSetStepUp needs a user, and a user needs a primary, so
                  # the first primary comes from an election; the real timeout is set after
                  # no chained replication: a member that rejoins syncs from the primary, not from
                  # a secondary that is itself behind, so it catches up with the writes still
                  # going and can take the primary role back (its votes are refused while its
                  # data is staler than the voters')
                  "settings": {"electionTimeoutMillis": FIRST_ELECTION_TIMEOUT_MS, "heartbeatIntervalMillis": HEARTBEAT_MS,
                               "chainingAllowed": False}}
        deadline = time.monotonic() + timeout
        with self.members[0].client() as client:
            while True:
                try:
                    client.admin.command("replSetInitiate", config)
                    return
                except OperationFailure as exc:
                    if exc.code == 23:  # AlreadyInitialized
                        return
                    if time.monotonic() > deadline:
                        raise
                except PyMongoError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.2)

    def _create_user(self, primary: Member) -> None:
        """The localhost exception: the first user, created on the first primary."""
        credentials = ensure_credentials(self.root)
        with primary.client() as client:
            create_first_user(client.admin, credentials)
        self.credentials = credentials
        for member in self.members:
            member.credentials = credentials

    def _set_election_timeout(self, millis: int) -> None:
        primary = self.wait_for_primary()
        with primary.client() as client:
            config = client.admin.command("replSetGetConfig")["config"]
            config["settings"]["electionTimeoutMillis"] = millis
            config["version"] += 1
            client.admin.command("replSetReconfig", config)

    def _step_up(self, member: Member, timeout: float) -> None:
        """Elect `member` now rather than after the first election timeout (10 s)."""
        if self.primary() is member:
            return
        self.wait_for_state(member, "SECONDARY", timeout)
        deadline = time.monotonic() + timeout
        with member.client() as client:
            while time.monotonic() < deadline:
                try:
                    client.admin.command("replSetStepUp")
                    return
                except PyMongoError:
                    if client.admin.command("hello").get("isWritablePrimary"):
                        return
                time.sleep(0.2)

    def primary(self) -> Member | None:
        """The member that says it is primary now (asked directly, not through a driver's view)."""
        for member in self.members:
            if member.process is None or member.process.poll() is not None:
                continue
            try:
                with member.client() as client:
                    if client.admin.command("hello").get("isWritablePrimary"):
                        return member
            except PyMongoError:
                continue
        return None

    def wait_for_primary(self, expected: Member | None = None, timeout: float = 30.0) -> Member:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.primary()
            if found is not None and (expected is None or found is expected):
                # every living member has caught up enough to be a secondary (w=majority can complete)
                return found
            time.sleep(0.1)
        raise AssertionError(f"no primary{' ' + expected.host if expected else ''} within {timeout:.0f}s; "
                             f"logs under {self.root}")

    def wait_for_state(self, member: Member, state: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with member.client() as client:
                    status = client.admin.command("replSetGetStatus")
                if any(m.get("self") and m.get("stateStr") == state for m in status["members"]):
                    return
            except PyMongoError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{member.host} did not become {state} within {timeout:.0f}s")

    def close(self) -> None:
        """SIGKILL every member: the data is a test's, and a clean shutdown of a primary waits
        for its secondaries (tens of seconds)."""
        for member in self.members:
            try:
                member.kill()
            except Exception:  # noqa: BLE001 - the others must still go
                pass
            member.process = None
