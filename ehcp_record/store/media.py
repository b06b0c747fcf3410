"""GridFS storage for Binary content (photos, video, PDF, Word): the repository for media bytes.

Bytes are streamed in and out in chunks; a version's metadata lives with the Binary resource in
`current`/`history`, the bytes in GridFS under the file id recorded there. Files are never
overwritten: each Binary version has its own file, so `vread` of an old version still works.

At rest every `CHUNK` bytes of content is sealed on its own under the record's data key
(store/crypto.py, random algorithm) and kept as exactly one GridFS chunk (`metadata.sealed`
records the sealed chunk size), so a range request opens only the chunks it touches and erasing
the record's key leaves every chunk unreadable.
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO, Iterator

import gridfs
from bson import ObjectId
from bson.binary import Binary
from gridfs.grid_file import GridOut
from pymongo.database import Database

from ehcp_record.store.sealing import Sealing

CHUNK = 255 * 1024


from ehcp_record.store.versions import StoredMedia, TooLarge  # noqa: E402,F401


class MediaStore:
    def __init__(self, db: Database, seal: Sealing | None = None, bucket: str = "media") -> None:
        self.bucket = gridfs.GridFSBucket(db, bucket_name=bucket)
        self.seal = seal or Sealing(None)
        self._sealed_size: int | None = None

    def save(self, head: bytes, stream: BinaryIO, limit: int, content_type: str, record: str) -> StoredMedia:
        """Stream `head` + the rest of `stream` into GridFS, hashing as it goes."""
        digest = hashlib.sha256()
        metadata: dict = {"contentType": content_type, "record": record}
        sealing = self.seal.cipher is not None
        if sealing:
            metadata["sealed"] = self.sealed_chunk_size(record)
        upload = self.bucket.open_upload_stream("binary", metadata=metadata,
                                                chunk_size_bytes=metadata.get("sealed", CHUNK))
        size = 0
        try:
            for chunk in _chunks(head, stream):
                size += len(chunk)
                if size > limit:
                    raise TooLarge()
                digest.update(chunk)
                upload.write(self.seal.bytes_in(record, chunk) if sealing else chunk)
            upload.close()
        except BaseException:
            upload.abort()
            raise
        return StoredMedia(str(upload._id), size, digest.hexdigest())

    def sealed_chunk_size(self, record: str) -> int:
        """The size of one sealed full chunk (the same for every key: CBC pads to the block)."""
        if self._sealed_size is None:
            self._sealed_size = len(self.seal.bytes_in(record, bytes(CHUNK)))
        return self._sealed_size

    def delete(self, file_id: str) -> None:
        try:
            self.bucket.delete(ObjectId(file_id))
        except gridfs.errors.NoFile:
            pass

    def read_range(self, file_id: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end) of a stored file, in chunks."""
        grid_out = self.bucket.open_download_stream(ObjectId(file_id))
        sealed = (grid_out.metadata or {}).get("sealed")
        if sealed:
            yield from self._open_range(grid_out, sealed, start, end)
            return
        try:
            grid_out.seek(start)
            remaining = end - start
            while remaining > 0:
                chunk = grid_out.read(min(CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk
        finally:
            grid_out.close()

    def _open_range(self, grid_out: GridOut, sealed: int, start: int, end: int) -> Iterator[bytes]:
        """Open the sealed chunks covering [start, end) and cut the range out of them."""
        try:
            index = start // CHUNK
            grid_out.seek(index * sealed)
            position = index * CHUNK
            while position < end:
                stored = grid_out.read(sealed)
                if not stored:
                    break
                plain = self.seal.bytes_out(Binary(stored, 6), "the medium")
                piece = plain[max(0, start - position):max(0, end - position)]
                position += len(plain)
                if piece:
                    yield piece
        finally:
            grid_out.close()

    def read_all(self, file_id: str) -> bytes:
        return b"".join(self.read_range(file_id, 0, 1 << 62))


def _chunks(head: bytes, stream: BinaryIO) -> Iterator[bytes]:
    """`head` and the rest of `stream` as `CHUNK`-sized pieces (the last may be shorter)."""
    pending = bytearray(head)
    while True:
        while len(pending) < CHUNK:
            more = stream.read(CHUNK)
            if not more:
                break
            pending += more
        if not pending:
            return
        yield bytes(pending[:CHUNK])
        del pending[:CHUNK]

