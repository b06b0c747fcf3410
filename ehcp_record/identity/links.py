"""Links between a signed-in identity and the FHIR resource that says who they are here.

The identity (`issuer|subject`, from the local sign-in page or a configured OpenID Connect
provider) proves only who someone is. What they are in a record comes from the link the server
made when they redeemed an invitation, never from a claim a client chose:

- `RelatedPerson/x` -> a parent (of RelatedPerson.patient, the child the link names);
- `Patient/x` -> the young person themself;
- `PractitionerRole/x` -> a professional of the link's organisation in the link's role
  (linked by their organisation's administrator); for a partnership organisation, staff in the
  `partnership` role, who reach the analytics figures and no record.

A link is checked on every request made with a token that relies on it, so unlinking takes
effect on the next request (DESIGN.md "Consent": revocation on the next request).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

FAMILY_ROLES = {"RelatedPerson": "parent", "Patient": "young-person"}
PROFESSIONAL_ROLES = ("la", "school", "health", "social-care")
#: Staff who see figures only, never a record: a national or regional partnership (DfE, a
#: Change Programme partnership) reads the inclusion dashboard (ehcp_record/analytics).
FIGURES_ROLES = ("partnership",)


class LinkError(ValueError):
    """An invitation or link that cannot be used; the message is safe to show the person."""


@dataclass(frozen=True)
class Link:
    id: str
    identity: str
    fhir_user: str
    record: str | None  # the child's Patient id; None for a professional (PractitionerRole)
    role: str
    organization: str | None = None
    active: bool = True
    display: str = ""

    @property
    def patient(self) -> str | None:
        return f"Patient/{self.record}" if self.record else None


@dataclass(frozen=True)
class Invitation:
    """A single-use, expiring code the custodian LA sends out of band (letter, email)."""

    code_hash: str
    record: str
    fhir_user: str
    invited_by: str
    expires_at: datetime
    used_at: datetime | None = None


def role_of(fhir_user: str) -> str:
    """The role a family fhirUser confers (professionals' roles come from their link)."""
    kind = fhir_user.split("/", 1)[0]
    if kind not in FAMILY_ROLES:
        raise LinkError(f"a family member is linked as RelatedPerson or Patient, not {kind}")
    return FAMILY_ROLES[kind]


def new_code() -> tuple[str, str]:
    """(code to send, hash to keep): 128 bits, so guessing is hopeless within its lifetime."""
    code = secrets.token_urlsafe(16)
    return code, code_hash(code)


def code_hash(code: str) -> str:
    return hashlib.sha256(code.strip().encode()).hexdigest()


def identity_key(issuer: str, subject: str) -> str:
    return f"{issuer}|{subject}"
