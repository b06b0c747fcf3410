"""gunicorn, embedded: the production server, never Flask's dev server."""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication

from ehcp_record.config import Settings
from ehcp_record.errors import FhirError, issue_code_for_status, outcome_of

log = logging.getLogger("ehcp_record")


class _Application(BaseApplication):
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from api import create_app

        return create_app()


def _when_ready(server: Any) -> None:
    host, port = server.cfg.bind[0].rsplit(":", 1)
    log.info("EHCP Record is ready at http://%s:%s/fhir (metadata: /fhir/metadata)", host, port)


def _write_fhir_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's own refusals (request line or headers over its limits: 414, 431; malformed
    HTTP: 400) as an OperationOutcome instead of its HTML page, otherwise the same reply."""
    outcome = outcome_of(FhirError(status_int, issue_code_for_status(status_int), f"{reason}: {mesg}"[:300]))
    body = json.dumps(outcome).encode("utf-8")
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/fhir+json; charset=utf-8\r\nContent-Length: {len(body)}\r\n\r\n")
    gunicorn_util.write_nonblock(sock, head.encode("latin-1") + body)


def require_free_port(host: str, port: int) -> None:
    """Refuse (SystemExit) a port something already listens on. Each worker binds its own
    socket with SO_REUSEPORT (`run_gunicorn`), which would otherwise let a second server of
    this user share the port with the first, each answering some connections; a plain bind
    is refused while any socket listens there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed server's TIME_WAIT is no listener
        try:
            probe.bind((host, port))
        except OSError as error:
            raise SystemExit(f"ehcp-record serve: cannot listen on {host}:{port}: {error.strerror}") from None


def run_gunicorn(settings: Settings, host: str, port: int, workers: int, threads: int) -> None:
    """gunicorn with gthread workers, each with its own listening socket (`reuse_port`): the
    kernel spreads new connections over the workers by their addresses. With one socket
    shared by all, whichever worker was awake took them: 8 keep-alive clients were seen 7 to
    1 and 8 to 0, one worker's interpreter doing all the work while the other idled
    (bench/search.py prints the split of every measure)."""
    options = {
        "bind": f"{host}:{port}", "workers": workers, "threads": threads, "worker_class": "gthread",
        "reuse_port": True,
        "timeout": 120, "graceful_timeout": 10, "accesslog": None, "errorlog": "-", "loglevel": "warning",
        "when_ready": _when_ready, "limit_request_line": 8190, "preload_app": False,
    }
    gunicorn_util.write_error = _write_fhir_error  # the one function gunicorn's workers answer errors with
    _Application(options).run()
