"""`ehcp-record serve` listens with one socket per gunicorn worker (SO_REUSEPORT), so the
kernel spreads client connections over the workers, and it refuses a port another server
already listens on rather than sharing it."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import uuid

import pytest
import requests

from api.server import require_free_port
from ehcp_record.store.mongod import free_port
from tests.e2e import server_process


@pytest.fixture(scope="module")
def two_workers(mongo, tmp_path_factory):
    data = tmp_path_factory.mktemp("listening")
    server = server_process.start(data, {"EHCP_MONGODB_URI": mongo.uri, "EHCP_DATABASE": f"t_{uuid.uuid4().hex[:12]}"},
                                  workers=2)
    yield server, data
    server.stop()


def test_keep_alive_connections_are_spread_over_the_workers(two_workers):
    """16 keep-alive clients, each after one request: both workers hold some. With one shared
    listening socket, 8 clients were seen 8 to 0 on one worker; hashed over one socket per
    worker, all 16 on one side would happen about twice in 65,536 runs."""
    server, _ = two_workers
    port = int(server.base.rsplit(":", 1)[1])
    clients = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(16)]
    try:
        for client in clients:
            client.request("GET", "/fhir/metadata")
            response = client.getresponse()
            assert response.status == 200
            response.read()
        spread = server_process.connections_per_worker(server.process.pid, port)
        assert len(spread) == 2 and sum(spread) == 16 and min(spread) >= 1, spread
    finally:
        for client in clients:
            client.close()


def test_a_second_server_on_the_same_port_is_refused_not_shared(two_workers, mongo, tmp_path):
    """`serve` on a port the first server's workers listen on exits at once, saying so,
    before it starts a database (SO_REUSEPORT alone would have let it share the port)."""
    server, _ = two_workers
    port = int(server.base.rsplit(":", 1)[1])
    env = {**os.environ, "EHCP_DATA_DIR": str(tmp_path), "EHCP_ENV": "test", "EHCP_MONGODB_URI": mongo.uri,
           "EHCP_DATABASE": f"t_{uuid.uuid4().hex[:12]}"}
    second = subprocess.run([sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--workers", "1"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in second.stderr, second.stderr[-500:]
    assert requests.get(server.base + "/readyz", timeout=5).status_code == 200  # the first goes on


def test_the_port_check_refuses_a_port_in_use_and_takes_a_free_one():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(SystemExit, match="cannot listen on 127.0.0.1:%d" % taken.getsockname()[1]):
            require_free_port("127.0.0.1", taken.getsockname()[1])
    require_free_port("127.0.0.1", free_port())  # returns: nothing listens there
