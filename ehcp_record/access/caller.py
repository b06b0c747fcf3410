"""Who is asking, from where: built by the API from a verified token, used by every rule."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from consent.model import Actor
from consent.scopes import ScopeSet


@dataclass(frozen=True)
class Caller:
    actor: Actor
    scopes: ScopeSet
    issuer: str
    ip: str = ""
    user_agent: str = ""
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def owner_key(self) -> str:
        """Who owns what this caller creates for themself (a Subscription): subject at issuer."""
        return f"{self.issuer}|{self.actor.sub}"

    def audit_agent(self) -> dict:
        return {
            "sub": self.actor.sub, "role": self.actor.role, "fhirUser": self.actor.fhir_user,
            "organization": self.actor.organization, "iss": self.issuer,
        }

    def audit_source(self) -> dict:
        return {"ip": self.ip, "user_agent": self.user_agent[:200], "request_id": self.request_id}


def owner_key(caller: Caller) -> str:
    return caller.owner_key()
