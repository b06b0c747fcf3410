"""How long the FHIR R4 structure check of one resource takes, against the R4B models it replaced.

`python bench/structure.py [--repeat 200] [--entries 500]` times `parse_resource` (the R4 JSON
Schema check, ehcp_record/fhir/structure.py) on a typical plan Composition (the one in
profiles/examples/plan-bundle.json) and on a large transaction Bundle (that example's 25
entries repeated to `--entries`), warm (the median of `--repeat` runs) and the first call in the
process (which compiles the type's schema). When fhir.resources is installed (it is no longer a
dependency: `pip install fhir.resources==8.3.0`) the R4B pydantic models that did the job before
are timed on the same input, `model_validate` as model.py called it. The target: the new check
no slower than the old one by more than 20%. Nothing leaves the process.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ehcp_record.fhir.model import parse_resource  # noqa: E402


def samples(entries: int) -> dict[str, dict]:
    plan = json.loads((ROOT / "profiles/examples/plan-bundle.json").read_text(encoding="utf-8"))
    composition = plan["entry"][0]["resource"]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": []}
    while len(bundle["entry"]) < entries:
        for entry in plan["entry"]:
            copied = copy.deepcopy(entry)
            copied["fullUrl"] = f"urn:uuid:00000000-0000-4000-8000-{len(bundle['entry']):012d}"
            bundle["entry"].append(copied)
    bundle["entry"] = bundle["entry"][:entries]
    return {"Composition": composition, f"Bundle of {entries}": bundle}


def timed(check: Callable[[dict], object], resource: dict, repeat: int) -> tuple[float, float]:
    """(first call, median warm call) in milliseconds."""
    start = time.perf_counter()
    check(resource)
    first = (time.perf_counter() - start) * 1000
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        check(resource)
        runs.append((time.perf_counter() - start) * 1000)
    return first, statistics.median(runs)


def r4b_check() -> Callable[[dict], object] | None:
    try:
        from fhir.resources.R4B import get_fhir_model_class
    except ImportError:
        return None
    return lambda resource: get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--entries", type=int, default=500)
    args = parser.parse_args(argv)
    old = r4b_check()
    print(f"{'resource':<18} {'R4 schema first':>16} {'R4 schema warm':>15} {'R4B first':>10} {'R4B warm':>9} {'ratio':>6}")
    for name, resource in samples(args.entries).items():
        repeat = args.repeat if name == "Composition" else max(5, args.repeat // 20)
        first, warm = timed(lambda r: parse_resource(r, r["resourceType"]), resource, repeat)
        line = f"{name:<18} {first:>13.2f} ms {warm:>12.3f} ms"
        if old is not None:
            old_first, old_warm = timed(old, resource, repeat)
            line += f" {old_first:>7.2f} ms {old_warm:>6.3f} ms {warm / old_warm:>6.2f}"
        print(line)
    if old is None:
        print("fhir.resources is not installed: no R4B figures")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
