"""fhir-kit-client (npm) against the live server: `node --test fhir-kit-client.test.mjs`.

The package is installed from tests/clients/package-lock.json with `npm ci` (here when absent,
and by .ci/run); the tests skip, saying so, only where node itself is missing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import nhs_number, unique

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def node_client() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed here, so fhir-kit-client (a JavaScript client) cannot run")
    if not (HERE / "node_modules" / "fhir-kit-client").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True, timeout=300)
    return node


def test_fhir_kit_client(api, la_token, node_client):
    env = {**os.environ, "EHCP_BASE": f"{api.base}/fhir", "EHCP_TOKEN": la_token, "EHCP_FAMILY": f"Kit{unique()}",
           "EHCP_NHS_NUMBERS": json.dumps([nhs_number() for _ in range(6)])}
    run = subprocess.run([node_client, "--test", "--test-reporter=spec", "fhir-kit-client.test.mjs"], cwd=HERE,
                         env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "# pass 5" in run.stdout or "pass 5" in run.stdout, run.stdout[-2000:]
