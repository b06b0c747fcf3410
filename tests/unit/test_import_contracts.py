"""The architecture's rules, checked: import-linter contracts (pyproject.toml) and no reach
past the caller-scoped store to the raw repository."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The only modules that may hold the raw repository: the store package, the scoped store
#: that wraps it, and the composition root that builds both.
REPOSITORY_HOLDERS = ("ehcp_record/store/", "ehcp_record/access/scoped.py", "ehcp_record/access/policy.py",
                      "ehcp_record/wiring.py")
RAW_USE = re.compile(r"\.(repo|_repo)\.(?!signing_key\b)\w+|\b(stores|records)\.(transfers|media|repo)\b"
                     r"|\bRepository\b|\bTransferStore\b|\bMediaStore\b")


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 5 kept, 0 broken." in result.stdout


def test_no_route_or_operation_calls_the_raw_repository():
    offenders = []
    for path in sorted((ROOT / "ehcp_record").rglob("*.py")) + sorted((ROOT / "api").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith(REPOSITORY_HOLDERS):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if RAW_USE.search(line.split("#")[0]):
                offenders.append(f"{relative}:{number}: {line.strip()}")
    assert offenders == []


def test_a_forbidden_import_is_caught(tmp_path):
    """The contract bites: an operation importing the repository breaks it."""
    probe = ROOT / "ehcp_record" / "operations" / "_contract_probe.py"
    probe.write_text("from ehcp_record.store.repository import Repository  # noqa: F401\n")
    try:
        lint = Path(sys.executable).with_name("lint-imports")
        result = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    assert result.returncode != 0
    assert "ehcp_record.operations._contract_probe -> ehcp_record.store.repository" in result.stdout
