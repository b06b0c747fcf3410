"""EHCP Record benchmark: figures and ratios, printed (never asserted in tests).

Starts `ehcp-record serve` (gunicorn) on its own embedded mongod in a temp dir, loads data
through the API, and measures with real HTTP clients on loopback:
- single-resource read and update throughput and latency at 1 and 8 clients;
- read latency at history depth 1 vs 1,000;
- the same reads and transactional writes done directly with pymongo (ratio API / raw);
- a consented school read vs the custodian LA's read of the same resource;
- `$document` of a 40-entry plan (stored issued copy, and a fresh render of a draft).

    .venv/bin/python bench/bench.py [--quick] [--workers N] [--records N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from pymongo import MongoClient
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from api.auth import issue_dev_token  # noqa: E402
from api.cli import default_workers  # noqa: E402
from bench.harness import Client, Server, measure  # noqa: E402
from ehcp_record.config import load_settings  # noqa: E402
from tests.consent_support import grant  # noqa: E402
from tests.support import nhs_number  # noqa: E402  (one record per NHS number)
from tests.e2e.plan_builders import parent  # noqa: E402

LA = "Organization/la-866"
SECTION = "http://ehcp-record.example.org/fhir/CodeSystem/ehcp-section"
NEED = "http://ehcp-record.example.org/fhir/CodeSystem/sen-primary-need"


def child_body(n: int) -> dict:
    return {"resourceType": "Patient", "birthDate": "2015-03-14", "name": [{"family": f"Bench{n}"}],
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs_number()}]}


def load_children(client: Client, count: int) -> list[dict]:
    """Four loaders, each with its own connection (a connection is not shared between threads)."""
    token = client.headers["Authorization"].split()[1]

    def load(part: int) -> list[dict]:
        own = Client(client.base, token)
        return [own.post("/fhir/Patient", child_body(n)).json() for n in range(part, count, 4)]
    with ThreadPoolExecutor(4) as pool:
        return [child for part in pool.map(load, range(4)) for child in part]


def read_benchmarks(server: Server, la: Client, children: list[dict], seconds: float) -> list[dict]:
    token = la.headers["Authorization"].split()[1]
    results = []
    for clients in (1, 8):
        def worker(index: int) -> Callable[[], None]:
            client = Client(server.base, token)
            ids = [c["id"] for c in children[index::8]] or [children[0]["id"]]
            counter = iter(range(10**9))

            def work() -> None:
                response = client.get(f"/fhir/Patient/{ids[next(counter) % len(ids)]}")
                assert response.status_code == 200, response.text
            return work
        results.append(measure("API read Patient", clients, seconds, worker))
    return results


def update_benchmarks(server: Server, la: Client, children: list[dict], seconds: float) -> list[dict]:
    token = la.headers["Authorization"].split()[1]
    results = []
    for clients in (1, 8):
        def worker(index: int) -> Callable[[], None]:
            client = Client(server.base, token)
            child = dict(children[index])
            state = {"version": int(client.get(f"/fhir/Patient/{child['id']}").json()["meta"]["versionId"])}

            def work() -> None:
                body = dict(child, name=[{"family": f"U{state['version']}"}])
                response = client.put(f"/fhir/Patient/{child['id']}", body, state["version"])
                assert response.status_code == 200, response.text
                state["version"] += 1
            return work
        results.append(measure("API update Patient", clients, seconds, worker))
    return results


def history_depth(la: Client, depth: int, samples: int) -> dict:
    deep = la.post("/fhir/Patient", child_body(-1)).json()
    for version in range(1, depth):
        la.put(f"/fhir/Patient/{deep['id']}", dict(deep, name=[{"family": f"D{version}"}]), version)
    fresh = la.post("/fhir/Patient", child_body(-2)).json()

    def one(resource_id: str) -> float:
        started = time.perf_counter()
        assert la.get(f"/fhir/Patient/{resource_id}").status_code == 200
        return time.perf_counter() - started

    for _ in range(20):
        one(fresh["id"]), one(deep["id"])
    shallow, deeper = [], []
    for _ in range(samples):  # interleaved, so drift in the machine's load falls on both alike
        shallow.append(one(fresh["id"]))
        deeper.append(one(deep["id"]))
    shallow_ms, deep_ms = statistics.median(shallow) * 1000, statistics.median(deeper) * 1000
    return {"name": f"read at history depth 1 vs {depth}", "depth1_p50_ms": shallow_ms,
            f"depth{depth}_p50_ms": deep_ms, "ratio": deep_ms / shallow_ms}


def raw_benchmarks(server: Server, seconds: float) -> list[dict]:
    """The database's own limit: the same reads and transactional writes without the API."""
    client = MongoClient(server.mongo_uri, w="majority")
    db = client.get_database("ehcp_record", write_concern=WriteConcern("majority"))
    ids = [d["_id"] for d in db.current.find({"type": "Patient"}, {"_id": 1}).limit(200)]
    results = []
    for clients in (1, 8):
        def reader(index: int) -> Callable[[], None]:
            counter = iter(range(10**9))
            return lambda: db.current.find_one({"_id": ids[next(counter) % len(ids)]})
        results.append(measure("raw find_one", clients, seconds, reader))
    scratch = db.bench_scratch
    for clients in (1, 8):
        def writer(index: int) -> Callable[[], None]:
            key = f"w{index}-{uuid.uuid4().hex[:6]}"
            scratch.insert_one({"_id": key, "vid": 0})
            state = {"vid": 0}

            def work() -> None:
                def txn(session) -> None:
                    scratch.find_one_and_replace({"_id": key, "vid": state["vid"]}, {"vid": state["vid"] + 1}, session=session)
                    db.bench_history.insert_one({"k": key, "vid": state["vid"] + 1}, session=session)
                    db.bench_audit.insert_one({"k": key, "vid": state["vid"] + 1}, session=session)
                with client.start_session() as session:
                    session.with_transaction(txn, read_concern=ReadConcern("snapshot"), write_concern=WriteConcern("majority"))
                state["vid"] += 1
            return work
        results.append(measure("raw txn write", clients, seconds, writer))
    client.close()
    return results


def consent_overhead(server: Server, la: Client, samples: int) -> dict:
    """A school's consented read of an outcome vs the custodian LA's read of the same one."""
    child = la.post("/fhir/Patient", child_body(-3)).json()
    mum = la.post("/fhir/RelatedPerson", parent(child["id"], "Alex")).json()
    need = la.post("/fhir/Condition", {"resourceType": "Condition", "subject": {"reference": f"Patient/{child['id']}"},
                                       "category": [{"coding": [{"system": SECTION, "code": "B"}]}],
                                       "code": {"coding": [{"system": NEED, "code": "SLCN"}]}}).json()
    settings = load_settings({"data_dir": str(server.data_dir)})
    parent_client = Client(server.base, issue_dev_token(settings, "parent", fhir_user=f"RelatedPerson/{mum['id']}"))
    assert parent_client.post("/fhir/Consent", grant(child["id"], f"RelatedPerson/{mum['id']}", "Organization/school-1",
                                                     ["B"])).status_code == 201
    school = Client(server.base, issue_dev_token(settings, "school", organization="Organization/school-1"))

    def timed(client: Client) -> float:
        values = []
        for _ in range(samples):
            started = time.perf_counter()
            assert client.get(f"/fhir/Condition/{need['id']}").status_code == 200
            values.append(time.perf_counter() - started)
        return statistics.median(values) * 1000

    timed(la), timed(school)
    la_ms, school_ms = timed(la), timed(school)
    return {"name": "consented school read vs LA read", "la_p50_ms": la_ms, "school_p50_ms": school_ms,
            "ratio": school_ms / la_ms}


def document_benchmark(server: Server, la: Client, samples: int) -> dict:
    """`$document` of a plan with 40 section entries: 10 needs, 15 outcomes, 15 provisions."""
    from tests.e2e.test_statutory_process import respond

    child = la.post("/fhir/Patient", child_body(-4)).json()
    mum = la.post("/fhir/RelatedPerson", parent(child["id"], "Alex")).json()
    subject = {"reference": f"Patient/{child['id']}"}
    entries, needs, goals, provisions = [], [], [], []
    for n in range(10):
        url = f"urn:uuid:{uuid.uuid4()}"
        needs.append(url)
        entries.append({"fullUrl": url, "request": {"method": "POST", "url": "Condition"}, "resource": {
            "resourceType": "Condition", "subject": subject, "category": [{"coding": [{"system": SECTION, "code": "B"}]}],
            "code": {"coding": [{"system": NEED, "code": "SLCN"}]}}})
    for n in range(15):
        url = f"urn:uuid:{uuid.uuid4()}"
        goals.append(url)
        entries.append({"fullUrl": url, "request": {"method": "POST", "url": "Goal"}, "resource": {
            "resourceType": "Goal", "lifecycleStatus": "active", "subject": subject,
            "category": [{"coding": [{"system": SECTION, "code": "E"}]}], "description": {"text": f"Outcome {n}"},
            "addresses": [{"reference": needs[n % 10]}], "target": [{"dueDate": "2027-07-20"}]}})
    for n in range(15):
        url = f"urn:uuid:{uuid.uuid4()}"
        provisions.append(url)
        entries.append({"fullUrl": url, "request": {"method": "POST", "url": "CarePlan"}, "resource": {
            "resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": subject,
            "category": [{"coding": [{"system": SECTION, "code": "F"}]}], "goal": [{"reference": goals[n]}],
            "activity": [{"detail": {"status": "scheduled", "description": f"Provision {n}: 1:1 teaching assistant support",
                                     "scheduledString": "30 minutes, 3 times a week", "goal": [{"reference": goals[n]}],
                                     "performer": [{"display": "Teaching assistant"}]}}]}})

    def text(code: str) -> dict:
        return {"title": code, "code": {"coding": [{"system": SECTION, "code": code}]},
                "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">See plan.</div>'}}
    sections = [text("A"), {"title": "B", "code": {"coding": [{"system": SECTION, "code": "B"}]}, "entry": [{"reference": r} for r in needs]},
                text("C"), text("D"),
                {"title": "E", "code": {"coding": [{"system": SECTION, "code": "E"}]}, "entry": [{"reference": r} for r in goals]},
                {"title": "F", "code": {"coding": [{"system": SECTION, "code": "F"}]}, "entry": [{"reference": r} for r in provisions]},
                text("G"), text("H1"), text("H2"), text("I"), text("J"), text("K")]
    plan_url = f"urn:uuid:{uuid.uuid4()}"
    entries.append({"fullUrl": plan_url, "request": {"method": "POST", "url": "Composition"}, "resource": {
        "resourceType": "Composition", "status": "preliminary", "subject": subject, "date": "2026-11-01",
        "type": {"coding": [{"system": "http://ehcp-record.example.org/fhir/CodeSystem/ehcp-document-type", "code": "ehcp"}]},
        "author": [{"reference": LA}], "title": "EHCP", "section": sections}})
    response = la.post("/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert response.status_code == 200, response.text[:500]
    plan_id = response.json()["entry"][-1]["response"]["location"].split("/")[1]

    def timed(path: str) -> float:
        values = []
        for _ in range(samples):
            started = time.perf_counter()
            assert la.get(path).status_code == 200
            values.append(time.perf_counter() - started)
        return statistics.median(values) * 1000

    draft_ms = timed(f"/fhir/Composition/{plan_id}/$document")
    plan = la.get(f"/fhir/Composition/{plan_id}").json()
    plan.pop("meta")
    proposal = {"resourceType": "Bundle", "type": "transaction",
                "entry": [{"resource": plan, "request": {"method": "PUT", "url": f"Composition/{plan_id}"}}]}
    task = la.post(f"/fhir/Composition/{plan_id}/$propose", proposal).json()
    settings = load_settings({"data_dir": str(la.base and server.data_dir)})
    parent_client = Client(server.base, issue_dev_token(settings, "parent", fhir_user=f"RelatedPerson/{mum['id']}"))

    class _Api:  # the shape tests' respond() expects
        def post(self, path, body, token):
            return parent_client.post(path, body)
    respond(_Api(), task["id"], None, "agree")
    assert la.post(f"/fhir/Task/{task['id']}/$issue", {}).status_code == 200
    issued_ms = timed(f"/fhir/Composition/{plan_id}/$document")
    return {"name": "$document, 40-entry plan", "draft_render_p50_ms": draft_ms, "issued_stored_p50_ms": issued_ms}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=default_workers(), help="gunicorn workers (default: as `serve`)")
    parser.add_argument("--records", type=int, default=200)
    args = parser.parse_args()
    seconds = 3.0 if args.quick else 8.0
    depth = 200 if args.quick else 1000
    samples = 50 if args.quick else 200
    with tempfile.TemporaryDirectory(prefix="ehcp-bench-") as tmp:
        server = Server(Path(tmp), args.workers)
        try:
            la = Client(server.base, issue_dev_token(load_settings({"data_dir": tmp}), "la", organization=LA))
            children = load_children(la, args.records)
            rows = read_benchmarks(server, la, children, seconds) + update_benchmarks(server, la, children, seconds)
            rows += raw_benchmarks(server, seconds)
            extras = [history_depth(la, depth, samples), consent_overhead(server, la, samples),
                      document_benchmark(server, la, samples)]
        finally:
            server.stop()
    print(f"{'benchmark':32} {'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for row in rows:
        print(f"{row['name']:32} {row['clients']:>7} {row['per_second']:>9.1f} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f}")
    by = {(r["name"], r["clients"]): r for r in rows}
    for clients in (1, 8):
        read_ratio = by[("API read Patient", clients)]["per_second"] / by[("raw find_one", clients)]["per_second"]
        write_ratio = by[("API update Patient", clients)]["per_second"] / by[("raw txn write", clients)]["per_second"]
        print(f"API/raw throughput at {clients} client(s): reads {read_ratio:.3f}, writes {write_ratio:.3f}")
    for extra in extras:
        print(extra["name"] + ": " + ", ".join(f"{k} {v:.2f}" for k, v in extra.items() if k != "name"))
    print(json.dumps({"rows": rows, "extras": extras}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
