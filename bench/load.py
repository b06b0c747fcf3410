"""EHCP Record mixed load: the whole service at once, for a fixed time, then every audit chain.

Starts `ehcp-record serve` (gunicorn) on its own embedded mongod (bench/harness.py), seeds a few
dozen children through the API, each with a parent, an issued plan, and the parent's consents
for a school (read sections A and B) and a health trust (contribute to section K); then runs
`--clients` keep-alive clients for `--seconds`, each in one role:

- parents reading their child's plan, its `$document` and the record's `$access-log`;
- the LA amending plans: read the plan's resources, `$propose` a change, the parent
  `$respond`s (agree), the LA `$issue`s (each LA client has its own children);
- health pushing advice: a transaction Bundle with a DocumentReference in section K, allowed by
  the contribute consent;
- schools searching: `Patient?identifier=`, `Composition?patient=`, `Condition?patient=`.

Prints, per kind of request: count, throughput, p50/p95/p99 and errors. An error is any answer
that is not 2xx and not an expected business refusal (409 or 412 inside the LA's amendment
cycle, which then starts again), and any request with no answer. Afterwards every seeded
record's `$verify-audit` and `ehcp-record audit verify` over every chain.

    .venv/bin/python bench/load.py [--seconds 600] [--clients 16] [--quick] [--children 36] [--workers N]

Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from api.cli import default_workers  # noqa: E402
from bench.harness import Client, Server, measure, percentile  # noqa: E402
from bench.search import NHS, Seeder, nhs_number  # noqa: E402
from tests.consent_support import grant  # noqa: E402
from tests.e2e.plan_builders import draft_plan_bundle, ids_by_type, parent  # noqa: E402

LA, SCHOOL, HEALTH = "Organization/la-866", "Organization/school-1", "Organization/nhs-trust-1"
SECTION = "http://ehcp-record.example.org/fhir/CodeSystem/ehcp-section"
PLAN_TYPES = ("Condition", "Goal", "CarePlan", "Composition")
#: client i plays ROLES[i % 16]: 6 parents, 4 schools, 3 health, 3 LA per 16 clients
ROLES = ["parent", "school", "health", "la", "parent", "school", "parent", "health",
         "la", "parent", "school", "parent", "health", "la", "school", "parent"]
#: the business refusals the LA's cycle expects now and then (a plan moved on meanwhile)
EXPECTED_REFUSALS = frozenset({409, 412})
SEEDERS = 4


class Recorder:
    """Latency, expected refusals and errors per kind of request, from every client thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.refused: dict[str, int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self.samples: list[str] = []
        self.cycles = 0

    def call(self, kind: str, send: Callable[[], object], refusals: frozenset[int] = frozenset()):
        """Time one request; returns the reply when 2xx, None otherwise (refusal or error)."""
        started = time.perf_counter()
        try:
            reply = send()
        except Exception as exc:  # noqa: BLE001 - no answer at all counts as an error
            reply, status, text = None, 0, repr(exc)
        else:
            status, text = reply.status_code, reply.text[:200]
        elapsed = time.perf_counter() - started
        with self.lock:
            self.latencies[kind].append(elapsed)
            if 200 <= status < 300:
                return reply
            if status in refusals:
                self.refused[kind] += 1
            else:
                self.errors[kind] += 1
                if len(self.samples) < 10:
                    self.samples.append(f"{kind}: {status} {text}")
        return None


# --- seeding ----------------------------------------------------------------------------

def seed(server: Server, count: int) -> list[dict]:
    """`count` children, each with a parent, an issued plan, and consents for the school and
    the health trust; returned as {"k", "patient", "parent", "parent_token", "ids"}."""
    Seeder(server).directory()
    la_token = server.token("la", organization=LA)

    def one(k: int) -> dict:
        la = Client(server.base, la_token)
        patient = la.post("/fhir/Patient", {"resourceType": "Patient", "birthDate": f"{2012 + k % 6}-03-14",
                                            "name": [{"family": f"Load{k}", "given": ["Sam"]}],
                                            "identifier": [{"system": NHS, "value": nhs_number(k)}]})
        assert patient.status_code == 201, patient.text[:500]
        child = patient.json()["id"]
        mum = la.post("/fhir/RelatedPerson", parent(child, "Alex"))
        assert mum.status_code == 201, mum.text[:500]
        plan = la.post("/fhir", draft_plan_bundle(child))
        assert plan.status_code == 200, plan.text[:500]
        record = {"k": k, "patient": child, "parent": f"RelatedPerson/{mum.json()['id']}",
                  "ids": ids_by_type(plan.json())}
        record["parent_token"] = server.token("parent", fhir_user=record["parent"])
        steps = amendment(la, record, Recorder(), lambda r: None)
        assert all(step is not None for step in steps), "seeding could not issue a plan"
        for recipient, sections, actions, role in ((SCHOOL, ["A", "B"], ("read",), "school"),
                                                   (HEALTH, ["K"], ("contribute",), "health")):
            body = grant(child, record["parent"], recipient, sections, actions=actions, role=role)
            reply = la.request("POST", "/fhir/Consent", body, token=record["parent_token"])
            assert reply.status_code == 201, reply.text[:500]
        la.connection.close()
        return record

    with ThreadPoolExecutor(SEEDERS) as pool:
        records = list(pool.map(one, range(count)))
    # the consents work: the school finds the child by NHS number
    school = Client(server.base, server.token("school", organization=SCHOOL))
    found = school.get(f"/fhir/Patient?identifier={quote(NHS, safe=':/')}|{nhs_number(records[0]['k'])}").json()
    assert found.get("total") == 1, found
    return records


# --- what each role does ----------------------------------------------------------------

def amendment(client: Client, record: dict, recorder: Recorder, change: Callable[[dict], None]) -> list:
    """One whole amendment as the LA and the family: read, $propose, $respond, $issue.
    Returns the replies (None where refused or failed; it stops at the first)."""
    replies = []
    entries = []
    for resource_type in PLAN_TYPES:
        path = f"/fhir/{resource_type}/{record['ids'][resource_type]}"
        reply = recorder.call("LA read plan resource", lambda: client.get(path))
        replies.append(reply)
        if reply is None:
            return replies
        resource = reply.json()
        resource.pop("meta", None)
        change(resource)
        entries.append({"resource": resource, "request": {"method": "PUT", "url": f"{resource_type}/{resource['id']}"}})
    proposal = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    plan = record["ids"]["Composition"]
    task = recorder.call("LA $propose", lambda: client.post(f"/fhir/Composition/{plan}/$propose", proposal),
                         EXPECTED_REFUSALS)
    replies.append(task)
    if task is None:
        return replies
    task_id = task.json()["id"]
    answer = {"resourceType": "Parameters", "parameter": [{"name": "response", "valueCode": "agree"}]}
    replies.append(recorder.call("parent $respond", lambda: client.request(
        "POST", f"/fhir/Task/{task_id}/$respond", answer, token=record["parent_token"]), EXPECTED_REFUSALS))
    if replies[-1] is None:
        return replies
    replies.append(recorder.call("LA $issue", lambda: client.post(f"/fhir/Task/{task_id}/$issue", {}),
                                 EXPECTED_REFUSALS))
    return replies


def la_steps(client: Client, mine: list[dict], recorder: Recorder, chooser: random.Random) -> Iterator[None]:
    def change(resource: dict) -> None:
        if resource["resourceType"] == "Goal":
            resource["description"]["text"] = f"Sam will use {chooser.randint(3, 9)}-word sentences ({uuid.uuid4().hex[:6]})"
    while True:
        record = chooser.choice(mine)
        replies = amendment(client, record, recorder, change)
        if len(replies) == len(PLAN_TYPES) + 3 and replies[-1] is not None:
            with recorder.lock:
                recorder.cycles += 1
        yield None


def parent_steps(client: Client, records: list[dict], recorder: Recorder, chooser: random.Random) -> Iterator[None]:
    while True:
        record = chooser.choice(records)
        token, plan, child = record["parent_token"], record["ids"]["Composition"], record["patient"]
        recorder.call("parent read plan", lambda: client.request("GET", f"/fhir/Composition/{plan}", token=token))
        yield None
        recorder.call("parent $document", lambda: client.request("GET", f"/fhir/Composition/{plan}/$document",
                                                                 token=token))
        yield None
        recorder.call("parent $access-log", lambda: client.request(
            "GET", f"/fhir/Patient/{child}/$access-log?_count=20", token=token))
        yield None


def health_steps(client: Client, records: list[dict], recorder: Recorder, chooser: random.Random) -> Iterator[None]:
    while True:
        record = chooser.choice(records)
        advice = {"resourceType": "DocumentReference", "status": "current", "docStatus": "final",
                  "subject": {"reference": f"Patient/{record['patient']}"},
                  "category": [{"coding": [{"system": SECTION, "code": "K"}]}],
                  "content": [{"attachment": {"contentType": "text/plain", "data": "UGFlZGlhdHJpYyBhZHZpY2U=",
                                              "title": f"Paediatric advice {uuid.uuid4().hex[:6]}"}}]}
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": advice,
             "request": {"method": "POST", "url": "DocumentReference"}}]}
        recorder.call("health advice Bundle", lambda: client.post("/fhir", bundle))
        yield None


def school_steps(client: Client, records: list[dict], recorder: Recorder, chooser: random.Random) -> Iterator[None]:
    while True:
        record = chooser.choice(records)
        identifier = f"/fhir/Patient?identifier={quote(NHS, safe=':/')}|{nhs_number(record['k'])}"
        for path in (identifier, f"/fhir/Composition?patient={record['patient']}",
                     f"/fhir/Condition?patient={record['patient']}"):
            recorder.call("school search", lambda: client.get(path))
            yield None


def make_worker(server: Server, records: list[dict], recorder: Recorder, clients: int) -> Callable[[int], Callable[[], None]]:
    la_clients = [i for i in range(clients) if ROLES[i % len(ROLES)] == "la"]
    tokens = {"la": server.token("la", organization=LA), "school": server.token("school", organization=SCHOOL),
              "health": server.token("health", organization=HEALTH), "parent": records[0]["parent_token"]}

    def build(index: int) -> Callable[[], None]:
        role = ROLES[index % len(ROLES)]
        client = Client(server.base, tokens[role], timeout=120)
        chooser = random.Random(index)
        if role == "la":  # each LA client amends its own children: no two propose on one plan at once
            slot = la_clients.index(index)
            steps = la_steps(client, records[slot::len(la_clients)] or records, recorder, chooser)
        else:
            steps = {"parent": parent_steps, "school": school_steps, "health": health_steps}[role](
                client, records, recorder, chooser)
        return lambda: next(steps)
    return build


# --- afterwards: every audit chain --------------------------------------------------------

def verify_audit(server: Server, records: list[dict]) -> tuple[int, int, int, list[str]]:
    """($verify-audit valid records, records, CLI exit code, CLI summary lines)."""
    client = Client(server.base, server.token("la", organization=LA), timeout=300)
    valid = 0
    for record in records:
        reply = client.get(f"/fhir/Patient/{record['patient']}/$verify-audit")
        parameters = {p["name"]: p for p in reply.json().get("parameter", [])} if reply.status_code == 200 else {}
        valid += bool(parameters.get("valid", {}).get("valueBoolean"))
    env = {**os.environ, "EHCP_DATA_DIR": str(server.data_dir), "EHCP_MONGODB_URI": server.mongo_uri,
           "EHCP_ENV": "local", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cli = subprocess.run([sys.executable, "-m", "api.cli", "audit", "verify"], capture_output=True, text=True,
                         env=env, timeout=1800)
    lines = cli.stdout.strip().splitlines()
    bad = [line for line in lines if not line.endswith(", ok")]
    entries = sum(int(line.split(": ", 1)[1].split()[0]) for line in lines if line.endswith(", ok"))
    summary = [f"{len(lines)} chains, {entries:,} entries, {len(bad)} not ok"] + bad[:5]
    if cli.returncode and not lines:
        summary.append(cli.stderr.strip()[-500:])
    return valid, len(records), cli.returncode, summary


def report(recorder: Recorder, overall: dict, args: argparse.Namespace, workers: int, records: int) -> int:
    counts = defaultdict(int)
    for i in range(args.clients):
        counts[ROLES[i % len(ROLES)]] += 1
    seconds = overall["requests"] / overall["per_second"] if overall["per_second"] else 0.0
    print(f"EHCP Record mixed load: {args.clients} clients ({counts['parent']} parents, {counts['la']} LA, "
          f"{counts['health']} health, {counts['school']} schools), {seconds:.0f} s, {workers} gunicorn workers, "
          f"{records} children with issued plans")
    print(f"{'kind':24} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'refused':>8} {'errors':>7}")
    every: list[float] = []
    for kind in sorted(recorder.latencies):
        latencies = sorted(recorder.latencies[kind])
        every += latencies
        print(f"{kind:24} {len(latencies):>9} {len(latencies) / seconds:>8.1f} {1000 * percentile(latencies, .5):>8.1f} "
              f"{1000 * percentile(latencies, .95):>8.1f} {1000 * percentile(latencies, .99):>8.1f} "
              f"{recorder.refused[kind]:>8} {recorder.errors[kind]:>7}")
    every.sort()
    errors = sum(recorder.errors.values())
    print(f"{'all':24} {len(every):>9} {len(every) / seconds:>8.1f} {1000 * percentile(every, .5):>8.1f} "
          f"{1000 * percentile(every, .95):>8.1f} {1000 * percentile(every, .99):>8.1f} "
          f"{sum(recorder.refused.values()):>8} {errors:>7}")
    print(f"amendments issued (propose -> respond -> issue): {recorder.cycles}")
    print(f"errors: {errors} (any answer that is not 2xx and not a 409/412 business refusal in the LA's cycle,"
          f" or no answer)")
    for sample in recorder.samples:
        print(f"  {sample}")
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="a 30 s smoke run")
    parser.add_argument("--children", type=int, default=36)
    parser.add_argument("--workers", type=int, default=default_workers(), help="gunicorn workers (default: as `serve`)")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 30.0
    with tempfile.TemporaryDirectory(prefix="ehcp-bench-load-") as tmp:
        server = Server(Path(tmp), args.workers)
        try:
            started = time.monotonic()
            records = seed(server, args.children)
            print(f"seeded {len(records)} children with issued plans and consents in "
                  f"{time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
            recorder = Recorder()
            overall = measure("mixed", args.clients, args.seconds, make_worker(server, records, recorder, args.clients),
                              max_seconds=args.seconds + 60)
            errors = report(recorder, overall, args, args.workers, len(records))
            started = time.monotonic()
            valid, total, code, summary = verify_audit(server, records)
            print(f"audit: $verify-audit valid for {valid} of {total} records; `ehcp-record audit verify` exit {code}: "
                  f"{summary[0]} ({time.monotonic() - started:.0f} s)")
            for line in summary[1:]:
                print(f"  {line}")
        finally:
            server.stop()
    return 0 if errors == 0 and valid == total and code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
