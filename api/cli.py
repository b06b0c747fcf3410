"""`ehcp-record`: serve the API, mint dev tokens, verify audit chains."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from typing import Iterator, Sequence

from ehcp_record.config import Settings, load_settings
from ehcp_record.store.mongod import EmbeddedMongo, running_uri

log = logging.getLogger("ehcp_record")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.handler(args) or 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ehcp-record", description="EHCP Record FHIR server")
    commands = parser.add_subparsers()
    serve = commands.add_parser("serve", help="run the API on gunicorn (embedded mongod unless EHCP_MONGODB_URI)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=max(2, (os.cpu_count() or 1) * 2))
    serve.add_argument("--threads", type=int, default=4)
    serve.set_defaults(handler=_serve)
    token = commands.add_parser("token", help="print a dev JWT signed by the key in the data dir")
    token.add_argument("--role", required=True)
    token.add_argument("--fhir-user")
    token.add_argument("--organization")
    token.add_argument("--patient")
    token.add_argument("--scope")
    token.add_argument("--sub")
    token.add_argument("--ttl", type=int, default=3600)
    token.set_defaults(handler=_token)
    audit = commands.add_parser("audit", help="audit chain tools")
    audit_commands = audit.add_subparsers()
    verify = audit_commands.add_parser(
        "verify", help="verify every record (exit 0), report the first fault (exit 1), or say why it could not check (exit 2)")
    verify.add_argument("--record")
    verify.set_defaults(handler=_audit_verify)
    return parser


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[Settings]:
    """The configured database, or the embedded mongod started for the duration."""
    if settings.mongodb_uri:
        yield settings
        return
    mongo = EmbeddedMongo(settings.data_dir.resolve()).start()
    try:
        from dataclasses import replace

        os.environ["EHCP_MONGODB_URI"] = mongo.uri
        yield replace(settings, mongodb_uri=mongo.uri)
    finally:
        mongo.stop()


def _serve(args: argparse.Namespace) -> int:
    from api.server import run_gunicorn

    # EHCP_BASE_URL (the address clients use, e.g. behind a proxy) wins; else where we listen.
    explicit = os.environ.get("EHCP_BASE_URL")
    settings = load_settings(None if explicit else {"base_url": f"http://{args.host}:{args.port}/fhir"})
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with database(settings) as ready:
        os.environ["EHCP_BASE_URL"] = ready.base_url
        run_gunicorn(ready, args.host, args.port, args.workers, args.threads)
    return 0


def _token(args: argparse.Namespace) -> int:
    from api.auth import issue_dev_token

    settings = load_settings()
    if not settings.dev_issuer:
        print("the dev issuer is off in this environment", file=sys.stderr)
        return 2
    print(issue_dev_token(settings, args.role, args.fhir_user, args.organization, args.patient, args.scope,
                          args.ttl, args.sub))
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    """Exit 0: every record verifies; 1: a record is invalid (its first fault, one line each);
    2: nothing could be checked (no database, unknown record). Beside a running server it
    connects to that server's embedded mongod (the port is in the data dir)."""
    from dataclasses import replace

    from ehcp_record.wiring import verify_audit_chains

    try:
        settings = load_settings()
        if not settings.mongodb_uri:
            uri = running_uri(settings.data_dir.resolve())
            if uri:
                settings = replace(settings, mongodb_uri=uri)
        with database(settings) as ready:
            ok, lines = verify_audit_chains(ready, args.record)
    except LookupError as exc:
        print(f"could not check: {exc.args[0] if exc.args else exc}")
        return 2
    except Exception as exc:  # noqa: BLE001 - any failure to reach or read the database
        print(f"could not check: {type(exc).__name__}: {str(exc)[:300]}")
        return 2
    for line in lines:
        print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
