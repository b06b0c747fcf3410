"""Real FHIR client libraries against a live server (werkzeug on 127.0.0.1, real mongod).

The clients are used as their own documentation shows, with no workaround: if one of them
needs a special header or URL form to work here, that is a server bug these tests catch.
"""

from __future__ import annotations

import pytest

from tests.support import LA, Api, nhs_number


@pytest.fixture(scope="module")
def la_token(api: Api) -> str:
    api.ensure_la_organization()
    return api.token("la", LA)


def child_body(family: str = "Morgan", given: str = "Jamie", postcode: str = "LS1 4AP") -> dict:
    return {"resourceType": "Patient", "birthDate": "2015-03-14",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs_number()}],
            "name": [{"family": family, "given": [given]}], "address": [{"postalCode": postcode}]}
