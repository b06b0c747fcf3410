"""The one place Bundles are built: searchset, history, document, collection and the
transaction/batch responses (https://hl7.org/fhir/R4/bundle.html).

Small pure builders. They shape the Bundle and its entries; they never decide what the caller
may see (redaction happens before a resource reaches them) and never read the request.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

Pairs = list[tuple[str, str]]


def full_url(base_url: str, resource_type: str, resource_id: str, vid: int | str | None = None) -> str:
    """`<base>/<Type>/<id>` (and `/_history/<vid>` for one version); base "" gives a relative URL."""
    url = f"{base_url.rstrip('/')}/{resource_type}/{resource_id}" if base_url else f"{resource_type}/{resource_id}"
    return f"{url}/_history/{vid}" if vid is not None else url


def entry(resource: dict | None = None, base_url: str | None = None, mode: str | None = None, *,
          url: str | None = None, request: dict | None = None, response: dict | None = None) -> dict:
    """One Bundle.entry. fullUrl is `url` when given, else built from `base_url` and the
    resource's type and id (left out when there is neither); `mode` is search.mode (match,
    include, outcome)."""
    item: dict[str, Any] = {}
    if url is None and base_url is not None and resource and resource.get("id"):
        url = full_url(base_url, resource["resourceType"], resource["id"])
    if url is not None:
        item["fullUrl"] = url
    if resource is not None:
        item["resource"] = resource
    if mode is not None:
        item["search"] = {"mode": mode}
    if request is not None:
        item["request"] = request
    if response is not None:
        item["response"] = response
    return item


def link(relation: str, url: str) -> dict:
    return {"relation": relation, "url": url}


def paging_links(url: Callable[[Pairs], str], echo: Pairs, base: Pairs, offset: int, count: int,
                 total: int) -> list[dict]:
    """self, next and previous links of one page of `count` results from `offset`.

    `url(pairs)` renders a link (the API knows its host); `echo` is the query as understood,
    `base` the query without _count/_offset.
    """
    links = [link("self", url(echo))]
    if count and offset + count < total:
        links.append(link("next", url(base + [("_count", str(count)), ("_offset", str(offset + count))])))
    if offset > 0:
        links.append(link("previous", url(base + [("_count", str(count)), ("_offset", str(max(offset - count, 0)))])))
    return links


def searchset(entries: Iterable[dict], total: int | None = None, links: Sequence[dict] = ()) -> dict:
    """A searchset Bundle; `total` defaults to the number of match entries."""
    entries = list(entries)
    if total is None:
        total = sum(1 for e in entries if (e.get("search") or {}).get("mode", "match") == "match")
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": total}
    if links:
        bundle["link"] = list(links)
    bundle["entry"] = entries
    return bundle


def version_response(status: str, resource_type: str, resource_id: str, vid: int | str,
                     last_modified: str | None = None) -> dict:
    """Bundle.entry.response for a stored version (transaction, batch and history entries)."""
    response = {"status": status, "location": full_url("", resource_type, resource_id, vid), "etag": f'W/"{vid}"'}
    if last_modified is not None:
        response["lastModified"] = last_modified
    return response


def history_entry(resource: dict | None, base_url: str, resource_type: str, resource_id: str, vid: int,
                  last_modified: str | None = None) -> dict:
    """One version in a history Bundle: version 1 was a create (POST), later ones updates (PUT);
    a delete (`resource` None) is an entry with request.method DELETE and no resource, as R4
    history bundles record deletions (http §3.1.0.11, Bundle.entry.request)."""
    created = vid == 1 and resource is not None
    method = "DELETE" if resource is None else "POST" if created else "PUT"
    request = {"method": method, "url": resource_type if created else f"{resource_type}/{resource_id}"}
    status = "201 Created" if created else "200 OK"
    response = {"status": status, "etag": f'W/"{vid}"', "lastModified": last_modified}
    return entry(resource, url=full_url(base_url, resource_type, resource_id), request=request, response=response)


def history(entries: Iterable[dict], total: int) -> dict:
    return {"resourceType": "Bundle", "type": "history", "total": total, "entry": list(entries)}


def response_bundle(kind: str, entries: Iterable[dict], bundle_id: str | None = None) -> dict:
    """A transaction-response or batch-response Bundle."""
    if kind not in ("transaction-response", "batch-response"):
        raise ValueError(f"'{kind}' is not a response Bundle type")
    return {"resourceType": "Bundle", "id": bundle_id or str(uuid.uuid4()), "type": kind, "entry": list(entries)}


def document(bundle_id: str, identifier: dict, timestamp: str, entries: Iterable[dict],
             last_updated: str | None = None) -> dict:
    """A document Bundle (the Composition first among `entries`)."""
    bundle: dict[str, Any] = {"resourceType": "Bundle", "id": bundle_id}
    if last_updated is not None:
        bundle["meta"] = {"lastUpdated": last_updated}
    bundle.update({"identifier": identifier, "type": "document", "timestamp": timestamp, "entry": list(entries)})
    return bundle


def collection(entries: Iterable[dict], bundle_id: str | None = None, timestamp: str | None = None,
               identifier: dict | None = None) -> dict:
    """A collection Bundle (a transfer's content, a plan gathered for validation)."""
    bundle: dict[str, Any] = {"resourceType": "Bundle"}
    if bundle_id is not None:
        bundle["id"] = bundle_id
    bundle["type"] = "collection"
    if timestamp is not None:
        bundle["timestamp"] = timestamp
    if identifier is not None:
        bundle["identifier"] = identifier
    bundle["entry"] = list(entries)
    return bundle


__all__ = ["full_url", "entry", "link", "paging_links", "searchset", "version_response", "history_entry",
           "history", "response_bundle", "document", "collection"]
