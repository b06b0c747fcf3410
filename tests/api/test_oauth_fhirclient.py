"""Python `fhirclient` (PyPI) completes SMART App Launch 2 headlessly against this server: it
discovers the endpoints from the CapabilityStatement's oauth-uris extension, sends PKCE S256,
exchanges the code, gets the launch patient, reads the plan, and refreshes its token. Only the
person's part (signing in at the authorization server) is done by a requests session standing
in for the browser. The app is registered through the store, as `ehcp-record clients add` does.
"""

from __future__ import annotations

from typing import Iterator

import pytest
from fhirclient import client as fhirclient

from tests.consent_support import load_issued_example
from tests.oauth_support import APP_REDIRECT, family_app, link_parent, start_smart_server, stop
from tests.support import Api

SCOPE = "openid fhirUser patient/*.rs offline_access"


@pytest.fixture(scope="module")
def smart(mongo, data_dir) -> Iterator[Api]:
    api, server = start_smart_server(mongo, data_dir)
    api.services.identity.register(family_app("py-app", scope="launch/patient " + SCOPE))
    yield api
    stop(api, server)


def test_fhirclient_launch_read_and_refresh(smart):
    record = load_issued_example(smart)
    child, mum, plan = record["Patient"][0]["id"], record["RelatedPerson"][0]["id"], record["Composition"][0]["id"]
    browser = link_parent(smart, child, mum)
    app = fhirclient.FHIRClient(settings={"app_id": "py-app", "api_base": smart.settings.base_url,
                                          "redirect_uri": APP_REDIRECT, "scope": SCOPE})
    assert app.wants_patient  # adds launch/patient
    authorize = app.authorize_url
    assert "code_challenge_method=S256" in authorize and authorize.startswith(smart.base + "/oauth/authorize?")
    answer = browser.get(authorize, allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text
    app.handle_callback(answer.headers["Location"])
    assert app.ready and app.patient_id == child
    first = app.server.auth.access_token
    composition = app.server.request_json(f"Composition/{plan}")
    assert composition["id"] == plan and composition["subject"]["reference"] == f"Patient/{child}"
    patient = app.patient
    assert patient is not None and patient.id == child
    assert app.reauthorize() is not None
    assert app.server.auth.access_token != first
    assert app.server.request_json(f"Composition/{plan}")["id"] == plan
