"""Anchoring audit chains outside MongoDB.

A chain kept in the same database as the record cannot show, by itself, that entries were cut
from its tail: the shorter chain links up. Two things kept elsewhere close that gap:

- the **signed heads**: every signed checkpoint (record, seq, hash, at, kid, signature) is also
  appended to a write-once log outside the database (fsynced), and handed to the family by
  `$access-log` and `$verify-audit`, who may give it back to `$verify-audit` later;
- the **high-water mark** of each chain: the highest (seq, hash) ever appended. The next entry
  of a chain never takes a seq at or below it, so a deleted tail stays a gap that the verifier
  reports instead of being refilled by the next read.

`AnchorLog` is the interface; `FileAnchorLog` (files in the data dir) is the default. A
deployment that wants the heads beyond the reach of its own operators plugs in another
implementation (another deployment, a transparency service) in `ehcp_record/wiring.py`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Protocol

from ehcp_record.audit.chain import ChainHead

__all__ = ["AnchorLog", "FileAnchorLog", "NoAnchor"]

_SAFE_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")


class AnchorLog(Protocol):
    """Where chain heads are kept outside the database."""

    def append_head(self, checkpoint: dict) -> None:
        """Keep one signed checkpoint (write-once: never rewritten, durable on return)."""

    def latest_head(self, record: str) -> dict | None:
        """The newest signed checkpoint kept for `record`, or None."""

    def raise_high_water(self, record: str, seq: int, hash: str) -> None:
        """Note that `record`'s chain has reached entry `seq` (never lowers the mark)."""

    def high_water(self, record: str) -> ChainHead | None:
        """The highest entry ever appended to `record`'s chain, or None."""


class NoAnchor:
    """Nothing kept outside the database (tools that only read, scratch benchmarks)."""

    def append_head(self, checkpoint: dict) -> None:
        return None

    def latest_head(self, record: str) -> dict | None:
        return None

    def raise_high_water(self, record: str, seq: int, hash: str) -> None:
        return None

    def high_water(self, record: str) -> ChainHead | None:
        return None


class FileAnchorLog:
    """Files under `directory` (one directory per database):

    - `<record>.heads`: one JSON line per signed checkpoint, appended with O_APPEND and fsynced;
    - `<record>.seq`: the high-water mark, "seq hash", replaced under an exclusive lock and
      only ever raised (several server processes share it safely).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, record: str, suffix: str) -> Path:
        name = record if _SAFE_NAME.fullmatch(record) else "h-" + hashlib.sha256(record.encode()).hexdigest()
        return self.directory / f"{name}.{suffix}"

    def append_head(self, checkpoint: dict) -> None:
        line = json.dumps(checkpoint, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        fd = os.open(self._path(str(checkpoint["record"]), "heads"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def latest_head(self, record: str) -> dict | None:
        path = self._path(record, "heads")
        try:
            with path.open("rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - 4096))
                lines = handle.read().splitlines()
        except FileNotFoundError:
            return None
        best: dict | None = None
        for raw in lines:
            try:
                head = json.loads(raw)
            except ValueError:
                continue  # a torn first line of the window
            if isinstance(head, dict) and isinstance(head.get("seq"), int) and (best is None or head["seq"] >= best["seq"]):
                best = head
        return best

    def raise_high_water(self, record: str, seq: int, hash: str) -> None:
        fd = os.open(self._path(record, "seq"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            current = _parse_mark(os.pread(fd, 200, 0))
            if current is None or seq > current.seq:
                data = f"{seq} {hash}\n".encode()
                os.pwrite(fd, data, 0)
                os.ftruncate(fd, len(data))
        finally:
            os.close(fd)  # releases the lock

    def high_water(self, record: str) -> ChainHead | None:
        try:
            with self._path(record, "seq").open("rb") as handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
                return _parse_mark(handle.read(200))
        except FileNotFoundError:
            return None


def _parse_mark(data: bytes) -> ChainHead | None:
    parts = data.decode("ascii", "replace").split()
    if len(parts) != 2 or not parts[0].isdigit():
        return None
    return ChainHead(int(parts[0]), parts[1])
