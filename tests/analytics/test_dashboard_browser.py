"""The dashboard in Debian's headless Chromium, driven by Playwright (tests/browser/
dashboard.mjs, `playwright-core` and `axe-core` from tests/browser/package-lock.json): LA
staff sign in on the dev page, the page draws a chart and a table for every Measure, the need
filter and the CSV download work, it reflows at 320 px, and axe-core (WCAG 2.0-2.2 A and AA
rules) finds no serious or critical violation at either width. Screenshots are kept in a
pytest tmp dir (copied to $EHCP_TEST_ARTEFACTS when set).

Skipped, saying why, only when chromium or node is absent.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.analytics.conftest import staff_browser

BROWSER_TESTS = Path(__file__).resolve().parents[1] / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and shutil.which("node") and shutil.which("npm")),
    reason="the browser test needs Debian's chromium (apt-get install chromium) and node/npm; .ci/run installs chromium",
)


def _npm_packages() -> None:
    modules = BROWSER_TESTS / "node_modules"
    if not ((modules / "playwright-core").is_dir() and (modules / "axe-core").is_dir()):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=BROWSER_TESTS, check=True,
                       capture_output=True, timeout=300)


def test_dashboard_in_chromium_is_usable_and_accessible(cohort_api, tmp_path_factory):
    api, _ = cohort_api
    _npm_packages()
    staff_browser(api, "la", "Organization/la-866", "casey-professional")
    shots = tmp_path_factory.mktemp("dashboard-screenshots")
    run = subprocess.run(["node", str(BROWSER_TESTS / "dashboard.mjs")], cwd=BROWSER_TESTS, capture_output=True,
                         text=True, timeout=180,
                         env={**os.environ, "BASE": api.base, "SHOTS_DIR": str(shots), "PERSON": "casey-professional",
                              "CHROMIUM": CHROMIUM, "NEED": "ASD"})
    print(f"\ndashboard screenshots: {shots}")
    target = os.environ.get("EHCP_TEST_ARTEFACTS")
    if target:
        shutil.copytree(shots, Path(target) / "dashboard", dirs_exist_ok=True)
    assert run.returncode == 0, run.stderr
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    assert outcome["ok"], json.dumps(outcome, indent=2)
    assert outcome["errors"] == [], outcome["errors"]  # no blocked script, no exception
    assert outcome["figures"] == outcome["canvases"] == 8
    for width in ("desktop", "narrow"):
        serious = [v for v in outcome[width] if v["impact"] in ("serious", "critical")]
        assert serious == [], f"axe-core at {width}: {json.dumps(serious, indent=2)}"
    for width in ("desktopWidth", "narrowWidth"):  # WCAG 1.4.10 reflow: no sideways scrolling of the page
        assert outcome[width]["overflow"] <= 0, (width, outcome[width])
    rows = list(csv.reader(io.StringIO(outcome["csv"])))
    assert rows[0] == outcome["shownHeader"]
    assert [r[0] for r in rows[1:]] == [r[0] for r in outcome["shownRows"]]
    assert [r[1:] for r in rows[1:]] == [r[1:] for r in outcome["shownRows"]]
    assert sorted(p.name for p in shots.iterdir()) == ["dashboard-320px.png", "dashboard-desktop.png"]
