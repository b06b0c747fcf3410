"""Files of secrets the deployment makes for itself in its data dir (signing key, session
secret, mongod keyfile and credentials, local master keys): created once, never replaced.

Written to a temporary file (mode 0600, fsynced) and hard-linked into place: `link` fails
rather than replace an existing file, so no process ever reads a half-written secret, and of
two processes starting together (gunicorn workers) exactly one wins and both then read it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def create_once(path: Path, make: Callable[[], bytes]) -> bool:
    """Write `make()` to `path` unless it exists; True when this call created it."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(make())
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)
