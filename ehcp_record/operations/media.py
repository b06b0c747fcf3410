"""Binary media: what may be uploaded, checked against the bytes, and who may fetch it.

A photo or video for section A ("all about me") or an advice report for section K is a Binary
whose `securityContext` is its DocumentReference: it is shown to exactly those who may see that
DocumentReference's section. The declared content type must match the file's own signature
(magic bytes); anything outside the allowlist is refused.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from consent.sections import section_of
from ehcp_record.access.scoped import ScopedStore
from ehcp_record.errors import FhirError, invalid, unprocessable
from ehcp_record.store.versions import StoredMedia, TooLarge
from ehcp_record.store.versions import Version

SNIFF_BYTES = 64 * 1024
MAX_INLINE_JSON = 8 * 1024 * 1024
_WORD_X = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
ALLOWED_TYPES = ("image/jpeg", "image/png", "image/gif", "video/mp4", "video/quicktime", "video/webm",
                 "application/pdf", "application/msword", _WORD_X)


def sniff_matches(content_type: str, head: bytes) -> bool:
    """Does the start of the file look like the declared type?"""
    checks = {
        "image/jpeg": lambda h: h.startswith(b"\xff\xd8\xff"),
        "image/png": lambda h: h.startswith(b"\x89PNG\r\n\x1a\n"),
        "image/gif": lambda h: h[:6] in (b"GIF87a", b"GIF89a"),
        "video/mp4": lambda h: h[4:8] == b"ftyp" and h[8:12] != b"qt  ",
        "video/quicktime": lambda h: h[4:8] == b"ftyp" and h[8:12] == b"qt  ",
        "video/webm": lambda h: h.startswith(b"\x1a\x45\xdf\xa3"),
        "application/pdf": lambda h: h.startswith(b"%PDF-"),
        "application/msword": lambda h: h.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"),
        _WORD_X: lambda h: h.startswith(b"PK\x03\x04") and (b"word/" in h or b"[Content_Types].xml" in h),
    }
    check = checks.get(content_type)
    return bool(check and check(head))


@dataclass
class MediaService:
    limit: int

    def upload(self, store: ScopedStore, content_type: str, security_context: str | None, stream: BinaryIO,
               resource_id: str | None = None, if_match: int | None = None) -> tuple[Version, bool]:
        content_type = content_type.split(";")[0].strip().lower()
        if content_type not in ALLOWED_TYPES:
            raise FhirError(415, "not-supported", f"'{content_type}' is not an allowed upload type ({', '.join(ALLOWED_TYPES)})")
        document = self._document(store, security_context)
        head = _read_head(stream)
        if not sniff_matches(content_type, head):
            raise unprocessable(f"the file's content does not look like {content_type}", "invalid")
        try:
            stored = store.media_store.save(head, stream, self.limit, content_type, document.record or "")
        except TooLarge:
            raise FhirError(413, "too-costly", f"uploads are limited to {self.limit // (1024 * 1024)} MiB") from None
        try:
            return self._commit(store, content_type, document, stored, resource_id, if_match)
        except BaseException:
            store.media_store.delete(stored.file_id)
            raise

    def _document(self, store: ScopedStore, security_context: str | None) -> Version:
        if not security_context or not security_context.startswith("DocumentReference/"):
            raise invalid("send X-Security-Context: DocumentReference/<id>, the document this file belongs to", "required")
        document_id = security_context.split("/", 1)[1]
        try:
            document, _ = store.resource("DocumentReference", document_id, "read")
        except FhirError as error:
            if error.status != 404:
                raise
            raise unprocessable(f"{security_context} does not exist") from None
        return document

    def _commit(self, store: ScopedStore, content_type: str, document: Version, stored: StoredMedia,
                resource_id: str | None, if_match: int | None) -> tuple[Version, bool]:
        import uuid

        binary = {"resourceType": "Binary", "id": resource_id or str(uuid.uuid4()), "contentType": content_type,
                  "securityContext": {"reference": f"DocumentReference/{document.id}"},
                  "_section": document.section or section_of(document.resource)}
        extra = {"media": {"file": stored.file_id, "size": stored.size, "sha256": stored.sha256}}
        if resource_id is None:
            prepared = store.prepare(binary, binary["id"], None, extra=extra)
        else:
            prepared = store.prepare_put(binary, resource_id, if_match, extra=extra)
        store.commit([prepared])
        from ehcp_record.access.scoped import version_of

        return version_of(prepared.write), prepared.created

    def fetch(self, store: ScopedStore, resource_id: str, vid: str | None) -> tuple[Version, dict]:
        if vid is None:
            return store.read("Binary", resource_id)
        return store.vread("Binary", resource_id, vid)

    def stream(self, store: ScopedStore, media: dict, start: int, end: int) -> Iterator[bytes]:
        return store.media_store.read_range(media["file"], start, end)

    def inline(self, store: ScopedStore, resource: dict, media: dict | None) -> dict:
        """The Binary as FHIR JSON, with its bytes base64-encoded (small files only)."""
        if media is None:
            return resource
        if media["size"] > MAX_INLINE_JSON:
            raise FhirError(406, "too-costly", "this file is too large for JSON; ask for its own content type instead")
        return dict(resource, data=base64.b64encode(store.media_store.read_all(media["file"])).decode())


def _read_head(stream: BinaryIO) -> bytes:
    head = b""
    while len(head) < SNIFF_BYTES:
        chunk = stream.read(SNIFF_BYTES - len(head))
        if not chunk:
            break
        head += chunk
    if not head:
        raise invalid("the upload is empty", "required")
    return head

