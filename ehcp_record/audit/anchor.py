"""Anchoring audit chains outside MongoDB.

A chain kept in the same database as the record cannot show, by itself, that entries were cut
from its tail: the shorter chain links up. Two things kept elsewhere close that gap:

- the **signed heads**: every signed checkpoint (record, seq, hash, at, kid, signature) is also
  appended to a write-once log outside the database (fsynced), and handed to the family by
  `$access-log` and `$verify-audit`, who may give it back to `$verify-audit` later;
- the **high-water mark** of each chain: the highest (seq, hash) ever appended. The next entry
  of a chain never takes a seq at or below it, so a deleted tail stays a gap that the verifier
  reports instead of being refilled by the next read. The mark also keeps when the chain was
  last signed (`MarkedTip`), so a read or search appends its entry without asking the database
  for the chain's tip: the unique (record, seq) index refuses an entry at a taken place, and
  that append is made again at the tip the database holds.

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
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from ehcp_record.audit.chain import ChainHead

__all__ = ["AnchorLog", "FileAnchorLog", "MarkedTip", "NoAnchor"]

_SAFE_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")


@dataclass(frozen=True)
class MarkedTip:
    """A chain's tip as the last append through this anchor left it: the entry to link the
    next one to, and when the chain was last signed (whether a checkpoint is due)."""

    head: ChainHead
    signed_at: datetime | None  # None: a mark kept before the signing time was


class AnchorLog(Protocol):
    """Where chain heads are kept outside the database."""

    def append_head(self, checkpoint: dict) -> None:
        """Keep one signed checkpoint (write-once: never rewritten, durable on return)."""

    def latest_head(self, record: str) -> dict | None:
        """The newest signed checkpoint kept for `record`, or None."""

    def raise_high_water(self, record: str, seq: int, hash: str, signed_at: datetime | None = None) -> None:
        """Note that `record`'s chain has reached entry `seq`, last signed at `signed_at`
        (never lowers the mark)."""

    def high_water(self, record: str) -> ChainHead | None:
        """The highest entry ever appended to `record`'s chain, or None."""

    def marked_tip(self, record: str) -> MarkedTip | None:
        """The high-water mark with its signing time, or None when either is not kept."""


class NoAnchor:
    """Nothing kept outside the database (tools that only read, scratch benchmarks)."""

    def append_head(self, checkpoint: dict) -> None:
        return None

    def latest_head(self, record: str) -> dict | None:
        return None

    def raise_high_water(self, record: str, seq: int, hash: str, signed_at: datetime | None = None) -> None:
        return None

    def high_water(self, record: str) -> ChainHead | None:
        return None

    def marked_tip(self, record: str) -> MarkedTip | None:
        return None


class FileAnchorLog:
    """Files under `directory` (one directory per database):

    - `<record>.heads`: one JSON line per signed checkpoint, appended with O_APPEND and fsynced;
    - `<record>.seq`: the high-water mark, "seq hash signed-at", replaced under an exclusive
      lock and only ever raised (several server processes share it safely).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._root = str(self.directory)

    def _path(self, record: str, suffix: str) -> str:
        """A plain string path: every read and search opens its chain's mark, so no Path objects."""
        name = record if _SAFE_NAME.fullmatch(record) else "h-" + hashlib.sha256(record.encode()).hexdigest()
        return f"{self._root}/{name}.{suffix}"

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
            with open(path, "rb") as handle:
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

    def raise_high_water(self, record: str, seq: int, hash: str, signed_at: datetime | None = None) -> None:
        fd = os.open(self._path(record, "seq"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            current = _read_mark(os.pread(fd, 200, 0))
            if current is None or seq > current.head.seq:
                when = f" {signed_at.isoformat()}" if signed_at is not None else ""
                data = f"{seq} {hash}{when}\n".encode()
                os.pwrite(fd, data, 0)
                os.ftruncate(fd, len(data))
        finally:
            os.close(fd)  # releases the lock

    def high_water(self, record: str) -> ChainHead | None:
        tip = self._mark(record)
        return tip.head if tip is not None else None

    def marked_tip(self, record: str) -> MarkedTip | None:
        tip = self._mark(record)
        return tip if tip is not None and tip.signed_at is not None else None

    def _mark(self, record: str) -> MarkedTip | None:
        try:
            fd = os.open(self._path(record, "seq"), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            return _read_mark(os.read(fd, 200))
        finally:
            os.close(fd)  # releases the lock


def _read_mark(data: bytes) -> MarkedTip | None:
    """A mark file's line: seq and hash, then the signing time (absent from older marks)."""
    parts = data.decode("ascii", "replace").split()
    if len(parts) not in (2, 3) or not parts[0].isdigit():
        return None
    signed_at = None
    if len(parts) == 3:
        try:
            signed_at = datetime.fromisoformat(parts[2])
        except ValueError:
            return None
    return MarkedTip(ChainHead(int(parts[0]), parts[1]), signed_at)
