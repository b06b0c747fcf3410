"""Encryption at rest: API read, write and search throughput with encryption on and off, side by side.

    .venv/bin/python bench/encryption.py [--quick] [--seconds S] [--records N] [--workers N]

Each mode gets its own `ehcp-record serve` (gunicorn) on its own embedded mongod in a scratch
directory, run one after the other so they never share the CPU:

- **encrypted**: the server exactly as shipped (docs/encryption.md): content, history, audit
  bodies sealed under per-record data keys, blind-index search tokens.
- **clear**: the same server with the key source replaced by none (`wiring.master_keys`
  patched in the server process by `--serve-clear`, below), so the repository stores content
  in clear. There is no configuration setting that does this: encryption cannot be switched
  off in a deployment; only this benchmark builds the clear baseline, to show what it costs.

Measured with real HTTP clients on loopback (bench/harness.py): each record read once in
turn (mostly a worker's first use of the record's data key), then, after a second such pass,
steady-state reads of Patients by id, creating Conditions (a transaction: version, history row,
audit entry), and searching Patients by name prefix and by NHS number. Goal: encrypted within
1.3x of clear (throughput ratio). Printed, never asserted. Everything stays on 127.0.0.1 and in the scratch directory.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # first: bench/ (the script's own dir) holds a bench.py

from bench.harness import Client, Server, measure  # noqa: E402

LA = "Organization/la-866"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
SECTION = "http://ehcp-record.example.org/fhir/CodeSystem/ehcp-section"
NEED = "http://ehcp-record.example.org/fhir/CodeSystem/sen-primary-need"
GOAL = 1.3


def serve_clear(argv: list[str]) -> int:
    """The clear baseline's server: `api.cli serve` with no master key source (bench only)."""
    import ehcp_record.wiring as wiring
    from api.cli import main

    wiring.master_keys = lambda settings: None  # type: ignore[assignment]
    return main(argv)


def _load(server: Server, records: int) -> list[dict]:
    from tests.support import nhs_number

    la = Client(server.base, server.token("la", organization=LA))
    organization = {"resourceType": "Organization", "id": "la-866", "name": "Local authority 866"}
    assert la.put("/fhir/Organization/la-866", organization).status_code in (200, 201)
    children = []
    for n in range(records):
        body = {"resourceType": "Patient", "birthDate": "2015-03-14", "name": [{"family": f"Bench{n:05d}", "given": ["Sam"]}],
                "identifier": [{"system": NHS, "value": nhs_number()}]}
        reply = la.post("/fhir/Patient", body)
        assert reply.status_code == 201, reply.text
        children.append(reply.json())
    return children


def _condition(child: str) -> dict:
    return {"resourceType": "Condition", "subject": {"reference": f"Patient/{child}"},
            "category": [{"coding": [{"system": SECTION, "code": "B"}]}],
            "code": {"coding": [{"system": NEED, "code": "SLCN"}]},
            "note": [{"text": "Needs support with expressive language in class"}]}


def _workers(server: Server, children: list[dict]) -> dict[str, Callable[[int], Callable[[], None]]]:
    token = server.token("la", organization=LA)

    def reader(index: int) -> Callable[[], None]:
        client, counter = Client(server.base, token), iter(range(10 ** 9))

        def work() -> None:
            reply = client.get(f"/fhir/Patient/{children[(next(counter) * 7 + index) % len(children)]['id']}")
            assert reply.status_code == 200, reply.text
        return work

    def writer(index: int) -> Callable[[], None]:
        client, counter = Client(server.base, token), iter(range(10 ** 9))

        def work() -> None:
            reply = client.post("/fhir/Condition", _condition(children[(next(counter) * 5 + index) % len(children)]["id"]))
            assert reply.status_code == 201, reply.text
        return work

    def by_name(index: int) -> Callable[[], None]:
        client, counter = Client(server.base, token), iter(range(10 ** 9))

        def work() -> None:
            prefix = f"bench{(next(counter) + index) % len(children):05d}"[:-1]  # ten names per prefix
            reply = client.get(f"/fhir/Patient?name={prefix}&_count=20")
            assert reply.status_code == 200 and reply.json()["entry"], reply.text
        return work

    def by_identifier(index: int) -> Callable[[], None]:
        client, counter = Client(server.base, token), iter(range(10 ** 9))

        def work() -> None:
            child = children[(next(counter) + index) % len(children)]
            reply = client.get(f"/fhir/Patient?identifier={NHS}|{child['identifier'][0]['value']}")
            assert reply.status_code == 200 and reply.json()["total"] == 1, reply.text
        return work

    return {"read Patient": reader, "create Condition": writer, "search name prefix": by_name,
            "search NHS number": by_identifier}


def _first_reads(server: Server, children: list[dict]) -> dict:
    """Every record read once, in turn, by one client: in the encrypted server most of these
    are a worker's first use of that record's data key (read from the key vault and unwrapped
    by the master key), the cost a record pays after a quiet spell."""
    import time

    client = Client(server.base, server.token("la", organization=LA))
    latencies = []
    started = time.monotonic()
    for child in children:
        begun = time.perf_counter()
        assert client.get(f"/fhir/Patient/{child['id']}").status_code == 200
        latencies.append(time.perf_counter() - begun)
    elapsed = time.monotonic() - started
    latencies.sort()
    return {"name": "first read of each", "clients": 1, "requests": len(latencies),
            "per_second": len(latencies) / elapsed, "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p95_ms": 1000 * latencies[int(len(latencies) * 0.95)], "p99_ms": 1000 * latencies[-1]}


def run_mode(mode: str, records: int, seconds: float, workers: int, clients: tuple[int, ...]) -> list[dict]:
    launcher = [sys.executable, str(Path(__file__).resolve()), "--serve-clear"] if mode == "clear" else None
    with tempfile.TemporaryDirectory(prefix=f"ehcp-bench-{mode}-") as scratch:
        server = Server(Path(scratch), workers, launcher)
        try:
            children = _load(server, records)
            results = [dict(_first_reads(server, children), mode=mode)]
            _first_reads(server, children)  # warm: each worker has now seen most records
            for name, make in _workers(server, children).items():
                for count in clients:
                    results.append(dict(measure(name, count, seconds, make), mode=mode))
            return results
        finally:
            server.stop()


def report(clear: list[dict], encrypted: list[dict]) -> None:
    print(f"{'measure':<22}{'clients':>8}{'clear req/s':>13}{'enc req/s':>11}{'clear p50':>11}{'enc p50':>9}{'ratio':>8}")
    worst = 0.0
    for a, b in zip(clear, encrypted):
        ratio = a["per_second"] / b["per_second"] if b["per_second"] else float("inf")
        worst = max(worst, ratio)
        print(f"{a['name']:<22}{a['clients']:>8}{a['per_second']:>13.1f}{b['per_second']:>11.1f}"
              f"{a['p50_ms']:>9.1f}ms{b['p50_ms']:>7.1f}ms{ratio:>7.2f}x")
    verdict = "within" if worst <= GOAL else "OVER"
    print(f"worst ratio clear/encrypted throughput: {worst:.2f}x ({verdict} the {GOAL}x goal)")
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-clear":
        return serve_clear(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s per measure, 200 records")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per server")
    args = parser.parse_args()
    seconds, records = (3.0, 200) if args.quick else (args.seconds, args.records)
    clients = (1, 4)
    clear = run_mode("clear", records, seconds, args.workers, clients)
    encrypted = run_mode("encrypted", records, seconds, args.workers, clients)
    report(clear, encrypted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
