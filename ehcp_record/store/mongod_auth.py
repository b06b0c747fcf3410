"""Authentication for the embedded mongod: a keyfile and one SCRAM user, kept in the data dir.

Without it any local process (or anything that reaches the port) could read every child's plan.
The launcher starts mongod with `--keyFile`, which turns on access control and authenticates
replica-set members to each other (MongoDB manual, "Internal/Membership Authentication"; a
keyfile is 6-1024 base64 characters, readable by its owner only). The first user is created
through the localhost exception, which MongoDB allows only while the deployment has no user at
all ("Localhost Exception"); every connection after that authenticates with SCRAM-SHA-256
(RFC 7677). The files are written once, mode 0600, so every process of one server and every
tool beside it (`running_uri`) uses the same credentials.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote_plus
from ehcp_record.secret_files import create_once

KEYFILE = "mongod.keyfile"
CREDENTIALS = "mongod.credentials"
USER = "ehcp-record"
#: the launcher initiates and reconfigures the replica set, the server creates databases and
#: indexes and the tests drop them: one administrative user for the one application
ROLES = ["root"]
MECHANISM = "SCRAM-SHA-256"


class AuthSetupError(RuntimeError):
    """The data dir's database cannot be opened with the credentials kept beside it."""


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str

    def uri(self, hosts: str, replica_set: str) -> str:
        """A connection string that authenticates against `admin`, where the user lives."""
        return (f"mongodb://{quote_plus(self.user)}:{quote_plus(self.password)}@{hosts}/"
                f"?replicaSet={replica_set}&authSource=admin&authMechanism={MECHANISM}")

    def client_options(self) -> dict[str, str]:
        return {"username": self.user, "password": self.password, "authSource": "admin",
                "authMechanism": MECHANISM}


def ensure_keyfile(path: Path) -> Path:
    """The replica set's shared secret (756 base64 characters from 567 random bytes)."""
    create_once(path, lambda: base64.b64encode(secrets.token_bytes(567)))
    os.chmod(path, 0o600)
    return path


def ensure_credentials(data_dir: Path) -> Credentials:
    """The server's user and password, generated on the first start and kept thereafter."""
    path = data_dir / CREDENTIALS
    create_once(path, lambda: json.dumps({"user": USER, "password": secrets.token_urlsafe(32)}).encode())
    found = load_credentials(data_dir)
    if found is None:
        raise AuthSetupError(f"{path} is not a JSON object with 'user' and 'password'")
    return found


def load_credentials(data_dir: Path) -> Credentials | None:
    """The credentials beside a data dir's database, or None if there are none (yet)."""
    try:
        fields = json.loads((data_dir / CREDENTIALS).read_text())
        return Credentials(str(fields["user"]), str(fields["password"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def create_first_user(admin_db, credentials: Credentials) -> None:
    """Create the user through the localhost exception; `admin_db` is an unauthenticated
    connection's `admin` database. Refused (Unauthorized) when a user exists already."""
    admin_db.command("createUser", credentials.user, pwd=credentials.password, roles=ROLES,
                     mechanisms=[MECHANISM])

