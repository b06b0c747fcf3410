"""EHCP Record search benchmark: search cost as an LA's custody grows, beside raw pymongo.

Starts the server exactly as `bench.py` does (bench/harness.py: gunicorn on its own embedded
mongod in a temp dir) and seeds it through the public API only, with transaction Bundles
POSTed to /fhir from several threads: Organization/la-866 opens N child records (Patient with
a valid NHS number and UPN, plus a draft Composition), Organization/la-916 opens a few hundred
of its own (so the visibility filter has something to exclude), and the parents of 200 of
la-866's children give Organization/school-1 read consent to sections A and B.

At each scale (default 2,000 then 20,000 records, the same database grown in place) it
measures at 1 and 8 clients (threads, each with its own keep-alive connection):

- LA  `GET /fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|<n>` (a random child of the working set)
- LA  `GET /fhir/Composition?patient=<id>`
- school `GET /fhir/Patient?identifier=...` and `GET /fhir/Composition?patient=<id>` of a
  consented child
- LA  `GET /fhir/Patient/<id>` (a single read)

beside raw pymongo on the same mongod doing the same logical query (indexed field or blind
token, type filter, the server's sort, limit), opening each result with the record's data key
(content is sealed at rest), plus one majority-acknowledged audit insert per request. Each
raw twin is timed straight after the API measure it is set beside, so a ratio compares two
runs seconds apart: on this shared 2-core machine the same load measured up to 1.7x faster
or slower from one minute to the next, and timing every raw twin after all the API measures
moved the ratios with it.
It also counts MongoDB operations per API request (serverStatus opcounters delta).

Working set: at every scale the LA's requests are about the same number of children
(`WORKING_SET`, 1,000, drawn at random from its whole custody, and warmed: `warm_working_set`),
as an LA's caseworkers work on the open cases of the term, not on a random child of
20,000 each time. What grows is what the issue is about: the custody each query's visibility,
index and sort cover. Drawing each request from the whole custody instead measured the
server's per-process caches (each record has its own data key, and a worker that has not met
a record fetches it from the key vault: one more round trip) and this machine's page cache,
not the custody's size: at 20,000 about one read in two fetched a key, raw pymongo's twin
likewise (2.0 queries per read, against 1.0).

Before timing each scale the database is let settle (`settle`): a checkpoint is forced and the
script waits until WiredTiger has written the load out. Seeding 18,000 records in 15 minutes
leaves mongod writing for a minute or more after; timed straight away, every figure at the
larger scale (raw pymongo's too) measured that write-back, not the size of the custody
(24,000 records: an LA's read p50 17.9 ms just after a load, 13.1 ms after `settle`; raw
read x8 296 against 570 req/s). An LA's server is not timed seconds after a bulk load.
Before that, the analytics extract is brought up to date (`catch_up_analytics`), so no
worker spends the timed minutes opening every record just loaded for it.
Then the server and its mongod are restarted on the same data (`restarted`): on this 2-core
machine the processes that had just loaded 18,000 records stayed slower for as long as they
ran (every figure at 20,000, raw pymongo's too, about twice the 2,000 one, settled or not,
while the same data served by freshly started processes measured within 1.05-1.17x of 2,000
at 1 client). Why is not found yet (not the WiredTiger cache size, not CPU throttling; the
kernel here pages out file cache untouched for a minute, DAMON).

Each API row also says how its clients' keep-alive connections were spread over the gunicorn
workers halfway through (`Server.connections_per_worker`, from /proc). A connection stays
with the worker that accepted it, and which one does is a race: 8 connections opened at once
were seen split 8/0, 7/1 and 6/2 as often as 4/4, and at 8/0 one worker's interpreter does
all the Python work while the other idles, so an x8 figure depends on that split as much as
on the code.

Targets (from the issue): search latency flat (largest scale within 1.2x of the smallest);
search throughput at least 30% of the raw figure; single reads not slower than today (this
script prints today's figure; compare runs).

    .venv/bin/python bench/search.py [--quick] [--records 2000,20000] [--workers N] [--seconds S] [--json FILE]
    make bench-search [BENCH_ARGS=--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from pymongo import ASCENDING, DESCENDING, MongoClient
from pymongo.write_concern import WriteConcern
from stdnum.gb import upn as stdnum_upn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from api.cli import default_workers  # noqa: E402
from bench.harness import Client, Server, measure, server_env  # noqa: E402
from ehcp_record.store.crypto import FieldCipher, local_master_keys  # noqa: E402
from ehcp_record.store.sealing import Sealing  # noqa: E402
from tests.consent_support import grant  # noqa: E402
from tests.e2e.plan_builders import parent  # noqa: E402

LA, OTHER_LA, SCHOOL = "Organization/la-866", "Organization/la-916", "Organization/school-1"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
UPN = "http://ehcp-record.example.org/fhir/NamingSystem/upn"
BASE = "http://ehcp-record.example.org/fhir"
OTHER_LA_RECORDS = 300
CONSENTED = 200
OTHER_LA_FIRST = 50_000  # child numbers of la-916's records (la-866's start at 0)
CHILDREN_PER_BUNDLE = 50  # 100-150 entries per POST /fhir
LOADERS = 4
#: The children an LA's requests are about at any scale (its open cases this term), drawn at
#: random from its whole custody: see the module docstring, "Working set".
WORKING_SET = 1_000
#: How the working set is warmed (`warm_working_set`): passes, and reads per connection.
WARM_PASSES = 8
WARM_CHUNK = 20
SEARCH_TARGET = 0.30
FLAT_TARGET = 1.2


# --- synthetic children -----------------------------------------------------------------

def nhs_number(k: int) -> str:
    """A valid (modulus 11) NHS number in the 999 test range, unique per k < 100,000."""
    stem = f"999{k:05d}"
    for ninth in "0123456789":
        first_nine = stem + ninth
        check = 11 - sum(int(d) * w for d, w in zip(first_nine, range(10, 1, -1))) % 11
        if check != 10:
            return first_nine + str(0 if check == 11 else check)
    raise AssertionError("unreachable: at most one ninth digit gives check 10")


def upn(k: int, la_number: str) -> str:
    """A valid UPN: check letter, LA number, establishment, year of issue, serial."""
    rest = f"{la_number}{2000 + k // 1000:04d}15{k % 1000:03d}"
    return stdnum_upn.calc_check_digit(rest) + rest


def child_entries(k: int, la: str, with_parent: bool) -> list[dict]:
    """A child's Patient and draft plan (and a parent), as transaction entries."""
    patient, plan, mum = (f"urn:uuid:{uuid.uuid4()}" for _ in range(3))
    la_number = la.rsplit("-", 1)[1]
    entries = [
        {"fullUrl": patient, "request": {"method": "POST", "url": "Patient"}, "resource": {
            "resourceType": "Patient", "birthDate": f"{2012 + k % 6}-0{1 + k % 9}-1{k % 10}",
            "name": [{"family": f"Search{k}", "given": ["Sam"]}],
            "identifier": [{"system": NHS, "value": nhs_number(k)}, {"system": UPN, "value": upn(k, la_number)}]}},
        {"fullUrl": plan, "request": {"method": "POST", "url": "Composition"}, "resource": {
            "resourceType": "Composition", "status": "preliminary", "subject": {"reference": patient},
            "type": {"coding": [{"system": f"{BASE}/CodeSystem/ehcp-document-type", "code": "ehcp"}]},
            "date": "2026-11-22", "author": [{"reference": la}], "title": "Draft EHCP", "section": []}},
    ]
    if with_parent:
        entries.append({"fullUrl": mum, "request": {"method": "POST", "url": "RelatedPerson"},
                        "resource": dict(parent(patient, "Alex"), patient={"reference": patient})})
    return entries


class Seeder:
    """Opens records through POST /fhir transaction Bundles, several loaders at once."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.tokens = {la: server.token("la", organization=la) for la in (LA, OTHER_LA)}
        self.children: dict[int, dict] = {}  # k -> {"nhs", "patient", "plan", "parent"?}

    def directory(self) -> None:
        for la in (LA, OTHER_LA):
            rid = la.split("/")[1]
            body = {"resourceType": "Organization", "id": rid, "name": f"Local authority {rid[3:]}",
                    "identifier": [{"system": f"{BASE}/NamingSystem/dfe-la-number", "value": rid[3:]}]}
            reply = Client(self.server.base, self.tokens[la]).put(f"/fhir/Organization/{rid}", body)
            assert reply.status_code in (200, 201), reply.text[:500]

    def open_records(self, la: str, ks: list[int], with_parent: Callable[[int], bool] = lambda k: False) -> float:
        """Open one record per k; returns records per second."""
        chunks = [ks[i:i + CHILDREN_PER_BUNDLE] for i in range(0, len(ks), CHILDREN_PER_BUNDLE)]

        def load(part: int) -> None:
            client = Client(self.server.base, self.tokens[la], timeout=300)
            for chunk in chunks[part::LOADERS]:
                entries = [e for k in chunk for e in child_entries(k, la, with_parent(k))]
                reply = client.post("/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": entries})
                assert reply.status_code == 200, reply.text[:800]
                made = iter(reply.json()["entry"])
                for k in chunk:
                    child = {"nhs": nhs_number(k), "la": la}
                    for key in ("patient", "plan") + (("parent",) if with_parent(k) else ()):
                        child[key] = next(made)["response"]["location"].split("/")[1]
                    self.children[k] = child  # one key per thread: no lock needed for dict set
        started = time.monotonic()
        with ThreadPoolExecutor(LOADERS) as pool:
            list(pool.map(load, range(LOADERS)))
        return len(ks) / (time.monotonic() - started)

    def consent(self, ks: list[int]) -> None:
        """Each child's parent grants the school read of sections A and B."""
        def give(part: int) -> None:
            for k in ks[part::LOADERS]:
                child = self.children[k]
                mum = f"RelatedPerson/{child['parent']}"
                client = Client(self.server.base, self.server.token("parent", fhir_user=mum))
                reply = client.post("/fhir/Consent", grant(child["patient"], mum, SCHOOL, ["A", "B"]))
                assert reply.status_code == 201, reply.text[:500]
                client.connection.close()
        with ThreadPoolExecutor(LOADERS) as pool:
            list(pool.map(give, range(LOADERS)))


# --- what is measured -------------------------------------------------------------------

def identifier_path(child: dict) -> str:
    return f"/fhir/Patient?identifier={quote(NHS, safe=':/')}|{child['nhs']}"


def plan_path(child: dict) -> str:
    return f"/fhir/Composition?patient={child['patient']}"


def read_path(child: dict) -> str:
    return f"/fhir/Patient/{child['patient']}"


# name -> (who, path builder, which children, expected total or None for a read, raw twin)
MEASURES = {
    "LA Patient?identifier": ("la", identifier_path, "la", 1, "raw identifier"),
    "LA Composition?patient": ("la", plan_path, "la", 1, "raw patient"),
    "school Patient?identifier": ("school", identifier_path, "consented", 1, "raw identifier"),
    "school Composition?patient": ("school", plan_path, "consented", 1, "raw patient"),
    "LA read Patient/<id>": ("la", read_path, "la", None, "raw read"),
}
SEARCHES = [name for name, spec in MEASURES.items() if spec[3] is not None]


def api_worker(server: Server, token: str, children: list[dict], path_of: Callable[[dict], str],
               total: int | None, seed: int) -> Callable[[], None]:
    client = Client(server.base, token, timeout=300)
    chooser = random.Random(seed)

    def work() -> None:
        reply = client.get(path_of(chooser.choice(children)))
        assert reply.status_code == 200, reply.text[:500]
        if total is not None:
            body = reply.json()
            assert body.get("total") == total and len(body.get("entry", [])) == total, reply.text[:500]
    return work


def warm_up(work: Callable[[], None], most: int = 3, seconds: float = 1.0) -> None:
    """A few calls before timing (fewer when each is slow)."""
    started = time.monotonic()
    for _ in range(most):
        work()
        if time.monotonic() - started > seconds:
            return


def warm_working_set(server: Server, db, seal: Sealing, token: str, children: list[dict]) -> float:
    """Every child of the working set read (`Patient/<id>` and `Composition?patient=`)
    `WARM_PASSES` times, each pass over fresh connections (`WARM_CHUNK` reads each, 8 at
    once), and opened once raw; seconds.

    Each worker process keeps its own data keys and opened content, and a keep-alive
    connection stays with the worker that accepted it; which one that is, is the kernel's
    and the workers' race (8 connections opened at once were seen split 0/8 as well as 4/4).
    A child read over a few long connections could so be met by one worker only, and the
    other paid a key-vault fetch and a decryption on its first requests for it while the
    raw twin (one process, everything opened once) paid none. Many short connections, while
    both workers are busy, meet each child in every worker."""
    started = time.monotonic()
    warm_over_short_connections(server.base, token, [path_of(child) for child in children
                                                     for path_of in (read_path, plan_path)])
    for child in children:
        for name in ("raw read", "raw patient"):
            raw_query(db, seal, name, child)
    return time.monotonic() - started


def warm_over_short_connections(base: str, token: str, paths: list[str]) -> None:
    """Each path read `WARM_PASSES` times, each pass over fresh connections (`WARM_CHUNK`
    reads each, 8 at once, in a shuffled order), so every worker process meets each one."""
    chunks = [paths[i:i + WARM_CHUNK] for i in range(0, len(paths), WARM_CHUNK)] * WARM_PASSES
    random.Random(len(paths)).shuffle(chunks)

    def run(chunk: list[str]) -> None:
        client = Client(base, token, timeout=300)
        for path in chunk:
            assert client.get(path).status_code == 200
        client.connection.close()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(run, chunks))


def raw_query(db, seal: Sealing, name: str, child: dict):
    """The server's query for one measure done straight on `current` (keep in step with
    ehcp_record/store/repository.py: envelope fields `type`, `idx.<param>`, `updated`, `_id`),
    each result opened as any reader of the database must (content is sealed at rest, and an
    identifier is found by its blind token: ehcp_record/store/sealing.py). Returns the resources,
    as the server would go on to render them."""
    sort = [("updated", DESCENDING), ("_id", ASCENDING)]  # repository._sort_spec with no _sort
    if name == "raw identifier":
        token = seal.token_values("idx.identifier", [f"{NHS}|{child['nhs']}"])[0]
        found = list(db.current.find({"type": "Patient", "idx.identifier": token}).sort(sort).limit(20))
    elif name == "raw patient":
        found = list(db.current.find({"type": "Composition", "idx.patient": f"Patient/{child['patient']}"}).sort(sort).limit(20))
    else:
        found = [d for d in [db.current.find_one({"_id": f"Patient/{child['patient']}"})] if d is not None]
    return [dict(d, res=seal.open(d["res"], d["_id"])) for d in found]


def raw_worker(db, seal: Sealing, name: str, children: list[dict], seed: int) -> Callable[[], None]:
    chooser = random.Random(seed)
    scratch = db.get_collection("bench_search_audit", write_concern=WriteConcern("majority"))

    def work() -> None:
        child = chooser.choice(children)
        found = raw_query(db, seal, name, child)
        assert len(found) == 1 and found[0] is not None
        scratch.insert_one({"record": child["patient"], "action": "search", "at": time.time(),
                            "resources": [d["_id"] for d in found]})
    return work


def _pooled(runs: list[dict]) -> dict:
    """One raw twin's figures over the runs paired with its API rows (requests summed, rates
    and latencies averaged)."""
    return {"name": runs[0]["name"], "clients": runs[0]["clients"], "runs": len(runs),
            "requests": sum(r["requests"] for r in runs),
            **{k: sum(r[k] for r in runs) / len(runs) for k in ("per_second", "p50_ms", "p95_ms", "p99_ms")}}


def catch_up_analytics(server: Server) -> float:
    """`ehcp-record analytics refresh` against the running server's database, so the
    de-identified extract (docs/analytics.md) has taken in the records just seeded before
    anything is timed; seconds. Each server process refreshes it in the background every few
    minutes, and the first refresh after a bulk load opens every record loaded since the last
    one: at 20,000 that took a worker's CPU for minutes, during the timed searches (a worker
    spent more time on it than on the searches it served). What is timed is a deployment
    whose extract is current, as a deployment's is between loads."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "api.cli", "analytics", "refresh"], env=server_env(server.data_dir),
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    return time.monotonic() - started


def restarted(server: Server, workers: int) -> Server:
    """The server and its mongod stopped and started again on the same data: what is timed is
    a deployment holding that custody, not the processes that just bulk-loaded it (see the
    module docstring)."""
    server.stop()
    return Server(server.data_dir, workers)


def settle(db, quiet: float = 10.0, most: float = 180.0) -> float:
    """Force a checkpoint (`fsync`), wait until no checkpoint runs and under 1% of the cache is
    dirty, then `quiet` seconds more; returns the seconds it took."""
    started = time.monotonic()
    db.client.admin.command("fsync")
    while time.monotonic() - started < most:
        cache = db.client.admin.command("serverStatus")["wiredTiger"]
        dirty = cache["cache"]["tracked dirty bytes in the cache"] / cache["cache"]["maximum bytes configured"]
        if not cache["transaction"]["transaction checkpoint currently running"] and dirty < 0.01:
            break
        time.sleep(1.0)
    time.sleep(quiet)
    return time.monotonic() - started


def opcounters(db) -> dict[str, int]:
    return dict(db.client.admin.command("serverStatus")["opcounters"])


def operations_per_request(server: Server, db, token: str, children: list[dict], path_of: Callable[[dict], str],
                           requests: int) -> dict[str, float]:
    """MongoDB operations per API request: the opcounters delta over `requests` sequential
    requests, less the background rate (heartbeats) seen while idle and our own serverStatus
    calls."""
    client = Client(server.base, token, timeout=300)
    chooser = random.Random(7)
    before, idle_started = opcounters(db), time.monotonic()
    time.sleep(1.0)
    idle = opcounters(db)
    idle_rate = {k: (idle[k] - before[k] - (1 if k == "command" else 0)) / (time.monotonic() - idle_started) for k in idle}
    started = time.monotonic()
    for _ in range(requests):
        assert client.get(path_of(chooser.choice(children))).status_code == 200
    after, elapsed = opcounters(db), time.monotonic() - started
    per = {k: max(0.0, (after[k] - idle[k] - (1 if k == "command" else 0) - idle_rate[k] * elapsed) / requests)
           for k in ("query", "insert", "update", "delete", "getmore", "command")}
    per["total"] = sum(per.values())
    per["requests"] = requests
    return per


def run_scale(server: Server, db, seal: Sealing, seeder: Seeder, scale: int, seconds: float, raw_seconds: float,
              op_requests: int) -> dict:
    tokens = {"la": seeder.tokens[LA], "school": server.token("school", organization=SCHOOL)}
    custody = [c for c in seeder.children.values() if c["la"] == LA]
    assert len(custody) == scale, (len(custody), scale)
    pools = {"la": random.Random(scale).sample(custody, min(WORKING_SET, scale)),
             "consented": [c for c in seeder.children.values() if "parent" in c]}
    warmed = warm_working_set(server, db, seal, tokens["la"], pools["la"])
    print(f"  {scale:>6} working set of {len(pools['la']):,} children warmed in {warmed:.0f} s", file=sys.stderr, flush=True)
    rows: list[dict] = []
    raw: dict[tuple[str, int], list[dict]] = {}
    for name in ("raw identifier", "raw patient", "raw read"):
        warm_up(raw_worker(db, seal, name, pools["la"], 99), 50)
    for name, (who, path_of, pool, total, twin) in MEASURES.items():
        warm_up(api_worker(server, tokens[who], pools[pool], path_of, total, 99))
        for clients in (1, 8):
            row = measure(name, clients, seconds,
                          lambda i: api_worker(server, tokens[who], pools[pool], path_of, total, 1000 * clients + i),
                          min_requests=5 * clients if clients == 1 else 8, probe=server.connections_per_worker)
            paired = measure(twin, clients, raw_seconds,  # right after: the same machine weather
                             lambda i: raw_worker(db, seal, twin, pools["la"], 2000 * clients + i))
            raw.setdefault((twin, clients), []).append(paired)
            rows.append(dict(row, raw_name=twin, raw_per_second=paired["per_second"], raw_p50_ms=paired["p50_ms"],
                             api_over_raw=row["per_second"] / paired["per_second"]))
            print(f"  {scale:>6} {name:28} {clients} client(s): {row['per_second']:8.1f} req/s "
                  f"p50 {row['p50_ms']:8.1f} ms ({row['requests']} requests); raw {paired['per_second']:8.1f} req/s; "
                  f"connections per worker {row.get('probe')}", file=sys.stderr, flush=True)
    single = {row["name"]: row["p50_ms"] / 1000 for row in rows if row["clients"] == 1}
    ops = {name: operations_per_request(server, db, tokens[who], pools[pool], path_of,
                                        max(1, min(op_requests, int(4.0 / single[name]))))  # ~4 s each
           for name, (who, path_of, pool, _, _) in MEASURES.items()}
    storage = {name: db.command("collStats", name) for name in ("current", "history", "audit", "records")}
    cache = db.client.admin.command("serverStatus")["wiredTiger"]["cache"]
    return {"scale": scale, "consented": len(pools["consented"]), "rows": rows, "raw": [_pooled(v) for v in raw.values()], "ops": ops,
            "storage": {name: {"count": s["count"], "mb": s["size"] / 2**20, "index_mb": s["totalIndexSize"] / 2**20}
                        for name, s in storage.items()},
            "cache_mb": {"configured": cache["maximum bytes configured"] / 2**20,
                         "in_cache": cache["bytes currently in the cache"] / 2**20}}


# --- printing ---------------------------------------------------------------------------

def print_scale(result: dict, seed_rate: float | None) -> None:
    scale = result["scale"]
    print(f"\n== {scale:,} records in la-866's custody (+{OTHER_LA_RECORDS} at la-916, {result['consented']} consented to the school)"
          + (f"; seeded at {seed_rate:.0f} records/s" if seed_rate else ""))
    print(f"{'measure':28} {'clients':>7} {'API req/s':>10} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} "
          f"{'raw req/s':>10} {'API/raw':>8}  {'n':>5}  connections per worker")
    for row in result["rows"]:
        print(f"{row['name']:28} {row['clients']:>7} {row['per_second']:>10.1f} {row['p50_ms']:>9.1f} "
              f"{row['p95_ms']:>9.1f} {row['p99_ms']:>9.1f} {row['raw_per_second']:>10.1f} "
              f"{row['api_over_raw']:>8.3f}  {row['requests']:>5}  {'/'.join(map(str, row.get('probe') or []))}")
    print("raw pymongo (query + audit insert): " + ", ".join(
        f"{r['name']} x{r['clients']} {r['per_second']:.0f}/s p50 {r['p50_ms']:.2f} ms" for r in result["raw"]))
    print("MongoDB operations per API request (serverStatus opcounters):")
    for name, per in result["ops"].items():
        print(f"  {name:28} total {per['total']:>9.1f}  over {per['requests']:>3} requests  (query {per['query']:.1f}, command {per['command']:.1f}, "
              f"insert {per['insert']:.1f}, update {per['update']:.1f}, getmore {per['getmore']:.1f})")


def print_storage(result: dict) -> None:
    print("data: " + ", ".join(f"{name} {s['count']:,} docs {s['mb']:.0f} MB (+{s['index_mb']:.0f} MB indexes)"
                               for name, s in result["storage"].items())
          + f"; WiredTiger cache {result['cache_mb']['in_cache']:.0f} of {result['cache_mb']['configured']:.0f} MB")


def print_ratios(results: list[dict]) -> None:
    print("\n== targets")
    small, large = results[0], results[-1]
    if len(results) > 1:
        print(f"latency at {large['scale']:,} vs {small['scale']:,} records (p50; target <= {FLAT_TARGET}x):")
        before = {(r["name"], r["clients"]): r for r in small["rows"]}
        for row in large["rows"]:
            ratio = row["p50_ms"] / before[(row["name"], row["clients"])]["p50_ms"]
            verdict = ("ok" if ratio <= FLAT_TARGET else "MISS") if row["name"] in SEARCHES else "(a read: no target here)"
            print(f"  {row['name']:28} x{row['clients']}  {before[(row['name'], row['clients'])]['p50_ms']:9.1f} -> "
                  f"{row['p50_ms']:9.1f} ms  {ratio:8.2f}x  {verdict}")
    for result in results:
        print(f"search throughput API/raw at {result['scale']:,} records (target >= {SEARCH_TARGET}):")
        for row in result["rows"]:
            if row["name"] not in SEARCHES:
                continue
            verdict = "ok" if row["api_over_raw"] >= SEARCH_TARGET else "MISS"
            print(f"  {row['name']:28} x{row['clients']}  {row['per_second']:8.1f} / {row['raw_per_second']:8.1f}"
                  f" = {row['api_over_raw']:.3f}  {verdict}")
    print("single reads (target: not slower than today; compare with this run's figures):")
    for result in results:
        for row in result["rows"]:
            if row["name"] not in SEARCHES:
                print(f"  {result['scale']:>6,} records x{row['clients']}  {row['per_second']:8.1f} req/s  "
                      f"p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 500 and 2,000 records, short timings")
    parser.add_argument("--records", help="comma-separated scales, grown in one database (default 2000,20000)")
    parser.add_argument("--workers", type=int, default=default_workers(), help="gunicorn workers (default: as `serve`)")
    parser.add_argument("--seconds", type=float, help="time per API measure (default 4, quick 2)")
    parser.add_argument("--json", type=Path, help="also write every figure to this file as JSON")
    args = parser.parse_args()
    scales = sorted(int(s) for s in (args.records or ("500,2000" if args.quick else "2000,20000")).split(","))
    seconds = args.seconds or (2.0 if args.quick else 4.0)
    raw_seconds = seconds / 2
    op_requests = 20 if args.quick else 50  # fewer for slow requests: ~4 s of them
    consented = min(CONSENTED, scales[0])
    run_started = time.monotonic()
    results, rates = [], []
    with tempfile.TemporaryDirectory(prefix="ehcp-bench-search-") as tmp:
        server = Server(Path(tmp), args.workers)
        mongo = MongoClient(server.mongo_uri, w="majority")
        db = mongo.get_database("ehcp_record")
        try:
            seeder = Seeder(server)
            seeder.directory()  # the server has made its keys by now: the raw twin opens with them
            seal = Sealing(FieldCipher(mongo, "ehcp_record",
                                       lambda: local_master_keys(Path(tmp) / "keys" / "master" / "ehcp_record")))
            seeder.open_records(OTHER_LA, list(range(OTHER_LA_FIRST, OTHER_LA_FIRST + OTHER_LA_RECORDS)))
            opened = 0
            for scale in scales:
                phase = time.monotonic()
                rate = seeder.open_records(LA, list(range(opened, scale)), lambda k: k < consented)
                if opened == 0:
                    seeder.consent(list(range(consented)))
                opened = scale
                print(f"seeded {scale:,} records in {time.monotonic() - phase:.0f} s ({rate:.0f} records/s); "
                      f"analytics extract caught up in {catch_up_analytics(server):.0f} s; "
                      f"settled in {settle(db):.0f} s", file=sys.stderr, flush=True)
                mongo.close()
                server = restarted(server, args.workers)
                seeder.server = server
                mongo = MongoClient(server.mongo_uri, w="majority")
                db = mongo.get_database("ehcp_record")
                seal = Sealing(FieldCipher(mongo, "ehcp_record",
                                           lambda: local_master_keys(Path(tmp) / "keys" / "master" / "ehcp_record")))
                results.append(run_scale(server, db, seal, seeder, scale, seconds, raw_seconds, op_requests))
                rates.append(rate)
        finally:
            mongo.close()
            server.stop()
    print(f"EHCP Record search benchmark: {args.workers} gunicorn workers, {seconds:g} s per API measure, "
          f"{raw_seconds:g} s per raw measure, total run {time.monotonic() - run_started:.0f} s")
    for result, rate in zip(results, rates):
        print_scale(result, rate)
        print_storage(result)
    print_ratios(results)
    if args.json:
        args.json.write_text(json.dumps({"results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
