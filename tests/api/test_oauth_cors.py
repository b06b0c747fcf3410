"""CORS (flask-cors): only configured origins, preflight answered, the headers a FHIR app reads
exposed; with no origins configured (the default) no CORS header is ever sent."""

from __future__ import annotations

from typing import Iterator

import pytest
import requests

from tests.oauth_support import start_smart_server, stop
from tests.support import Api

APP_ORIGIN = "http://127.0.0.1:5555"


@pytest.fixture(scope="module")
def cors(mongo, data_dir) -> Iterator[Api]:
    api, server = start_smart_server(mongo, data_dir, cors_origins=APP_ORIGIN)
    yield api
    stop(api, server)


def _preflight(api: Api, origin: str, path: str = "/fhir/Patient", method: str = "POST") -> requests.Response:
    return requests.options(api.base + path, timeout=10, headers={
        "Origin": origin, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type, if-match"})


def test_preflight_from_the_configured_origin(cors):
    response = _preflight(cors, APP_ORIGIN)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "if-match"} <= allowed
    assert "POST" in response.headers["Access-Control-Allow-Methods"]


def test_token_endpoint_preflight(cors):
    response = _preflight(cors, APP_ORIGIN, "/oauth/token")
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN


def test_responses_expose_etag_location_content_location(cors):
    created = requests.post(cors.base + "/fhir/Organization", timeout=10, json={
        "resourceType": "Organization", "name": "CORS school"}, headers={
        "Origin": APP_ORIGIN, "Authorization": f"Bearer {cors.la()}", "Content-Type": "application/fhir+json"})
    assert created.status_code == 201, created.text
    assert created.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    exposed = {h.strip() for h in created.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"ETag", "Location", "Content-Location"} <= exposed


def test_other_origins_get_no_cors_headers(cors):
    response = _preflight(cors, "http://127.0.0.1:6666")
    assert "Access-Control-Allow-Origin" not in response.headers
    plain = requests.get(cors.base + "/fhir/metadata", headers={"Origin": "http://127.0.0.1:6666"}, timeout=10)
    assert "Access-Control-Allow-Origin" not in plain.headers


def test_capability_statement_says_cors(cors):
    assert requests.get(cors.base + "/fhir/metadata", timeout=10).json()["rest"][0]["security"]["cors"] is True


def test_no_origins_by_default(api):
    response = requests.get(api.base + "/fhir/metadata", headers={"Origin": APP_ORIGIN}, timeout=10)
    assert response.status_code == 200 and "Access-Control-Allow-Origin" not in response.headers
    assert api.settings.cors_origins == ()
