"""The caller-scoped store: how much a read and a search cost, the named privileged writes,
per-type scopes on `$document`, and batched audit appends under concurrency.

Round trips are counted with pymongo's command monitoring on the server's own client, so a
change that adds a query per record in custody, or a Subscription query per commit, fails here.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from pymongo import monitoring

from ehcp_record.access.policy import Refusal
from ehcp_record.access.scoped import ScopedStore
from tests.consent_support import grant, load_issued_example
from tests.support import need


class Commands(monitoring.CommandListener):
    """Counts the commands sent while `recording` (register once, before the app's client)."""

    def __init__(self) -> None:
        self.recording = False
        self.seen: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if (self.recording and event.command_name not in ("endSessions", "hello", "isMaster", "ping")
                and threading.current_thread().name != "subscription-cache"):  # the cache's change stream
            collection = event.command.get(event.command_name)
            detail = str(event.command.get("filter") or event.command.get("pipeline") or "")
            with self.lock:
                self.seen.append((event.command_name, collection if isinstance(collection, str) else "", detail))

    def succeeded(self, event) -> None: ...

    def failed(self, event) -> None: ...

    def count(self, action, filters: bool = False) -> list[tuple]:
        """The commands `action` sent: (name, collection), with the filter text if asked."""
        with self.lock:
            self.seen = []
        self.recording = True
        try:
            action()
        finally:
            self.recording = False
        with self.lock:
            return [c if filters else c[:2] for c in self.seen]


COMMANDS = Commands()
monitoring.register(COMMANDS)  # at import, so the module's server client (conftest `api`) has it


def _children(api, count: int, organization: str = "Organization/la-866") -> list[str]:
    token = api.token("la", organization)
    entries = []
    for _ in range(count):
        entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": {"resourceType": "Patient", "birthDate": "2015-03-14"},
                        "request": {"method": "POST", "url": "Patient"}})
    response = api.post("/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": entries}, token)
    assert response.status_code == 200, response.text
    return [e["response"]["location"].split("/")[1] for e in response.json()["entry"]]


def test_a_read_is_two_round_trips(api):
    child = api.new_child()
    api.get(f"/fhir/Patient/{child['id']}", api.la())  # warm: the chain has a checkpoint already
    seen = COMMANDS.count(lambda: api.get(f"/fhir/Patient/{child['id']}", api.la()), filters=True)
    assert [c[:2] for c in seen] == [("aggregate", "current"), ("insert", "audit")], seen
    assert "'audit'" not in seen[0][2]  # the chain's tip is the anchor's mark, not a lookup


def test_an_entry_links_to_the_tip_the_database_holds_when_the_mark_lags(api):
    """The chain's tip comes from the anchor's mark, not a query. A mark behind the database
    (as on a host whose anchor another host's appends did not raise) makes the entry collide on
    (record, seq); it is appended again at the database's tip, and the chain still verifies."""
    child = api.new_child()["id"]
    token = api.la()
    api.get(f"/fhir/Patient/{child}", token)
    audit = api.services.repo.db.audit
    before = list(audit.find({"record": child}, {"seq": 1, "hash": 1}).sort("seq", 1))
    lagging = before[-2]  # the entry before the tip
    mark = api.settings.data_dir / "anchor" / api.settings.database / f"{child}.seq"
    seq, digest, signed_at = mark.read_text().split()
    assert (int(seq), digest) == (before[-1]["seq"], before[-1]["hash"])
    mark.write_text(f"{lagging['seq']} {lagging['hash']} {signed_at}\n")
    seen = COMMANDS.count(lambda: api.get(f"/fhir/Patient/{child}", token))
    assert [name for name, _ in seen] == ["aggregate", "insert", "find", "insert"], seen
    after = list(audit.find({"record": child}, {"seq": 1, "prev": 1}).sort("seq", 1))
    assert len(after) == len(before) + 1 and after[-1]["seq"] == before[-1]["seq"] + 1
    assert after[-1]["prev"] == before[-1]["hash"]
    verdict = api.get(f"/fhir/Patient/{child}/$verify-audit", token).json()
    assert {p["name"]: p.get("valueBoolean") for p in verdict["parameter"]}["valid"] is True, verdict
    assert COMMANDS.count(lambda: api.get(f"/fhir/Patient/{child}", token)) == [("aggregate", "current"),
                                                                               ("insert", "audit")]


def test_search_cost_does_not_grow_with_the_records_in_custody(api):
    ident = f"urn:test|{uuid.uuid4()}"
    child = api.new_child(identifier=[{"system": "urn:test", "value": ident.split("|")[1]}])
    query = f"/fhir/Patient?identifier={ident}"

    def search():
        response = api.get(query, api.la())
        assert response.status_code == 200 and response.json()["total"] == 1, response.text
        assert response.json()["entry"][0]["resource"]["id"] == child["id"]

    search()
    small = COMMANDS.count(search)
    _children(api, 150)
    large = COMMANDS.count(search)
    assert len(large) == len(small) <= 8, (small, large)
    assert Counter(name for name, _ in large)["insert"] == 1  # the response's audit, one insert


def test_a_commit_asks_nothing_about_subscriptions(api):
    child = api.new_child()
    seen = COMMANDS.count(lambda: api.post("/fhir/Condition", need(child["id"]), api.la()), filters=True)
    scans = [c for c in seen if c[0] in ("find", "aggregate") and "Subscription" in c[2]]
    assert seen and scans == [], seen


def test_a_subscription_made_here_is_known_at_once(api):
    """The cache is refreshed by the writing process itself, not only by the change stream."""
    child = api.new_child()
    body = {"resourceType": "Subscription", "status": "requested", "reason": "test",
            "criteria": f"Condition?patient=Patient/{child['id']}",
            "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook"}}
    assert api.post("/fhir/Subscription", body, api.la()).status_code == 201
    active = api.services.records.active_subscriptions({"Condition"})
    assert any(s.resource["criteria"] == body["criteria"] for s in active)


def test_document_leaves_out_types_the_token_does_not_cover(api):
    record = load_issued_example(api)
    plan = record["Composition"][0]
    narrow = api.token("la", "Organization/la-866", scope="user/Composition.rs")
    bundle = api.get(f"/fhir/Composition/{plan['id']}/$document", narrow).json()
    types = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert types == {"Composition"}, types
    cited = [entry["reference"] for section in bundle["entry"][0]["resource"].get("section", [])
             for entry in section.get("entry", [])]
    assert not [c for c in cited if not c.startswith("Composition/")], cited
    assert "signature" not in bundle  # not the signed whole: something was left out


def _store(api, token: str) -> ScopedStore:
    caller = api.services.verifier.caller(f"Bearer {token}", "127.0.0.1", "test", uuid.uuid4().hex)
    return api.services.records.for_caller(caller)


def test_arrival_tasks_are_refused_without_an_accepted_transfer(api):
    record = load_issued_example(api)
    child = record["Patient"][0]["id"]
    store = _store(api, api.token("la", "Organization/la-916"))
    notice = {"resourceType": "Task", "id": str(uuid.uuid4()), "status": "requested", "intent": "order",
              "for": {"reference": f"Patient/{child}"}}
    with pytest.raises(Refusal) as refused:
        store.prepare_server_task(notice, None, "accept-transfer", "arrival")
    assert refused.value.status == 403


def test_a_parental_response_needs_the_decision_maker(api):
    record = load_issued_example(api)
    child = record["Patient"][0]["id"]
    store = _store(api, api.token("school", "Organization/school-1"))
    answered = {"resourceType": "Task", "id": str(uuid.uuid4()), "status": "completed", "intent": "order",
                "for": {"reference": f"Patient/{child}"}}
    with pytest.raises(Refusal) as refused:
        store.prepare_server_task(answered, None, "respond:agree", "respond")
    assert refused.value.status == 404  # the school may not know the record exists


def test_issuing_past_the_gate_needs_the_custodian(api):
    record = load_issued_example(api)
    plan = record["Composition"][0]
    parent = _store(api, record["parent_token"])
    with pytest.raises(Refusal) as refused:
        parent.prepare_issued_plan({k: v for k, v in plan.items() if k != "meta"}, plan["id"])
    assert refused.value.status == 403
    assert "custody" in refused.value.diagnostics


def test_each_named_write_is_audited_under_its_own_action(api):
    record = load_issued_example(api)
    child = record["Patient"][0]["id"]
    actions = {e["body"]["reason"] for e in api.services.repo.audit_entries(child) if e["body"]["action"] == "update"}
    actions |= {e["body"]["action"] for e in api.services.repo.db.audit.find({"record": child})}
    assert {"respond:agree", "issue"} <= actions, actions


def test_concurrent_batched_audits_never_fork_a_chain(api):
    """Reads of one record and searches across many append at the same tips at once; every
    chain still verifies and has no gap."""
    children = [api.new_child()["id"] for _ in range(4)]
    token = api.la()

    def work(index: int) -> int:
        child = children[index % len(children)]
        if index % 3 == 0:
            return api.get("/fhir/Patient?birthdate=2015-03-14&_count=50", token).status_code
        return api.get(f"/fhir/Patient/{child}", token).status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        assert set(pool.map(work, range(120))) == {200}
    for child in children:
        verdict = api.get(f"/fhir/Patient/{child}/$verify-audit", token).json()
        values = {p["name"]: p.get("valueBoolean", p.get("valueInteger")) for p in verdict["parameter"]}
        assert values["valid"] is True, verdict
        seqs = [e["seq"] for e in api.services.repo.db.audit.find({"record": child}, {"seq": 1}).sort("seq", 1)]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs[:20]  # no gap, no repeat


def test_consented_reader_search_costs_the_same_few_queries(api):
    record = load_issued_example(api)
    child = record["Patient"][0]["id"]
    mum = record["RelatedPerson"][0]["id"]
    assert api.post("/fhir/Consent", grant(child, f"RelatedPerson/{mum}", "Organization/school-9", ["A", "B"]),
                    record["parent_token"]).status_code == 201
    school = api.token("school", "Organization/school-9")
    seen = COMMANDS.count(lambda: api.get(f"/fhir/Condition?patient={child}", school))
    assert len(seen) <= 8, seen


def test_an_las_search_fetches_consents_only_for_matches_beyond_its_custody(api):
    """Custody decides an LA's own records without a consent, so its search is the page's
    aggregate and the audit insert; a match shared with it from another LA's custody brings
    one query for that record's consents, which then decide (here: section A only)."""
    from tests.e2e.plan_builders import parent

    child = api.new_child()
    nhs = next(i["value"] for i in child["identifier"] if "nhs-number" in i["system"])
    by_nhs = f"/fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}"
    api.get(by_nhs, api.la())
    assert COMMANDS.count(lambda: api.get(by_nhs, api.la())) == [("aggregate", "current"), ("insert", "audit")]

    mum = api.post("/fhir/RelatedPerson", parent(child["id"], "Alex"), api.la()).json()["id"]
    other_la = f"Organization/la-{uuid.uuid4().hex[:6]}"
    other = api.token("la", other_la)
    mum_token = api.token("parent", None, fhir_user=f"RelatedPerson/{mum}")
    body = grant(child["id"], f"RelatedPerson/{mum}", other_la, ["A"], role="la")
    assert api.post("/fhir/Consent", body, mum_token).status_code == 201
    seen = COMMANDS.count(lambda: api.get(by_nhs, other), filters=True)
    assert [c[:2] for c in seen] == [("aggregate", "current"), ("find", "current"), ("insert", "audit")], seen
    assert "Consent" in seen[1][2]
    found = api.get(by_nhs, other).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [child["id"]]


def test_a_schools_search_takes_its_shared_records_in_one_command(api):
    """A reader who holds no custody (a school) finds the records consents share with it in the
    same command as the page: one aggregate and the audit insert. What it finds is exactly what
    it may see, in the server's order, each resource once even when it is both in a shared
    record and addressed to the school."""
    school_org = f"Organization/school-{uuid.uuid4().hex[:8]}"
    school = api.token("school", school_org)
    shared = [load_issued_example(api) for _ in range(3)]
    unshared = load_issued_example(api)
    for record in shared:
        child, mum = record["Patient"][0]["id"], record["RelatedPerson"][0]["id"]
        assert api.post("/fhir/Consent", grant(child, f"RelatedPerson/{mum}", school_org, ["A", "B"]),
                        record["parent_token"]).status_code == 201
    nhs = next(i["value"] for i in shared[0]["Patient"][0]["identifier"] if "nhs-number" in i["system"])
    query = f"/fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}"
    api.get(query, school)
    assert COMMANDS.count(lambda: api.get(query, school)) == [("aggregate", "current"), ("insert", "audit")]
    assert [e["resource"]["id"] for e in api.get(query, school).json()["entry"]] == [shared[0]["Patient"][0]["id"]]

    ids = [r["Patient"][0]["id"] for r in shared]
    page = api.get("/fhir/Patient?_count=10", school).json()
    by_la = api.get(f"/fhir/Patient?_id={','.join(ids)}&_count=10", api.la()).json()
    assert page["total"] == 3 and [e["resource"]["id"] for e in page["entry"]] == [e["resource"]["id"] for e in by_la["entry"]]
    hidden = next(i["value"] for i in unshared["Patient"][0]["identifier"] if "nhs-number" in i["system"])
    assert api.get(f"/fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{hidden}", school).json()["total"] == 0

    task = {"resourceType": "Task", "status": "requested", "intent": "order", "for": {"reference": f"Patient/{ids[1]}"},
            "owner": {"reference": school_org}, "description": "Advice for section F, please"}
    made = api.post("/fhir/Task", task, api.la())
    assert made.status_code == 201, made.text
    found = api.get(f"/fhir/Task?patient={ids[1]}&_count=50", school).json()
    assert [e["resource"]["id"] for e in found.get("entry", [])].count(made.json()["id"]) == 1, found
    everywhere = api.get("/fhir/Task?_count=50", school).json()
    assert [e["resource"]["id"] for e in everywhere.get("entry", [])].count(made.json()["id"]) == 1, everywhere
