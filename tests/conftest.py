"""Fixtures: a real mongod (the embedded launcher) per session; a real HTTP server per module.

No fakes of our database anywhere: API tests speak HTTP to the Flask app served by werkzeug on
loopback, backed by a fresh database on the session's mongod.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from werkzeug.serving import make_server

from ehcp_record.store.mongod import EmbeddedMongo

from tests.support import Api


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
              "env": "test", "base_url": f"http://127.0.0.1:{server.server_port}/fhir", **overrides}
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
