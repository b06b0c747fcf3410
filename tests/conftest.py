"""Fixtures: a real mongod (the embedded launcher) per session; a real HTTP server per module.

No fakes of our database anywhere: API tests speak HTTP to the Flask app served by werkzeug on
loopback, backed by a fresh database on the session's mongod. Servers allow outbound requests
to 127.0.0.1 only (EHCP_OUTBOUND_ALLOW), and the outbound fence's name resolver is replaced for
the whole session, so no test ever asks real DNS (a name resolves only if a test says so).
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Iterator

import socket

import pytest
from werkzeug.serving import make_server

from ehcp_record.net import outbound

from ehcp_record.store.mongod import EmbeddedMongo

from tests.support import Api


#: names the outbound fence may resolve in tests (a test adds its own with monkeypatch)
TEST_NAMES: dict[str, list[str]] = {"localhost": ["127.0.0.1"]}


def _test_resolver(host: str, port: int) -> list[str]:
    if host in TEST_NAMES:
        return TEST_NAMES[host]
    raise socket.gaierror(socket.EAI_NONAME, f"{host} is not a test name (tests never ask real DNS)")


@pytest.fixture(scope="session", autouse=True)
def no_real_dns() -> Iterator[None]:
    original = outbound.resolve_name
    outbound.resolve_name = _test_resolver
    yield
    outbound.resolve_name = original


@pytest.fixture(scope="session")
def mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedMongo]:
    server = EmbeddedMongo(tmp_path_factory.mktemp("mongod")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


def start_server(mongo: EmbeddedMongo, data_dir: Path, **overrides: object) -> tuple[Api, object]:
    from api import create_app

    # Bind first, so the app's base URL (links, fullUrls) is the port clients really call.
    holder: dict[str, object] = {}
    server = make_server("127.0.0.1", 0, lambda environ, start: holder["app"](environ, start), threaded=True)
    config = {"mongodb_uri": mongo.uri, "database": f"t_{uuid.uuid4().hex[:12]}", "data_dir": str(data_dir),
              "env": "test", "base_url": f"http://127.0.0.1:{server.server_port}/fhir", "outbound_allow": "127.0.0.1",
              **overrides}
    app = create_app(config)
    holder["app"] = app
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    api = Api(f"http://127.0.0.1:{server.server_port}", app.extensions["ehcp"].settings, app)
    return api, server


@pytest.fixture(scope="module")
def api(mongo: EmbeddedMongo, data_dir: Path) -> Iterator[Api]:
    client, server = start_server(mongo, data_dir)
    yield client
    server.shutdown()
    client.session.close()
    client.services.repo.client.drop_database(client.services.settings.database)
    client.services.repo.close()
