"""`ehcp-record token` from any directory, its refusals, and `ehcp-record clients add|list|remove`
against the real test mongod (the command line in-process, as the console script calls it)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import jwt
import pytest

from api.cli import _registry, main
from ehcp_record.audit.signing import load_or_create_private_key
from tests.oauth_support import BackendKey
from tests.support import LA

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory a server has run in (its var/keys), and a shell deep inside it."""
    monkeypatch.delenv("EHCP_DATA_DIR", raising=False)
    monkeypatch.delenv("EHCP_MONGODB_URI", raising=False)
    load_or_create_private_key(tmp_path / "var" / "keys" / "dev-issuer.pem")
    deep = tmp_path / "docs" / "notes"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    return tmp_path


def test_token_from_a_subdirectory_uses_the_servers_key(project, capsys):
    assert main(["token", "--role", "la", "--organization", LA]) == 0
    printed = capsys.readouterr().out.strip()
    key = load_or_create_private_key(project / "var" / "keys" / "dev-issuer.pem").public_key()
    claims = jwt.decode(printed, key, algorithms=["EdDSA"], audience="ehcp-record")
    assert claims["role"] == "la" and claims["organization"] == LA
    assert not (project / "docs" / "notes" / "var").exists()  # no stray key made where it ran


@pytest.mark.parametrize("argv, reason", [
    (["token", "--role", "la"], "needs --organization"),
    (["token", "--role", "school"], "needs --organization"),
    (["token", "--role", "headteacher"], "role must be one of"),
    (["token", "--role", "la", "--organization", "la-866"], "Organization/<id>"),
    (["token", "--role", "parent", "--ttl", "0"], "--ttl"),
])
def test_token_refuses_incomplete_arguments(project, capsys, argv, reason):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert reason in captured.err and captured.out == "" and "Traceback" not in captured.err


def test_token_without_a_key_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EHCP_DATA_DIR", str(tmp_path / "nowhere"))
    assert main(["token", "--role", "parent"]) == 2
    assert "no dev key" in capsys.readouterr().err


def test_token_refusal_is_one_line_from_the_console_script(project):
    run = subprocess.run([sys.executable, "-m", "api.cli", "token", "--role", "la"], capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert run.returncode == 2 and run.stderr.strip().count("\n") == 0 and "organization" in run.stderr


def test_clients_add_list_remove(mongo, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EHCP_MONGODB_URI", mongo.uri)
    monkeypatch.setenv("EHCP_DATABASE", f"t_{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("EHCP_DATA_DIR", str(tmp_path))
    jwks = tmp_path / "trust.jwks.json"
    jwks.write_text(json.dumps(BackendKey().jwks()))
    assert main(["clients", "add", "parent-app", "--scope", "launch/patient patient/*.rs offline_access",
                 "--redirect-uri", "https://app.example/cb"]) == 0
    assert main(["clients", "add", "trust", "--scope", "system/*.rs", "--jwks", str(jwks), "--role", "health",
                 "--organization", "Organization/nhs-trust-1"]) == 0
    assert main(["clients", "add", "keyed-by-url", "--scope", "system/*.rs", "--jwks-uri", "https://keys.example/jwks",
                 "--role", "system"]) == 0
    assert main(["clients", "add", "own-app", "--scope", "launch/patient", "--redirect-uri", "https://own.example/cb",
                 "--first-party"]) == 0
    assert main(["clients", "add", "bad", "--scope", "system/*.rs", "--redirect-uri", "https://x.example/cb"]) == 2
    assert "backend services only" in capsys.readouterr().err
    assert main(["clients", "list"]) == 0
    listed = capsys.readouterr().out
    assert "parent-app\tnone" in listed and "trust\tprivate_key_jwt\tsystem/*.rs\thealth Organization/nhs-trust-1" in listed
    with _registry() as registry:  # what the server will read
        assert registry.client("keyed-by-url").jwks_uri == "https://keys.example/jwks"
        assert registry.client("own-app").first_party and not registry.client("parent-app").first_party
    assert main(["clients", "remove", "parent-app"]) == 0
    assert main(["clients", "remove", "parent-app"]) == 2
    capsys.readouterr()
    assert main(["clients", "list"]) == 0
    assert "parent-app" not in capsys.readouterr().out
