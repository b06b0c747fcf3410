"""Reading the audit trail: AuditEvent read/search, `$access-log` and `$verify-audit`.

Parents and young people can see who looked at the record and when; the custodian LA and
auditors can too. A former custodian sees only its own entries. Reading the trail is itself
recorded in it.
"""

from __future__ import annotations

from dataclasses import dataclass


from ehcp_record.access.scoped import RecordScope, ScopedStore
from ehcp_record.audit.events import named_in, to_audit_event
from ehcp_record.audit.verify import head_token
from ehcp_record.errors import invalid, not_found, too_costly
from ehcp_record.fhir.dates import DateFormatError, instant, parse_range
from ehcp_record.fhir.search import DEFAULT_COUNT, MAX_COUNT, MAX_OFFSET

_PARAMS = {"patient", "agent", "date", "_count", "_offset", "_format"}


@dataclass
class AuditLog:
    base_url: str
    keys: dict  # trusted checkpoint keys (audit_verify.trusted_keys)

    def read(self, store: ScopedStore, event_id: str) -> dict:
        record, _, seq = event_id.rpartition("-")
        label = f"AuditEvent/{event_id}"
        if not record or not seq.isdigit():
            store.access.require_scope("AuditEvent", "r")
            raise not_found(label)
        scope = self._open(store, record, label)
        _, entries = scope.audit_entries(seq=int(seq), agent=self._agent_filter(store, scope))
        if not entries:
            raise not_found(label)
        store.audit_record(record, "audit-read", "audit trail read")
        return to_audit_event(entries[0], self.base_url, store.display_names(named_in(entries[0])))

    def search(self, store: ScopedStore, pairs: list[tuple[str, str]]) -> tuple[int, list[dict], int, int]:
        values = _single_values(pairs)
        patient = values.get("patient", "").removeprefix("Patient/")
        if not patient:
            raise invalid("AuditEvent searches need patient=<id>: the audit trail is kept per child's record", "required")
        scope = self._open(store, patient, f"the audit trail of Patient/{patient}")
        count = min(_int(values.get("_count"), DEFAULT_COUNT), MAX_COUNT)
        offset = _int(values.get("_offset"), 0)
        if offset > MAX_OFFSET:
            raise too_costly(f"_offset beyond {MAX_OFFSET}; narrow the search instead")
        total, entries = scope.audit_entries(
            agent=self._agent_filter(store, scope) or values.get("agent"), at_range=_date_range(values.get("date")),
            offset=offset, count=count,
        )
        store.audit_record(patient, "audit-read", "audit trail read")
        names = store.display_names([reference for e in entries for reference in named_in(e)])
        return total, [to_audit_event(e, self.base_url, names) for e in entries], offset, count

    def verify(self, store: ScopedStore, patient: str, held_head: str | None = None) -> dict:
        """`$verify-audit[?head=<token>]`: the record checked as a whole; with `head`, a signed
        head kept earlier (from `$access-log` or `$verify-audit`), proven to be extended."""
        scope = self._open(store, patient, f"the audit trail of Patient/{patient}")
        if held_head is not None and not held_head:
            raise invalid("head is empty: give the token kept from an earlier $verify-audit (its head output) "
                          "or from the signed-head link of $access-log", "value")
        verdict = scope.verify(self.keys, held_head)
        store.audit_record(patient, "verify-audit", "audit trail read")
        parameters = [{"name": "valid", "valueBoolean": verdict.valid}, {"name": "entries", "valueInteger": verdict.entries}]
        if not verdict.valid:
            parameters.append({"name": "firstInvalid", "valueInteger": verdict.first_invalid or 0})
            parameters.append({"name": "reason", "valueString": verdict.reason})
            if verdict.resource:
                parameters.append({"name": "resource", "valueString": verdict.resource})
            if verdict.differs:
                parameters.append({"name": "differs", "valueString": verdict.differs})
        if verdict.erasure:
            parameters.append(_erased(verdict.erasure))
        if held_head:
            parameters.append({"name": "extendsHead", "valueBoolean": verdict.valid})
        parameters += head_parameters(verdict.head)
        return {"resourceType": "Parameters", "parameter": parameters}

    def head_link(self, store: ScopedStore, patient: str) -> dict | None:
        """For `$access-log`: the newest signed head as a Bundle link to `$verify-audit?head=`,
        the family's own copy of how far the trail reached."""
        scope = self._open(store, patient, f"the audit trail of Patient/{patient}")
        head = scope.latest_head()
        if head is None:
            return None
        return {"relation": "signed-head",
                "url": f"{self.base_url}/Patient/{patient}/$verify-audit?head={head_token(head)}"}

    def _open(self, store: ScopedStore, record: str, label: str) -> RecordScope:
        return store.open_record(record, "audit-log", label, scope_type="AuditEvent")

    def _agent_filter(self, store: ScopedStore, scope: RecordScope) -> str | None:
        """A former custodian sees only its own entries."""
        return store.caller.actor.organization if scope.decision.basis == "former-custodian" else None


def head_parameters(head: dict | None) -> list[dict]:
    """The signed head (record, seq, hash, at, kid, signature), flat, with `head` the token to
    keep and hand back as `$verify-audit?head=`."""
    if head is None:
        return []
    return [{"name": "head", "valueString": head_token(head)},
            {"name": "headSeq", "valueInteger": head.get("seq")},
            {"name": "headHash", "valueString": str(head.get("hash"))},
            {"name": "headAt", "valueInstant": str(head.get("at"))},
            {"name": "headKid", "valueString": str(head.get("kid"))},
            {"name": "headSignature", "valueString": str(head.get("signature"))}]


def _single_values(pairs: list[tuple[str, str]]) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in pairs:
        if name not in _PARAMS:
            raise invalid(f"'{name[:40]}' is not a search parameter of AuditEvent (patient, agent, date)")
        if name in values:
            raise invalid(f"'{name}' may be given once")
        if value.lstrip().startswith(("{", "[")):
            raise invalid(f"the value of '{name}' looks like a query object; send a plain FHIR search value")
        values[name] = value
    return values


def _int(value: str | None, default: int) -> int:
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or len(value) > 6:  # "²" is a digit to str.isdigit
        raise invalid(f"'{value[:20]}' is not a whole number")
    return int(value)


def _date_range(value: str | None) -> tuple[str, str] | None:
    """date=geYYYY-MM-DD / leYYYY-MM-DD / YYYY-MM-DD as [lo, hi) instant strings."""
    if not value:
        return None
    prefix = value[:2] if value[:2] in ("ge", "gt", "le", "lt", "eq") else "eq"
    text = value[2:] if prefix != "eq" or value.startswith("eq") else value
    try:
        lo, hi = parse_range(text)
    except DateFormatError as exc:
        raise invalid(f"date: {exc}") from None
    low, high = instant(lo), instant(hi)
    return {"eq": (low, high), "ge": (low, "9999"), "gt": (high, "9999"), "lt": ("0000", low), "le": ("0000", high)}[prefix]


def _erased(erasure: dict) -> dict:
    """Who erased the record, when and why (`$erase`), as the chain keeps it in clear."""
    agent = erasure.get("by") or {}
    who = agent.get("organization") or agent.get("fhirUser") or agent.get("sub") or "unknown"
    return {"name": "erased", "part": [{"name": "at", "valueInstant": erasure.get("at")},
                                       {"name": "by", "valueString": who},
                                       {"name": "reason", "valueString": erasure.get("reason", "")}]}
