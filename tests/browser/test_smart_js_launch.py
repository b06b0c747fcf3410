"""The SMART JS client (npm `fhirclient` 2.6.3) in Debian's headless Chromium, driven by
Playwright (`playwright-core`, executablePath /usr/bin/chromium), served from another origin on
127.0.0.1: standalone launch with PKCE as a parent with two linked children, pick one, approve
the (third-party) app on the consent screen at 320 CSS px using only the keyboard, read the
plan, refresh the token. Screenshots are kept in a pytest tmp dir whose path is printed (and
copied to $EHCP_TEST_ARTEFACTS when set).

Skipped, saying why, only when chromium or node is absent. npm packages come from the registry
through npm itself: `npm ci` for playwright-core (package-lock.json), `npm pack` for the
fhirclient tarball (integrity checked below), whose prebuilt browser bundle is all the app needs.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import tarfile
import threading
from pathlib import Path
from typing import Iterator

import pytest

from tests.consent_support import load_issued_example
from tests.oauth_support import family_app, invite, redeem, sign_in, start_smart_server, stop
from tests.support import Api

HERE = Path(__file__).resolve().parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FHIRCLIENT = "fhirclient@2.6.3"
FHIRCLIENT_SHA512 = "CirZixcwWelbkIXxpxlNQx5+ZdJirl6F1s4y4yvA1X7hHAkr9n99aVHaMi0wX+97nATjKQ65X6NB5as/wZoJzg=="

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and shutil.which("node") and shutil.which("npm")),
    reason="the browser test needs Debian's chromium (apt-get install chromium) and node/npm; .ci/run installs chromium",
)


def _npm_packages() -> Path:
    """playwright-core via `npm ci`; the SMART JS client's browser bundle via `npm pack`."""
    if not (HERE / "node_modules" / "playwright-core").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=HERE, check=True,
                       capture_output=True, timeout=300)
    cache = HERE / ".cache"
    bundle = cache / "fhir-client.js"
    if not bundle.exists():
        cache.mkdir(exist_ok=True)
        subprocess.run(["npm", "pack", FHIRCLIENT, "--pack-destination", str(cache)], cwd=HERE, check=True,
                       capture_output=True, timeout=120)
        tarball = cache / "fhirclient-2.6.3.tgz"
        digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
        assert digest == FHIRCLIENT_SHA512, "the fhirclient tarball is not the one this test pins"
        with tarfile.open(tarball) as archive:
            member = archive.extractfile("package/build/fhir-client.js")
            assert member is not None
            bundle.write_bytes(member.read())
    return bundle


class _AppServer:
    """The app's own origin: a static file server on another port of 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.origin = f"http://127.0.0.1:{self.http.server_port}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def app_site(tmp_path_factory) -> Iterator[tuple[_AppServer, Path]]:
    bundle = _npm_packages()
    root = tmp_path_factory.mktemp("smart-app")
    shutil.copy(bundle, root / "fhir-client.js")
    site = _AppServer(root)
    yield site, root
    site.http.shutdown()


@pytest.fixture(scope="module")
def smart(mongo, data_dir, app_site) -> Iterator[Api]:
    site, _ = app_site
    api, server = start_smart_server(mongo, data_dir, cors_origins=site.origin)
    api.services.identity.register(family_app("js-app", redirect_uris=(f"{site.origin}/callback.html",),
                                              scope="launch/patient openid fhirUser patient/*.rs offline_access",
                                              first_party=False))
    yield api
    stop(api, server)


def test_smart_js_client_standalone_launch_as_a_parent(smart, app_site, tmp_path_factory):
    site, root = app_site
    for page in ("index.html", "callback.html"):
        text = (HERE / "app" / page).read_text().replace("__FHIR_BASE__", smart.settings.base_url)
        (root / page).write_text(text)
    first, second = load_issued_example(smart), load_issued_example(smart)
    browser = sign_in(smart, "alex-parent")
    for record in (first, second):  # one parent, two children: the launch asks which
        code = invite(smart, f"Patient/{record['Patient'][0]['id']}",
                      f"RelatedPerson/{record['RelatedPerson'][0]['id']}").json()["code"]
        assert redeem(smart, browser, code).status_code == 201
    child = second["Patient"][0]["id"]
    shots = tmp_path_factory.mktemp("browser-screenshots")
    run = subprocess.run(["node", str(HERE / "launch.mjs")], cwd=HERE, capture_output=True, text=True, timeout=180,
                         env={**os.environ, "APP_URL": f"{site.origin}/index.html", "SHOTS_DIR": str(shots),
                              "PERSON": "alex-parent", "CHILD": child, "CHROMIUM": CHROMIUM})
    print(f"\nbrowser screenshots: {shots}")
    _keep_artefacts(shots)
    assert run.returncode == 0, run.stderr
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    assert outcome["ok"], json.dumps(outcome, indent=2)
    result = outcome["result"]
    assert "error" not in result, json.dumps(outcome, indent=2)
    assert result["patient"] == child and result["planSubject"] == f"Patient/{child}"
    assert result["planId"] == second["Composition"][0]["id"] and result["planStatus"] == "final"
    assert result["fhirUser"].endswith(f"RelatedPerson/{second['RelatedPerson'][0]['id']}")
    assert result["accessTokenChanged"] and result["refreshTokenRotated"]
    assert result["patientAfterRefresh"] == child
    consent = outcome["consent"]
    assert "Family app" in consent["heading"] and consent["child"] in consent["heading"]
    assert consent["child"] and not consent["child"].startswith("record ")  # the child's name, not an id
    assert "read and search everything in the record" in consent["scopes"]
    assert consent["buttons"] == ["Allow", "Don’t allow"] and consent["lang"] == "en"
    assert consent["innerWidth"] == 320 and consent["scrollWidth"] <= 320, consent  # no sideways scrolling
    assert consent["focused"] == "consent-approve"  # reached and pressed by keyboard
    assert sorted(p.name for p in shots.iterdir()) == ["1-sign-in.png", "2-pick-child.png", "3-consent.png",
                                                        "4-plan-read-and-refreshed.png"]


def _keep_artefacts(shots: Path) -> None:
    target = os.environ.get("EHCP_TEST_ARTEFACTS")
    if target:
        shutil.copytree(shots, Path(target) / "browser", dirs_exist_ok=True)
