"""One server and one synthetic cohort (2,000 children, bulk-inserted) for every analytics test
module: the extract is built once per session from it."""

from __future__ import annotations

from typing import Iterator

import pytest

from bench.cohort import Cohort, generate, insert
from tests.conftest import start_server
from tests.support import Api

COHORT_SIZE = 2000


@pytest.fixture(scope="session")
def cohort_api(mongo, data_dir) -> Iterator[tuple[Api, Cohort]]:
    api, server = start_server(mongo, data_dir)
    cohort = generate(COHORT_SIZE)
    insert(api.services.repo.db, cohort)
    api.services.analytics.extract.refresh(full=True)
    yield api, cohort
    server.shutdown()
    api.session.close()
    api.services.repo.client.drop_database(api.services.settings.database)
    api.services.repo.close()


def staff_browser(api: Api, role: str, organization: str, person: str):
    """A browser signed in on the dev page as `person`, linked as staff of `organization` in
    `role` (a PractitionerRole invited by that organisation's administrator)."""
    from tests.oauth_support import redeem, sign_in

    made = api.post("/fhir/PractitionerRole", {"resourceType": "PractitionerRole", "active": True,
                                               "organization": {"reference": organization}}, api.token("system", None))
    assert made.status_code == 201, made.text
    invitation = api.session.post(api.base + "/oauth/invitations",
                                  json={"person": f"PractitionerRole/{made.json()['id']}"},
                                  headers={"Authorization": f"Bearer {api.token(role, organization)}"}, timeout=10)
    assert invitation.status_code == 201, invitation.text
    browser = sign_in(api, person)
    linked = redeem(api, browser, invitation.json()["code"])
    assert linked.status_code == 201, linked.text
    return browser
