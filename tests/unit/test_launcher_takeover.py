"""The embedded-mongod launcher after its server was SIGKILLed: a real mongod, a real launcher
in a subprocess, killed (not mongod), then a second launcher on the same data dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pymongo import MongoClient

from ehcp_record.store.mongod import EmbeddedMongo, EmbeddedMongoError

_LAUNCHER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pymongo import MongoClient
    import ehcp_record.store.mongod as mongod
    if sys.argv[2] == "orphan":  # as if the kernel's parent-death signal never came
        mongod._die_with_parent = lambda: None
    server = mongod.EmbeddedMongo(Path(sys.argv[1])).start()
    client = MongoClient(server.uri, w="majority")
    client.ehcp_takeover.kept.insert_one({"_id": "before-the-kill"})
    client.close()
    print(server.process.pid, flush=True)
    time.sleep(600)
""")


def _launch(data_dir: Path, mode: str) -> tuple[subprocess.Popen, int]:
    launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(data_dir), mode], stdout=subprocess.PIPE,
                                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    line = launcher.stdout.readline()
    assert line.strip().isdigit(), "the launcher did not start its mongod"
    return launcher, int(line)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


@pytest.mark.parametrize("mode", ["orphan", "normal"])
def test_restart_after_the_server_was_killed_takes_over_the_data_dir(tmp_path, mode):
    """orphan: mongod still running with no launcher; normal: mongod got SIGTERM from the
    parent-death signal and is still shutting down. Either way the next start comes up on the
    same data dir with the data written before the kill."""
    launcher, old_pid = _launch(tmp_path, mode)
    launcher.kill()  # SIGKILL the launcher only
    launcher.wait()
    if mode == "orphan":
        time.sleep(0.5)
        assert not _gone(old_pid), "the orphaned mongod should still be running"
    server = EmbeddedMongo(tmp_path).start(timeout=90)
    try:
        assert server.process.pid != old_pid
        assert _gone(old_pid)
        client = MongoClient(server.uri, w="majority", serverSelectionTimeoutMS=5000)
        assert client.ehcp_takeover.kept.find_one({"_id": "before-the-kill"}) is not None
        client.close()
    finally:
        server.stop()
        if not _gone(old_pid):
            os.kill(old_pid, signal.SIGKILL)


def test_a_data_dir_in_use_by_a_live_server_is_still_refused(tmp_path):
    launcher, mongod_pid = _launch(tmp_path, "normal")
    try:
        with pytest.raises(EmbeddedMongoError, match="in use by mongod pid"):
            EmbeddedMongo(tmp_path).start()
        assert not _gone(mongod_pid)
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait()
        deadline = time.monotonic() + 30
        while not _gone(mongod_pid) and time.monotonic() < deadline:
            time.sleep(0.1)


def test_a_reused_pid_that_is_not_our_mongod_is_ignored(tmp_path):
    (tmp_path / "mongod.pid").write_text(str(os.getpid()))  # alive, but not a mongod at all
    (tmp_path / "mongod.launcher").write_text("1")
    server = EmbeddedMongo(tmp_path).start()
    try:
        assert server.process.pid != os.getpid()
    finally:
        server.stop()
