"""`ehcp-record`: serve the API, mint dev tokens, register OAuth clients, verify audit chains.

Every command finds the same data dir (`locate_data_dir`: EHCP_DATA_DIR, ./var, or the
nearest enclosing directory's var/ holding a server's state), so `ehcp-record token` signs
with the key the running server trusts, from whichever directory it is run in.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from typing import Iterator, Sequence

from ehcp_record.config import ConfigError, Settings, load_settings, locate_data_dir
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


def _client_commands(commands: argparse._SubParsersAction) -> None:
    clients = commands.add_parser("clients", help="OAuth clients (SMART apps and backend services)")
    sub = clients.add_subparsers()
    add = sub.add_parser("add", help="register (or replace) a client")
    add.add_argument("client_id")
    add.add_argument("--scope", required=True, help="the most it may ask for, e.g. 'launch/patient patient/*.rs'")
    add.add_argument("--name", default="")
    add.add_argument("--redirect-uri", action="append", default=[], help="a public app's exact redirect URI")
    add.add_argument("--jwks", help="a backend service's public JWKS file (makes it private_key_jwt)")
    add.add_argument("--jwks-uri", help="a backend service's JWKS URL, fetched and cached (makes it private_key_jwt)")
    add.add_argument("--first-party", action="store_true",
                     help="an app this deployment runs itself: no consent screen")
    add.add_argument("--role", help="a backend service's role (la, school, health, social-care, system, auditor)")
    add.add_argument("--organization", help="a backend service's Organization/<id>")
    add.set_defaults(handler=_clients_add)
    listing = sub.add_parser("list", help="list the registered clients")
    listing.set_defaults(handler=_clients_list)
    remove = sub.add_parser("remove", help="remove a client; its tokens stop working on their next request")
    remove.add_argument("client_id")
    remove.set_defaults(handler=_clients_remove)


def default_workers() -> int:
    """One gunicorn worker process per core (at least two, so one stuck request never stops
    the service), each with `--threads` threads. Not gunicorn's "2 x cores + 1", which is for
    sync workers that sit idle on I/O: these are threaded, and each process keeps its own
    caches of the records' data keys and opened content, so more processes than cores only
    split those caches and contend for the CPU. bench/search.py on 2 cores: an LA's identifier
    search at 8 clients served 144 req/s with 2 workers against 120 with 4, at 7.6 against
    10.4 ms of worker CPU per request."""
    return max(2, os.cpu_count() or 1)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ehcp-record", description="EHCP Record FHIR server")
    commands = parser.add_subparsers()
    serve = commands.add_parser("serve", help="run the API on gunicorn (embedded mongod unless EHCP_MONGODB_URI)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=default_workers(), help="default: one per core, at least 2")
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
    _client_commands(commands)
    audit = commands.add_parser("audit", help="audit chain tools")
    audit_commands = audit.add_subparsers()
    verify = audit_commands.add_parser(
        "verify", help="verify every record (exit 0), report the first fault (exit 1), or say why it could not check (exit 2)")
    verify.add_argument("--record")
    verify.set_defaults(handler=_audit_verify)
    keys = commands.add_parser("keys", help="encryption keys (docs/encryption.md)")
    keys_commands = keys.add_subparsers()
    rotate = keys_commands.add_parser("rotate", help="re-wrap every data key under a new master key (servers may run)")
    rotate.add_argument("--master-key", help='with a KMS: the new master key as JSON, {"provider": "aws", ...}')
    rotate.set_defaults(handler=_keys_rotate)
    retention = commands.add_parser("retention", help="end of retention: records due for erasure, legal holds")
    retention_commands = retention.add_subparsers()
    due = retention_commands.add_parser("due", help="list the LA's records whose retention has ended (run daily)")
    due.add_argument("--organization", required=True, help="the custodian LA, e.g. Organization/la-866")
    due.set_defaults(handler=_retention_due)
    for name, text in (("hold", "place a legal hold (blocks $erase)"), ("release", "lift a legal hold")):
        hold = retention_commands.add_parser(name, help=text)
        hold.add_argument("record", help="the record's Patient id")
        hold.add_argument("--organization", required=True, help="the custodian LA")
        hold.add_argument("--reason", required=True)
        hold.set_defaults(handler=_retention_hold, hold=name == "hold")
    sen2 = commands.add_parser("sen2", help="write the SEN2 return of one LA's records: a CSV per module and validation.csv")
    sen2.add_argument("--year", required=True, help="collection year (census on the third Thursday of January)")
    sen2.add_argument("--organization", required=True, help="the custodian LA, e.g. Organization/la-866")
    sen2.add_argument("--out", default=".", help="directory for the CSV files (default: current directory)")
    sen2.set_defaults(handler=_sen2)
    analytics = commands.add_parser("analytics", help="the de-identified analytics extract (docs/analytics.md)")
    analytics_commands = analytics.add_subparsers()
    refresh = analytics_commands.add_parser("refresh", help="bring the extract up to date with the records")
    refresh.add_argument("--full", action="store_true", help="rebuild every record, not only those changed")
    refresh.set_defaults(handler=_analytics_refresh)
    export = analytics_commands.add_parser(
        "export", help="write a release of the extract for one recipient as Parquet files: each ended year, "
        "k-anonymous (k = EHCP_ANALYTICS_THRESHOLD), pseudonyms the recipient's own and unlinkable across tables")
    export.add_argument("--recipient", required=True, help="who receives it, e.g. dfe or la-866-analysts")
    export.add_argument("--out", required=True, help="directory for the Parquet files")
    export.set_defaults(handler=_analytics_export)
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
    from api.server import require_free_port, run_gunicorn

    require_free_port(args.host, args.port)  # before the database starts: nothing to undo
    # EHCP_BASE_URL (the address clients use, e.g. behind a proxy) wins; else where we listen.
    overrides = {"data_dir": str(locate_data_dir())}
    if not os.environ.get("EHCP_BASE_URL"):
        overrides["base_url"] = f"http://{args.host}:{args.port}/fhir"
    settings = load_settings(overrides)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["EHCP_DATA_DIR"] = str(settings.data_dir.resolve())  # the workers use the same one
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with database(settings) as ready:
        os.environ["EHCP_BASE_URL"] = ready.base_url
        run_gunicorn(ready, args.host, args.port, args.workers, args.threads)
    return 0


def _token(args: argparse.Namespace) -> int:
    """Exit 2 with one line on stderr for anything the server would refuse: a bad role, a
    professional role without its organisation, no dev key (no server has run here)."""
    from api.auth import check_dev_token_arguments, issue_dev_token

    try:
        settings = load_settings({"data_dir": str(locate_data_dir())})
        check_dev_token_arguments(args.role, args.organization, args.fhir_user, args.patient)
    except (ConfigError, ValueError) as exc:
        return _refuse(f"ehcp-record token: {exc}")
    if not settings.dev_issuer:
        return _refuse("ehcp-record token: the dev issuer is off in this environment")
    if not 0 < args.ttl <= 24 * 3600:
        return _refuse("ehcp-record token: --ttl must be between 1 and 86400 seconds")
    if not settings.dev_key_path.exists():
        return _refuse(f"ehcp-record token: no dev key in {settings.data_dir.resolve()}; run `ehcp-record serve` "
                       "once there, or set EHCP_DATA_DIR to the server's data dir")
    print(issue_dev_token(settings, args.role, args.fhir_user, args.organization, args.patient, args.scope,
                          args.ttl, args.sub))
    return 0


def _refuse(message: str) -> int:
    print(message, file=sys.stderr)
    return 2


@contextlib.contextmanager
def _registry() -> Iterator[object]:
    """The client registrations in the server's database (beside a running server: its mongod)."""
    from dataclasses import replace

    from ehcp_record.wiring import client_registry

    settings = load_settings({"data_dir": str(locate_data_dir())})
    if not settings.mongodb_uri:
        uri = running_uri(settings.data_dir.resolve())
        if uri:
            settings = replace(settings, mongodb_uri=uri)
    with database(settings) as ready, client_registry(ready) as registry:
        yield registry


def _clients_add(args: argparse.Namespace) -> int:
    import json

    from marshmallow import ValidationError

    document = {"client_id": args.client_id, "name": args.name, "scope": args.scope,
                "redirect_uris": args.redirect_uri, "role": args.role, "organization": args.organization,
                "token_endpoint_auth_method": "private_key_jwt" if args.jwks or args.jwks_uri else "none",
                "first_party": args.first_party}
    if args.jwks_uri:
        document["jwks_uri"] = args.jwks_uri
    if args.jwks:
        try:
            document["jwks"] = json.loads(open(args.jwks, encoding="utf-8").read())
        except (OSError, ValueError) as exc:
            return _refuse(f"ehcp-record clients add: cannot read the JWKS: {exc}")
    try:
        with _registry() as registry:
            client = registry.register(document)
    except ValidationError as exc:
        return _refuse(f"ehcp-record clients add: {exc.messages}")
    print(f"registered {client.client_id} ({client.auth_method}, scope {client.scope})")
    return 0


def _clients_list(args: argparse.Namespace) -> int:
    with _registry() as registry:
        for client in registry.all_clients():
            target = ", ".join(client.redirect_uris) or f"{client.role} {client.organization or ''}".strip()
            print(f"{client.client_id}\t{client.auth_method}\t{client.scope}\t{target}\t({client.source})")
    return 0


def _clients_remove(args: argparse.Namespace) -> int:
    with _registry() as registry:
        removed = registry.remove_client(args.client_id)
    if not removed:
        return _refuse(f"ehcp-record clients remove: no stored client {args.client_id} "
                       "(clients named in EHCP_OAUTH_CLIENTS are removed from the configuration)")
    print(f"removed {args.client_id}")
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    """Exit 0: every record verifies; 1: a record is invalid (its first fault, one line each);
    2: nothing could be checked (no database, unknown record). Beside a running server it
    connects to that server's embedded mongod (the port is in the data dir)."""
    from dataclasses import replace

    from ehcp_record.wiring import verify_audit_chains

    try:
        settings = load_settings({"data_dir": str(locate_data_dir())})
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


def _settings_beside_server() -> Settings:
    return _with_running_database(load_settings({"data_dir": str(locate_data_dir())}))


def _keys_rotate(args: argparse.Namespace) -> int:
    """Re-wrap every data key under a new master key; exit 2 with one line if it cannot."""
    import json

    from ehcp_record.wiring import rotate_master_key

    try:
        new_key = json.loads(args.master_key) if args.master_key else None
        with database(_settings_beside_server()) as ready:
            lines = rotate_master_key(ready, new_key)
    except Exception as exc:  # noqa: BLE001 - report, do not trace, for an operator
        return _refuse(f"ehcp-record keys rotate: {type(exc).__name__}: {str(exc)[:300]}")
    for line in lines:
        print(line)
    return 0


def _operator_store(services, organization: str):
    """The LA's own operator, as `sen2` acts: the same scoped store, decisions and audit."""
    from consent.model import Actor
    from consent.scopes import parse_scopes
    from ehcp_record.access.caller import Caller

    caller = Caller(Actor(role="la", sub=f"cli:retention:{organization}", organization=organization),
                    parse_scopes("user/*.rs user/Patient.u"), issuer="urn:ehcp-record:cli")
    return services.records.for_caller(caller)


def _retention_due(args: argparse.Namespace) -> int:
    """One line per record due for erasure: record, birth date, due date."""
    from ehcp_record.errors import FhirError
    from datetime import datetime, timezone

    from consent.clock import uk_date
    from ehcp_record.wiring import build_services

    with database(_settings_beside_server()) as ready:
        services = build_services(ready)
        try:
            due = services.erasure.due(_operator_store(services, args.organization), uk_date(datetime.now(timezone.utc)))
        except FhirError as exc:
            return _refuse(f"retention due: {exc}")
        finally:
            services.records.close()
    for item in due:
        print(f"Patient/{item.record}\tborn {item.birth_date.isoformat()}\tdue {item.due.isoformat()}")
    print(f"{len(due)} records due for erasure")
    return 0


def _retention_hold(args: argparse.Namespace) -> int:
    from ehcp_record.errors import FhirError
    from ehcp_record.wiring import build_services

    with database(_settings_beside_server()) as ready:
        services = build_services(ready)
        try:
            store = _operator_store(services, args.organization)
            (store.place_legal_hold if args.hold else store.lift_legal_hold)(args.record, args.reason)
        except FhirError as exc:
            return _refuse(f"retention: {exc}")
        finally:
            services.records.close()
    print(f"{'held' if args.hold else 'released'} Patient/{args.record}")
    return 0


def _sen2(args: argparse.Namespace) -> int:
    """The SEN2 return as the LA's own operator: the same scoped store and audit as `$sen2`
    (the operator acts for `--organization` with read scopes; every record read is audited)."""
    from dataclasses import replace
    from pathlib import Path

    from consent.model import Actor
    from consent.scopes import parse_scopes
    from ehcp_record.access.caller import Caller
    from ehcp_record.errors import FhirError
    from ehcp_record.operations.sen2 import modules
    from ehcp_record.wiring import build_services

    settings = load_settings()
    if not settings.mongodb_uri:
        uri = running_uri(settings.data_dir.resolve())
        if uri:
            settings = replace(settings, mongodb_uri=uri)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with database(settings) as ready:
        services = build_services(ready)
        caller = Caller(Actor(role="la", sub=f"cli:sen2:{args.organization}", organization=args.organization),
                        parse_scopes("user/*.rs"), issuer="urn:ehcp-record:cli")
        try:
            result = services.sen2.build(services.records.for_caller(caller), args.year)
        except FhirError as exc:
            print(f"sen2: {exc}", file=sys.stderr)
            return 2
        finally:
            services.records.close()
    for module in modules():
        (out / f"sen2-{result.year}-{module}.csv").write_text(result.csv(module), encoding="utf-8")
    (out / f"sen2-{result.year}-validation.csv").write_text(result.validation_csv(), encoding="utf-8")
    print(f"SEN2 {result.year} (census {result.census}): {len(result.rows['person'])} people, "
          f"{len(result.problems)} validation problems, written to {out}")
    return 0


def _with_running_database(settings: Settings):
    from dataclasses import replace

    if not settings.mongodb_uri:
        uri = running_uri(settings.data_dir.resolve())
        if uri:
            settings = replace(settings, mongodb_uri=uri)
    return settings


def _analytics_refresh(args: argparse.Namespace) -> int:
    """The system process that feeds the extract (never reachable from a request)."""
    from ehcp_record.wiring import build_services

    with database(_with_running_database(load_settings())) as ready:
        services = build_services(ready)
        try:
            report = services.analytics.extract.refresh(full=args.full)
        finally:
            services.records.close()
    print(f"analytics extract {report.generation}: {report.records_rebuilt} records rebuilt "
          f"({'full' if report.full else 'incremental'}) in {report.seconds:.1f} s; rows {report.rows}")
    return 0


def _analytics_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from consent.model import Actor
    from consent.scopes import parse_scopes
    from ehcp_record.access.caller import Caller
    from ehcp_record.wiring import build_services

    with database(_with_running_database(load_settings())) as ready:
        services = build_services(ready)
        try:
            if services.analytics.extract.files() is None:
                print("analytics: no extract yet; run `ehcp-record analytics refresh` first", file=sys.stderr)
                return 2
            written = services.analytics.extract.export(args.recipient, Path(args.out), services.analytics.threshold)
            operator = Caller(Actor(role="system", sub="cli:analytics-export"), parse_scopes("system/*.rs"),
                              issuer="urn:ehcp-record:cli")
            services.records.for_caller(operator).audit_record(  # every use of the extract is audited
                None, "analytics-export", f"extract {services.analytics.extract.manifest()['generation']} "
                f"exported for {args.recipient}")
        finally:
            services.records.close()
    print(f"analytics extract for {args.recipient}: {', '.join(str(p) for p in written.values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
