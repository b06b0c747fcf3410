"""Test helpers: an HTTP client with dev tokens for each role, and small resource builders."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import requests

from api.auth import issue_dev_token
from ehcp_record.config import Settings

FHIR_JSON = "application/fhir+json"
LA = "Organization/la-866"
OTHER_LA = "Organization/la-916"
SCHOOL = "Organization/school-1"
HEALTH = "Organization/nhs-trust-1"


@dataclass
class Api:
    base: str
    settings: Settings
    app: Any
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def services(self) -> Any:
        return self.app.extensions["ehcp"]

    def token(self, role: str = "la", organization: str | None = LA, **kwargs: Any) -> str:
        if role in ("parent", "young-person", "auditor") and organization == LA:
            organization = None
        return issue_dev_token(self.settings, role, organization=organization, **kwargs)

    def headers(self, token: str | None, **extra: str) -> dict[str, str]:
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        headers.update(extra)
        return headers

    def get(self, path: str, token: str | None = None, **extra: str) -> requests.Response:
        return self.session.get(self.base + path, headers=self.headers(token, **extra), timeout=30)

    def post(self, path: str, body: Any, token: str | None = None, **extra: str) -> requests.Response:
        return self.session.post(self.base + path, json=body, headers=self.headers(token, **extra), timeout=60)

    def put(self, path: str, body: Any, token: str | None = None, **extra: str) -> requests.Response:
        return self.session.put(self.base + path, json=body, headers=self.headers(token, **extra), timeout=30)

    def delete(self, path: str, token: str | None = None) -> requests.Response:
        return self.session.delete(self.base + path, headers=self.headers(token), timeout=30)

    def la(self) -> str:
        return self.token("la", LA)

    def ensure_la_organization(self, organization: str = LA) -> None:
        """The LA's directory entry, so plans citing it as author resolve in documents."""
        resource_id = organization.split("/")[1]
        if self.get(f"/fhir/Organization/{resource_id}", self.la()).status_code == 200:
            return
        body = {"resourceType": "Organization", "id": resource_id, "name": f"Local authority {resource_id[3:]}",
                "identifier": [{"system": "http://ehcp-record.example.org/fhir/NamingSystem/dfe-la-number",
                                "value": resource_id[3:]}]}
        response = self.put(f"/fhir/Organization/{resource_id}", body, self.token("la", organization))
        assert response.status_code in (200, 201), response.text

    def new_child(self, token: str | None = None, **fields: Any) -> dict:
        body = {"resourceType": "Patient", "birthDate": "2015-03-14",
                "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs_number()}],
                "name": [{"family": "Example", "given": ["Sam"]}]}
        body.update(fields)
        self.ensure_la_organization()
        response = self.post("/fhir/Patient", body, token or self.la())
        assert response.status_code == 201, response.text
        return response.json()


SECTION_SYSTEM = "http://ehcp-record.example.org/fhir/CodeSystem/ehcp-section"
NEED_SYSTEM = "http://ehcp-record.example.org/fhir/CodeSystem/sen-primary-need"


def need(child: str, section: str = "B", code: str = "SLCN", **fields: Any) -> dict:
    """A need (Condition) that meets the ehcp-need profile; `child` is a Patient id or reference."""
    subject = child if child.startswith(("Patient/", "urn:")) else f"Patient/{child}"
    concept = {"coding": [{"system": NEED_SYSTEM, "code": code}]} if section == "B" else {"text": code}
    body = {"resourceType": "Condition", "subject": {"reference": subject},
            "category": [{"coding": [{"system": SECTION_SYSTEM, "code": section}]}], "code": concept}
    body.update(fields)
    return body


def references_in(resource: dict) -> list[str]:
    """Every literal reference in a resource as Type/id, for checking documents resolve."""
    from ehcp_record.fhir.model import literal_references, ref_key

    return [ref_key(r) for r in literal_references(resource)]


def outcome_code(response: requests.Response) -> str:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return body["issue"][0]["code"]


def unique() -> str:
    return uuid.uuid4().hex[:10]


def nhs_number() -> str:
    """A fresh valid NHS number (modulus 11, NHS Data Dictionary), one record per number."""
    import random

    from stdnum.gb import nhs

    while True:
        digits = "".join(random.choice("0123456789") for _ in range(9))
        for check in "0123456789":
            if nhs.is_valid(digits + check):
                return digits + check
