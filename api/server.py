"""gunicorn, embedded: the production server, never Flask's dev server."""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.app.base import BaseApplication

from ehcp_record.config import Settings

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


def run_gunicorn(settings: Settings, host: str, port: int, workers: int, threads: int) -> None:
    options = {
        "bind": f"{host}:{port}", "workers": workers, "threads": threads, "worker_class": "gthread",
        "timeout": 120, "graceful_timeout": 10, "accesslog": None, "errorlog": "-", "loglevel": "warning",
        "when_ready": _when_ready, "limit_request_line": 8190, "preload_app": False,
    }
    _Application(options).run()
