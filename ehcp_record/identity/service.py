"""Invitations, links and client registrations: the rules, with storage and the record store
handed in (the authorization server in api/oauth*.py asks these questions).

The custodian LA invites (it must be allowed `write` in the record, decided by the scoped store
like any other custodian action, refusals audited there); the person redeems the code once,
before it expires; the link and its removal are audit entries on the child's own chain, so the
family sees them in `$access-log`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from marshmallow import ValidationError

from consent.model import Actor
from consent.scopes import ScopeSet, parse_scopes
from ehcp_record.access.caller import Caller
from ehcp_record.access.scoped import RecordStore, ScopedStore
from ehcp_record.config import Settings
from ehcp_record.errors import FhirError
from ehcp_record.identity import links as model
from ehcp_record.identity import scopes
from ehcp_record.identity.clients import RegisteredClient, client_from
from ehcp_record.identity.links import Link, LinkError
from ehcp_record.store.identity import IdentityStore


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class IssuedInvitation:
    code: str
    record: str
    fhir_user: str
    expires_at: datetime


class IdentityService:
    def __init__(self, store: IdentityStore, records: RecordStore | None, settings: Settings) -> None:
        self.store = store
        self.records = records
        self.settings = settings
        self._configured = {c.client_id: c for c in self._configured_clients()}

    # --- clients ---------------------------------------------------------------------------

    def _configured_clients(self) -> list[RegisteredClient]:
        out = []
        for document in self.settings.oauth_clients:
            try:
                out.append(client_from(document, source="config"))
            except ValidationError as exc:
                raise ValueError(f"EHCP_OAUTH_CLIENTS: client {document.get('client_id')!r}: {exc.messages}") from None
        return out

    def client(self, client_id: str | None) -> RegisteredClient | None:
        if not client_id:
            return None
        if client_id in self._configured:
            return self._configured[client_id]
        document = self.store.client(client_id)
        if document is None:
            return None
        try:
            return client_from(document)
        except ValidationError:
            return None  # a stored registration that no longer validates is not used

    def register(self, document: dict) -> RegisteredClient:
        """`ehcp-record clients add`; raises marshmallow.ValidationError when unusable."""
        client = client_from(document)
        if client.client_id in self._configured:
            raise ValidationError(f"{client.client_id} is registered by configuration", "client_id")
        self.store.put_client(client.as_document())
        return client

    def all_clients(self) -> list[RegisteredClient]:
        stored = [client_from(d) for d in self.store.all_clients()]
        return sorted(list(self._configured.values()) + stored, key=lambda c: c.client_id)

    def remove_client(self, client_id: str) -> bool:
        return self.store.remove_client(client_id)

    # --- approvals of third-party apps (the consent screen) --------------------------------

    def needs_approval(self, client: RegisteredClient, identity: str, link: Link, scope: str) -> bool:
        """A third-party app asks the person once per client, person, child and scope set;
        an approval covering every requested scope word is remembered."""
        if client.first_party:
            return False
        return not set(scopes.words(scope)) <= self.store.approved_scopes(client.client_id, identity, link.id)

    def approve(self, client: RegisteredClient, identity: str, link: Link, scope: str) -> None:
        self.store.add_approval(client.client_id, identity, link.id, scopes.words(scope))

    def approvals_of(self, identity: str) -> list[dict]:
        """What the person has allowed which third-party app, per linked record."""
        return [{"client_id": a["client_id"], "link": a["link"], "scopes": sorted(a.get("scopes", []))}
                for a in self.store.approvals_of(identity)]

    def withdraw(self, client_id: str, identity: str, access_ttl: int) -> bool:
        """The person takes back every approval they gave this app: its refresh tokens and the
        access tokens issued with them stop working on the next request; it asks again."""
        removed, jtis = self.store.withdraw_approvals(client_id, identity)
        for jti in jtis:
            self.store.revoke_access(jti, _now() + timedelta(seconds=access_ttl))
        return removed

    def child_name(self, link: Link) -> str:
        """The child's name as the linked person may see it (read through their scoped store,
        so the read is theirs, audited); the record id when it cannot be read."""
        if self.records is None or link.record is None:
            return ""
        caller = Caller(actor=Actor(role=link.role, sub=link.identity, fhir_user=link.fhir_user, patient=link.patient),
                        scopes=parse_scopes("patient/Patient.r"), issuer=self.settings.oauth_issuer)
        try:
            _, patient = self.records.for_caller(caller).read("Patient", link.record)
        except FhirError:  # a refused or missing read: show the id instead
            return f"record {link.record}"
        name = next(iter(patient.get("name") or []), {})
        text = name.get("text") or " ".join([*name.get("given", []), name.get("family", "")]).strip()
        return text or f"record {link.record}"

    # --- invitations and links -------------------------------------------------------------

    def invite(self, scoped: ScopedStore, record: str, fhir_user: str) -> IssuedInvitation:
        """The custodian invites the person `fhir_user` names to link to this child's record."""
        model.role_of(fhir_user)
        scoped.open_record(record, "write")
        kind, _, resource_id = fhir_user.partition("/")
        if kind == "RelatedPerson":
            _, person = scoped.read("RelatedPerson", resource_id)
            if (person.get("patient") or {}).get("reference", "").split("/")[-2:] != ["Patient", record]:
                raise LinkError(f"{fhir_user} is not a related person of Patient/{record}")
        elif resource_id != record:
            raise LinkError(f"a young person is linked to their own record, Patient/{record}")
        code, hashed = model.new_code()
        expires = _now() + timedelta(seconds=self.settings.invitation_ttl)
        self.store.add_invitation({"_id": hashed, "record": record, "fhir_user": fhir_user, "used_at": None,
                                   "invited_by": scoped.caller.actor.organization or scoped.caller.actor.sub,
                                   "expires_at": expires, "created_at": _now()})
        scoped.audit_record(record, "invite", f"invitation to link {fhir_user}, expires {expires.date().isoformat()}",
                            [(fhir_user, None)])
        return IssuedInvitation(code, record, fhir_user, expires)

    def invite_professional(self, scoped: ScopedStore, practitioner_role: str) -> IssuedInvitation:
        """An organisation's administrator (a professional of that organisation whose token may
        write PractitionerRole) invites a member of staff: the link confers the PractitionerRole's
        organisation and the administrator's kind of role (la, school, health, social-care, or
        partnership: figures only, the consent engine grants that role no record)."""
        actor = scoped.caller.actor
        if actor.role not in model.PROFESSIONAL_ROLES + model.FIGURES_ROLES or not actor.organization:
            raise LinkError("only a professional organisation's administrator links its staff")
        if not scoped.access.scope_allows("PractitionerRole", "u"):
            raise LinkError("linking staff needs a token that may write PractitionerRole")
        _, resource = scoped.read("PractitionerRole", practitioner_role.partition("/")[2])
        organization = "/".join((resource.get("organization") or {}).get("reference", "").split("/")[-2:])
        if organization != actor.organization:
            raise LinkError(f"{practitioner_role} works for {organization or 'no organisation'}, "
                            f"not {actor.organization}")
        code, hashed = model.new_code()
        expires = _now() + timedelta(seconds=self.settings.invitation_ttl)
        self.store.add_invitation({"_id": hashed, "record": None, "fhir_user": practitioner_role, "used_at": None,
                                   "role": actor.role, "organization": organization, "invited_by": organization,
                                   "expires_at": expires, "created_at": _now()})
        scoped.audit_record(None, "invite", f"invitation to link {practitioner_role} as {actor.role}",
                            [(practitioner_role, None)])
        return IssuedInvitation(code, "", practitioner_role, expires)

    def redeem(self, code: str, identity: str, display: str = "") -> Link:
        """Single use: the first identity to redeem an unexpired code is linked; nobody else."""
        invitation = self.store.claim_invitation(model.code_hash(code), identity, _now())
        if invitation is None:
            raise LinkError("that invitation code is not valid: it may be mistyped, used already or expired")
        fhir_user = invitation["fhir_user"]
        link = Link(id=uuid.uuid4().hex, identity=identity, fhir_user=fhir_user, record=invitation["record"],
                    role=invitation.get("role") or model.role_of(fhir_user), organization=invitation.get("organization"),
                    display=display)
        self.store.add_link({"_id": link.id, "identity": identity, "fhir_user": fhir_user, "record": link.record,
                             "role": link.role, "organization": link.organization, "active": True,
                             "display": display, "created_at": _now(), "invitation_by": invitation["invited_by"]})
        self._audit_as_person(link, "link", f"{display or identity} linked as {fhir_user} by invitation")
        return link

    def links_of(self, identity: str) -> list[Link]:
        return [_link(d) for d in self.store.active_links(identity)]

    def link(self, link_id: str) -> Link | None:
        document = self.store.link(link_id)
        return _link(document) if document else None

    def link_for_token(self, identity: str, fhir_user: str) -> Link | None:
        """The live link a token relies on (None once unlinked: the token stops working)."""
        document = self.store.active_link(identity, fhir_user)
        return _link(document) if document else None

    def unlink_by_person(self, link: Link) -> None:
        if self.store.deactivate_link(link.id, link.identity, _now()) is None:
            raise LinkError("that link has already been removed")
        self._audit_as_person(link, "unlink", f"{link.fhir_user} unlinked by the person")

    def unlink_by_custodian(self, scoped: ScopedStore, link_id: str) -> Link:
        link = self.link(link_id)
        if link is None or not link.active:
            raise LinkError("no such active link")
        if link.record is None:  # staff: their organisation's administrator
            if scoped.caller.actor.organization != link.organization:
                raise LinkError("no such active link")
        else:
            scoped.open_record(link.record, "write")
        self.store.deactivate_link(link.id, scoped.caller.actor.organization or scoped.caller.actor.sub, _now())
        scoped.audit_record(link.record, "unlink", f"{link.fhir_user} unlinked by the custodian",
                            [(link.fhir_user, None)])
        return link

    def _audit_as_person(self, link: Link, action: str, reason: str) -> None:
        if self.records is None:
            raise LinkError("linking needs the record store")
        caller = Caller(actor=Actor(role=link.role, sub=link.identity, fhir_user=link.fhir_user, patient=link.patient),
                        scopes=ScopeSet(()), issuer=self.settings.oauth_issuer)
        self.records.for_caller(caller).audit_record(link.record, action, reason, [(link.fhir_user, None)])


def _link(document: dict) -> Link:
    return Link(id=document["_id"], identity=document["identity"], fhir_user=document["fhir_user"],
                record=document["record"], role=document["role"], organization=document.get("organization"),
                active=bool(document.get("active")), display=document.get("display", ""))
