"""Subscriptions (FHIR R4 rest-hook): notify a subscriber when something they may see changes.

A notification is decided exactly as a search is: the subscription's criteria, limited to the
changed resource, run under the subscriber's own consent decision at the moment of the change.
So revoking consent stops notifications from the next change, and a subscriber never learns of
a resource (not even that it changed) outside what they may read. With `channel.payload`
absent the POST has no body (R4 "empty" notification); with `application/fhir+json` it carries
the resource as the subscriber may see it (redacted). Every delivery is in the record's audit.
"""

from __future__ import annotations

import ipaddress
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlparse

import requests
from urllib3.util.retry import Retry

from consent.model import Actor
from consent.scopes import parse_scopes
from ehcp_record.audit import entries as audit
from ehcp_record.access.caller import Caller, owner_key
from ehcp_record.errors import FhirError, forbidden, unprocessable
from ehcp_record.access.scoped import RecordStore, ScopedStore
from ehcp_record.store.versions import Version
from ehcp_record.fhir.dates import has_passed
from ehcp_record.fhir.search import SearchRegistry, parse_search
from ehcp_record.net.outbound import Fence, OutboundRefused

log = logging.getLogger("ehcp_record.notifications.subscriptions")
_TIMEOUT = (3, 10)
#: Failed notifications in a row before a subscription is put in `error`.
FAILURES_BEFORE_ERROR = 3


@dataclass
class SubscriptionService:
    registry: SearchRegistry
    allow_plain_http: bool = False
    fence: Fence = field(default_factory=Fence)
    session_factory: Callable[[], requests.Session] | None = None
    _pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=4), repr=False)

    # --- writes -------------------------------------------------------------------------

    def prepare_subscription(self, store: ScopedStore, resource: dict, current: Version | None) -> dict:
        """Check a new or changed Subscription and return the envelope fields to keep with it."""
        caller = store.caller
        if current is not None and current.owner != owner_key(caller):
            raise forbidden("only the caller who created a subscription may change it")
        criteria = resource.get("criteria", "")
        resource_type, _, query = criteria.partition("?")
        try:
            parse_search(self.registry, resource_type, _pairs(query))
        except FhirError as error:
            raise unprocessable(f"Subscription.criteria: {error.diagnostics}", "value", ["Subscription.criteria"]) from None
        channel = resource.get("channel") or {}
        if channel.get("type") != "rest-hook":
            raise unprocessable("only rest-hook subscriptions are supported", "not-supported", ["Subscription.channel.type"])
        self._check_endpoint(channel.get("endpoint", ""))
        if any(":" not in h or "\r" in h or "\n" in h for h in channel.get("header", []) or []):
            raise unprocessable("each channel.header must be one 'Name: value' line", "value", ["Subscription.channel.header"])
        if channel.get("payload") not in (None, "application/fhir+json"):
            raise unprocessable("channel.payload must be absent (empty notification) or application/fhir+json", "value")
        return {"owner": owner_key(caller), "owner_actor": _actor_fields(caller)}

    def _check_endpoint(self, endpoint: str) -> None:
        """The outbound fence first (an internal address is refused with the reason, whatever
        the scheme), then https only (plain http to loopback outside production). Delivery
        checks the address again when it connects."""
        try:
            self.fence.check_url(endpoint)
        except OutboundRefused as refused:
            raise unprocessable(f"channel.endpoint is refused: {refused}", "value",
                                ["Subscription.channel.endpoint"]) from None
        parsed = urlparse(endpoint)
        loopback = parsed.hostname in ("localhost",) or _is_loopback(parsed.hostname or "")
        if parsed.scheme != "https" and not (self.allow_plain_http and parsed.scheme == "http" and loopback):
            raise unprocessable("channel.endpoint must be an https URL", "value", ["Subscription.channel.endpoint"])

    # --- notifications ------------------------------------------------------------------

    def after_commit(self, stores: RecordStore, versions: list[Version]) -> None:
        """Called once a transaction has committed; deliveries run off the request thread."""
        changed = [v for v in versions if v.record is not None and v.type != "Subscription"]
        if not changed:
            return
        for subscription in stores.active_subscriptions({v.type for v in changed}):
            for version in changed:
                self._pool.submit(self._notify_safely, stores, subscription, version)

    def _notify_safely(self, stores: RecordStore, subscription: Version, version: Version) -> None:
        try:
            self._notify(stores, subscription, version)
        except Exception:  # a subscriber's endpoint must never break the server
            log.exception("notification for Subscription/%s failed", subscription.id)

    def _notify(self, stores: RecordStore, subscription: Version, version: Version) -> None:
        current = stores.current_subscription(subscription.id)
        if current is None or current.resource.get("status") != "active":
            return  # deleted, switched off or in error since the cache was read: nothing is sent
        subscription = current
        if has_passed(subscription.resource.get("end"), version.updated):
            self._turn_off(stores, subscription)
            return
        criteria = subscription.resource["criteria"]
        resource_type, _, query = criteria.partition("?")
        if resource_type != version.type:
            return
        store = stores.for_caller(_caller_of(subscription))
        shown = store.notification_view(resource_type, _pairs(query), version)
        if shown is None:
            return  # not a match, or not the subscriber's to see: nothing is sent, nothing is said
        channel = subscription.resource["channel"]
        body = shown if channel.get("payload") == "application/fhir+json" else None
        session = self.session_factory() if self.session_factory else _session(self.fence)
        failure = None
        try:
            response = session.post(channel["endpoint"], json=body, headers=_headers(channel), timeout=_TIMEOUT)
            if not _delivered(response):
                failure = f"the endpoint answered HTTP {response.status_code}"
        except OutboundRefused as refused:  # the endpoint now resolves somewhere internal
            log.warning("notification for Subscription/%s refused: %s", subscription.id, refused)
            failure = f"the endpoint was refused: {refused}"
        except requests.RequestException as exc:
            failure = f"the endpoint could not be reached ({type(exc).__name__})"
        refs = [audit.version_ref(version)] if body is not None else [(f"{version.type}/{version.id}", None)]
        store.audit_record(version.record, "notify", f"Subscription/{subscription.id}", refs,
                           outcome="error" if failure else "permit")
        self._tally(stores, store, subscription, failure)

    def _turn_off(self, stores: RecordStore, subscription: Version) -> None:
        """R4 Subscription.end: "the time for the server to turn the subscription off". The
        first change after it stores `off` (so its owner reads why nothing comes)."""
        store = stores.for_caller(_caller_of(subscription))
        try:
            store.commit([store.prepare_subscription_ended(subscription)])
        except FhirError:  # another change or another process got there first: theirs stands
            log.info("Subscription/%s changed while being turned off at its end", subscription.id)

    def _tally(self, stores: RecordStore, store: ScopedStore, subscription: Version, failure: str | None) -> None:
        """After `FAILURES_BEFORE_ERROR` failed notifications in a row (each after its own
        retries) the subscription is put in `error` with the last reason, so a broken endpoint
        is neither hammered nor silently ignored: its owner sees why and may switch it back on."""
        failures = stores.note_delivery(subscription, failure is None)
        if failure is None or failures < FAILURES_BEFORE_ERROR:
            return
        current = stores.current_subscription(subscription.id)
        if current is None or current.resource.get("status") != "active":
            return  # changed meanwhile (switched off, or already in error)
        reason = f"{failures} notifications in a row failed; the last: {failure}"
        try:
            store.commit([store.prepare_subscription_error(current, reason)])
        except FhirError:  # the owner wrote a newer version at the same moment: theirs stands
            log.info("Subscription/%s changed while being put in error", subscription.id)


def _delivered(response: requests.Response | None) -> bool:
    """A 2xx only: a redirect is not followed (it could point anywhere), so it delivered nothing."""
    return response is not None and 200 <= response.status_code < 300


def _session(fence: Fence) -> requests.Session:
    """Through the outbound fence (ehcp_record/net/outbound.py): checked at connect time, no
    redirects followed; 502/503/504 and connection errors retried twice."""
    return fence.session(Retry(total=2, backoff_factor=0.2, status_forcelist=(502, 503, 504),
                               allowed_methods=frozenset({"POST"})))


def _headers(channel: dict) -> dict[str, str]:
    pairs = (h.split(":", 1) for h in channel.get("header", []) or [] if ":" in h)
    return {name.strip(): value.strip() for name, value in pairs}


def _pairs(query: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(query, keep_blank_values=True, max_num_fields=50)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _actor_fields(caller: Caller) -> dict:
    actor = caller.actor
    return {"role": actor.role, "sub": actor.sub, "fhir_user": actor.fhir_user, "organization": actor.organization,
            "patient": actor.patient, "issuer": caller.issuer,
            "scope": " ".join(f"{s.context}/{s.resource_type}.{''.join(sorted(s.interactions, key='cruds'.index))}"
                              for s in caller.scopes.scopes)}


def _caller_of(subscription: Version) -> Caller:
    fields = subscription.owner_actor or {}
    actor = Actor(role=fields.get("role", ""), sub=fields.get("sub", ""), fhir_user=fields.get("fhir_user"),
                  organization=fields.get("organization"), patient=fields.get("patient"))
    return Caller(actor=actor, scopes=parse_scopes(fields.get("scope")), issuer=fields.get("issuer", ""),
                  request_id=f"subscription-{subscription.id}")
