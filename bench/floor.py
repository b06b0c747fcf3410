"""How much of an identifier search's cost is the stack, and how much is EHCP Record.

Three ways to answer an LA's `Patient?identifier=<NHS number>` on the same mongod, the same
sealed data and the same working set, timed in turns (API, floor, raw; three rounds) at 1
and 8 clients:

- **API**: EHCP Record as served (`ehcp-record serve`, bench/harness.py).
- **floor**: `bench/floor_app.py` under the same gunicorn settings (gthread, as many workers
  and threads, one socket per worker): HTTP, routing, one query, the result opened, one
  sealed audit entry inserted, JSON out, and none of EHCP Record's rules.
- **raw**: pymongo in this process (bench/search.py's twin): the query, the open, an audit insert.

It prints each figure, floor/raw (the most any server on this stack can reach of the issue's
raw figure, on this machine), API/raw (the issue's target: at least 0.30) and API/floor (how
much of the floor's throughput EHCP Record keeps).

    .venv/bin/python bench/floor.py [--records 1000] [--seconds 4] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from pymongo import MongoClient

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from api.cli import default_workers  # noqa: E402
from bench.harness import Server, measure, server_env  # noqa: E402
from bench.search import (LA, WORKING_SET, Seeder, api_worker, catch_up_analytics, identifier_path,  # noqa: E402
                          raw_worker, settle, warm_over_short_connections, warm_up,
                          warm_working_set)
from ehcp_record.store.crypto import FieldCipher, local_master_keys  # noqa: E402
from ehcp_record.store.mongod import free_port  # noqa: E402
from ehcp_record.store.sealing import Sealing  # noqa: E402

ROUNDS = 3
THREADS = 4  # as `ehcp-record serve --threads`


class Floor:
    """bench/floor_app.py on gunicorn, beside the server, on its mongod."""

    def __init__(self, server: Server, workers: int) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**server_env(server.data_dir), "FLOOR_MONGO_URI": server.mongo_uri,
               "FLOOR_KEYS": str(server.data_dir / "keys" / "master" / "ehcp_record")}
        command = [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--threads", str(THREADS),
                   "--worker-class", "gthread", "--reuse-port", "--bind", f"127.0.0.1:{self.port}",
                   "--log-level", "warning", "bench.floor_app:create()"]
        self.log = open(server.data_dir / "floor.log", "wb")
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log, stderr=self.log,
                                        start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError((server.data_dir / "floor.log").read_text()[-2000:])
            try:
                requests.get(self.base + "/fhir/Patient?identifier=x|y", timeout=1)
                return
            except requests.RequestException:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("the floor app did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(30)
        self.log.close()


class _Base:
    """What `api_worker` needs of a server: its base address."""

    def __init__(self, base: str) -> None:
        self.base = base


def _mean(rows: list[dict]) -> float:
    return sum(r["per_second"] for r in rows) / len(rows)


def run(records: int, seconds: float, workers: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="ehcp-bench-floor-") as tmp:
        server = Server(Path(tmp), workers)
        floor = None
        mongo = MongoClient(server.mongo_uri, w="majority")
        try:
            seeder = Seeder(server)
            seeder.directory()
            seeder.open_records(LA, list(range(records)))
            catch_up_analytics(server)
            db = mongo.get_database("ehcp_record")
            settle(db)
            seal = Sealing(FieldCipher(mongo, "ehcp_record",
                                       lambda: local_master_keys(Path(tmp) / "keys" / "master" / "ehcp_record")))
            floor = Floor(server, workers)
            token = seeder.tokens[LA]
            pool = random.Random(records).sample(list(seeder.children.values()), min(WORKING_SET, records))
            warm_working_set(server, db, seal, token, pool)
            # the floor meets each child by its search only; the server's warm-up opened the
            # same Patients (and their keys) already
            warm_over_short_connections(floor.base, token, [identifier_path(child) for child in pool])
            makers = {
                "API": lambda i: api_worker(server, token, pool, identifier_path, 1, i),
                "floor": lambda i: api_worker(_Base(floor.base), token, pool, identifier_path, 1, i),  # type: ignore[arg-type]
                "raw": lambda i: raw_worker(db, seal, "raw identifier", pool, i),
            }
            for make in makers.values():
                warm_up(make(0), 50)
            figures: dict[str, dict[int, list[dict]]] = {name: {1: [], 8: []} for name in makers}
            for clients in (1, 8):
                for turn in range(ROUNDS):
                    for name, make in makers.items():
                        row = measure(name, clients, seconds if name != "raw" else seconds / 2,
                                      lambda i, make=make: make(100 * turn + i))
                        figures[name][clients].append(row)
                        print(f"  {name:5} x{clients} round {turn + 1}: {row['per_second']:8.1f} req/s "
                              f"p50 {row['p50_ms']:6.2f} ms", file=sys.stderr, flush=True)
            return {"records": records, "workers": workers, "figures": figures}
        finally:
            mongo.close()
            if floor is not None:
                floor.stop()
            server.stop()


def report(result: dict) -> None:
    figures = result["figures"]
    print(f"EHCP Record against the stack's floor: LA Patient?identifier, {result['records']:,} records, "
          f"{result['workers']} gunicorn workers x {THREADS} threads, {ROUNDS} rounds each (mean req/s)")
    print(f"{'clients':>7} {'API':>9} {'floor':>9} {'raw':>9} {'floor/raw':>10} {'API/raw':>8} {'API/floor':>10}")
    for clients in (1, 8):
        api, floor, raw = (_mean(figures[name][clients]) for name in ("API", "floor", "raw"))
        print(f"{clients:>7} {api:>9.1f} {floor:>9.1f} {raw:>9.1f} {floor / raw:>10.3f} {api / raw:>8.3f} {api / floor:>10.3f}")
    print("p50 ms: " + "; ".join(
        f"{name} x{clients} {sum(r['p50_ms'] for r in figures[name][clients]) / ROUNDS:.2f}"
        for clients in (1, 8) for name in ("API", "floor", "raw")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args.records, args.seconds, args.workers)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
