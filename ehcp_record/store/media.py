"""GridFS storage for Binary content (photos, video, PDF, Word): the repository for media bytes.

Bytes are streamed in and out in chunks; a version's metadata lives with the Binary resource in
`current`/`history`, the bytes in GridFS under the file id recorded there. Files are never
overwritten: each Binary version has its own file, so `vread` of an old version still works.
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO, Iterator

import gridfs
from bson import ObjectId
from pymongo.database import Database

CHUNK = 255 * 1024


from ehcp_record.store.versions import StoredMedia, TooLarge  # noqa: E402,F401


class MediaStore:
    def __init__(self, db: Database) -> None:
        self.bucket = gridfs.GridFSBucket(db, bucket_name="media")

    def save(self, head: bytes, stream: BinaryIO, limit: int, content_type: str, record: str) -> StoredMedia:
        """Stream `head` + the rest of `stream` into GridFS, hashing as it goes."""
        digest = hashlib.sha256()
        upload = self.bucket.open_upload_stream("binary", metadata={"contentType": content_type, "record": record})
        size = 0
        try:
            chunk = head
            while chunk:
                size += len(chunk)
                if size > limit:
                    raise TooLarge()
                digest.update(chunk)
                upload.write(chunk)
                chunk = stream.read(CHUNK)
            upload.close()
        except BaseException:
            upload.abort()
            raise
        return StoredMedia(str(upload._id), size, digest.hexdigest())

    def delete(self, file_id: str) -> None:
        try:
            self.bucket.delete(ObjectId(file_id))
        except gridfs.errors.NoFile:
            pass

    def read_range(self, file_id: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end) of a stored file, in chunks."""
        grid_out = self.bucket.open_download_stream(ObjectId(file_id))
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

    def read_all(self, file_id: str) -> bytes:
        return self.bucket.open_download_stream(ObjectId(file_id)).read()
