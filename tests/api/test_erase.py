"""`$erase` (docs/encryption.md): the custodian destroys one record's data key. Every path to
that record answers 410 Gone and search omits it; every other record is untouched; the audit
chain still verifies and says who erased it, when and why. A legal hold blocks it."""

from __future__ import annotations

import os

import pytest
from pymongo import MongoClient

from consent.model import Actor
from consent.scopes import parse_scopes
from ehcp_record.access.caller import Caller
from ehcp_record.fhir.parameters import parameters
from tests.consent_support import load_issued_example
from tests.support import LA, need, outcome_code

SECTION = "http://ehcp-record.example.org/fhir/CodeSystem/ehcp-section"
REASON = "retention schedule RS-12: 25th birthday plus 6 years reached"


def _photo(api, child_id: str) -> str:
    document = {"resourceType": "DocumentReference", "status": "current", "docStatus": "preliminary",
                "subject": {"reference": f"Patient/{child_id}"},
                "category": [{"coding": [{"system": SECTION, "code": "A"}]}],
                "content": [{"attachment": {"contentType": "image/png"}}]}
    reference = api.post("/fhir/DocumentReference", document, api.la()).json()["id"]
    headers = {"Authorization": f"Bearer {api.la()}", "Content-Type": "image/png",
               "X-Security-Context": f"DocumentReference/{reference}"}
    upload = api.session.post(api.base + "/fhir/Binary", data=b"\x89PNG\r\n\x1a\n" + os.urandom(1000), headers=headers)
    assert upload.status_code == 201, upload.text
    return upload.json()["id"]


def _record(api, birth_date: str | None = None) -> dict:
    created = load_issued_example(api, birth_date)
    child = created["Patient"][0]["id"]
    return {"child": child, "plan": created["Composition"][0]["id"], "need": created["Condition"][0]["id"],
            "binary": _photo(api, child), "parent": created["parent_token"]}


def _paths(record: dict) -> list[str]:
    child, plan = record["child"], record["plan"]
    return [f"/fhir/Patient/{child}", f"/fhir/Patient/{child}/_history/1", f"/fhir/Patient/{child}/_history",
            f"/fhir/Condition/{record['need']}", f"/fhir/Composition/{plan}/$document",
            f"/fhir/Patient/{child}/$everything", f"/fhir/Binary/{record['binary']}"]


def _erase(api, child: str, token: str, reason: str | None = REASON):
    body = parameters(reason=("string", reason)) if reason is not None else {"resourceType": "Parameters"}
    return api.post(f"/fhir/Patient/{child}/$erase", body, token)


def _operator(api):
    """The custodian LA acting from the command line (`ehcp-record retention ...`)."""
    caller = Caller(Actor(role="la", sub="cli:test", organization=LA), parse_scopes("user/*.rs user/Patient.u"),
                    issuer="urn:test")
    return api.services.records.for_caller(caller)


@pytest.fixture(scope="module")
def erased(api):
    gone, kept = _record(api, "1990-01-02"), _record(api)
    for path in _paths(gone) + _paths(kept):
        assert api.get(path, api.la()).status_code == 200, path
    assert _erase(api, gone["child"], gone["parent"]).status_code in (403, 404)  # the family cannot
    assert _erase(api, gone["child"], api.la(), reason=None).status_code == 400
    assert api.get(f"/fhir/Patient/{gone['child']}", api.la()).status_code == 200  # refusals changed nothing
    response = _erase(api, gone["child"], api.la())
    assert response.status_code == 200, response.text
    return {"gone": gone, "kept": kept, "answer": response.json()}


def test_every_path_to_the_erased_record_answers_410(api, erased):
    for path in _paths(erased["gone"]):
        response = api.get(path, api.la())
        assert response.status_code == 410, (path, response.status_code)
        assert outcome_code(response) == "deleted"
    gone = erased["gone"]
    media = api.session.get(f"{api.base}/fhir/Binary/{gone['binary']}", timeout=30,
                            headers={"Authorization": f"Bearer {api.la()}", "Accept": "image/png"})
    assert media.status_code == 410 and not media.content.startswith(b"\x89PNG")  # the raw bytes too
    assert api.get(f"/fhir/Composition/{gone['plan']}/_history/1/$document", api.la()).status_code == 410
    assert api.get(f"/fhir/Patient/{gone['child']}", gone["parent"]).status_code == 410  # for the family too
    child = erased["gone"]["child"]
    put = api.put(f"/fhir/Patient/{child}", {"resourceType": "Patient", "id": child}, api.la())
    assert put.status_code == 410
    assert api.post("/fhir/Condition", need(child), api.la()).status_code == 410
    assert _erase(api, child, api.la()).status_code == 410  # once only


def test_search_omits_the_erased_record(api, erased):
    gone, kept = erased["gone"]["child"], erased["kept"]["child"]
    found = api.get(f"/fhir/Patient?_id={gone},{kept}", api.la()).json()
    assert [e["resource"]["id"] for e in found.get("entry", [])] == [kept]
    assert api.get(f"/fhir/Condition?patient={gone}", api.la()).json()["total"] == 0
    history = api.get("/fhir/Patient/_history?_count=500", api.la()).json()
    ids = {e["resource"]["id"] for e in history.get("entry", []) if "resource" in e}
    assert kept in ids and gone not in ids


def test_nothing_else_is_affected(api, erased):
    for path in _paths(erased["kept"]):
        assert api.get(path, api.la()).status_code == 200, path
    verdict = api.get(f"/fhir/Patient/{erased['kept']['child']}/$verify-audit", api.la()).json()
    assert verdict["parameter"][0]["valueBoolean"] is True


def test_the_key_is_gone_and_the_chain_verifies_with_who_when_and_why(api, erased):
    gone, kept = erased["gone"]["child"], erased["kept"]["child"]
    verdict = api.get(f"/fhir/Patient/{gone}/$verify-audit", api.la()).json()  # audited: the chain goes on
    values = {p["name"]: p.get("part") or next(v for k, v in p.items() if k.startswith("value")) for p in verdict["parameter"]}
    assert verdict["parameter"][0]["valueBoolean"] is True, verdict
    erased_parts = {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in values["erased"]}
    assert erased_parts["reason"] == REASON and erased_parts["by"] == LA and erased_parts["at"], erased_parts
    [erase] = [e for e in api.services.repo.audit_entries(gone) if e["body"]["action"] == "erase"]
    assert erase["body"]["reason"] == REASON and erase["body"]["agent"]["organization"] == LA
    log = api.get(f"/fhir/Patient/{gone}/$access-log", api.la())
    assert log.status_code == 200 and REASON in log.text  # the custodian still sees who did what
    assert "verify-audit" in log.text  # entries appended since are readable (the deployment key) ...
    vault = MongoClient(api.settings.mongodb_uri)[api.settings.database].keyvault
    assert vault.find_one({"keyAltNames": gone}) is None  # ... and no new key was made for the record
    assert vault.find_one({"keyAltNames": kept}) is not None
    answer = {p["name"]: p for p in erased["answer"]["parameter"]}
    assert answer["reason"]["valueString"] == REASON and answer["erased"]["valueInstant"]


def test_retention_lists_due_records_and_a_legal_hold_blocks_erasure(api, erased):
    from datetime import date

    held, young = _record(api, "1990-03-04"), erased["kept"]["child"]
    store = _operator(api)
    due = {d.record: d.due for d in api.services.erasure.due(store, date.today())}
    assert held["child"] in due and due[held["child"]] == date(2021, 3, 4)  # 25 + 6 years
    assert young not in due and erased["gone"]["child"] not in due  # not yet; already erased
    _operator(api).place_legal_hold(held["child"], "claim 2026-77 pending")
    assert held["child"] not in {d.record for d in api.services.erasure.due(_operator(api), date.today())}
    refused = _erase(api, held["child"], api.la())
    assert refused.status_code == 409 and "legal hold" in refused.text
    assert api.get(f"/fhir/Patient/{held['child']}", api.la()).status_code == 200
    _operator(api).lift_legal_hold(held["child"], "claim settled")
    assert _erase(api, held["child"], api.la()).status_code == 200


def test_the_daily_job_and_legal_holds_from_the_command_line(api, monkeypatch, capsys):
    from api.cli import main

    old = api.new_child(birthDate="1980-07-01")["id"]
    monkeypatch.setenv("EHCP_MONGODB_URI", api.settings.mongodb_uri)
    monkeypatch.setenv("EHCP_DATABASE", api.settings.database)
    monkeypatch.setenv("EHCP_DATA_DIR", str(api.settings.data_dir))
    assert main(["retention", "due", "--organization", LA]) == 0
    listed = capsys.readouterr().out
    assert f"Patient/{old}\tborn 1980-07-01\tdue 2011-07-01" in listed
    assert main(["retention", "hold", old, "--organization", LA, "--reason", "inquiry"]) == 0
    assert capsys.readouterr().out.strip() == f"held Patient/{old}"
    from datetime import date

    assert old not in {d.record for d in api.services.erasure.due(_operator(api), date.today())}
    assert _erase(api, old, api.la()).status_code == 409
