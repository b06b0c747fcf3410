"""Who may do what with one child's record: the decision half of the consent engine.

Deny by default (DESIGN.md "Consent"). The local authority holding custody has statutory
access (Children and Families Act 2014 s37: the LA maintains the plan); the family sees its own
record; everyone else needs an active Consent from the decision-maker naming them, the
sections, the action and the period. Pure functions: no I/O, time is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date, datetime, timedelta

from consent import codes
from consent.clock import as_utc, uk_date
from consent.model import Actor, Decision, Grant, RecordState

FAMILY_ROLES = frozenset({codes.ROLE_PARENT, codes.ROLE_YOUNG_PERSON})
_VERB = {codes.OP_READ: "reading", codes.OP_CONTRIBUTE: "contributing"}


# ---------------------------------------------------------------- who decides

def handover_date(birth_date: date) -> date:
    """The day the young person starts making their own decisions.

    Children and Families Act 2014 s83(2): a young person is over compulsory school age. This
    service takes the handover as 1 September after the end of the academic year (1 Sep -
    31 Aug) in which the child turns 16: born 31 Aug 2010 -> 1 Sep 2026, born 1 Sep 2010 ->
    1 Sep 2027. Leap-day birthdays cannot change the academic year, so they need no rule.
    """
    year = birth_date.year + 16
    if (birth_date.month, birth_date.day) >= (9, 1):
        year += 1
    return date(year, 9, 1)


def handed_over(record: RecordState, today: date) -> bool:
    """True once the young person decides; with no birth date known, parents still decide."""
    return record.birth_date is not None and today >= handover_date(record.birth_date)


def decision_makers(record: RecordState, today: date) -> frozenset[str]:
    """References of everyone who currently decides for this child or young person.

    Before the handover: every parent with parental responsibility. From it: the young
    person, or, when they lack mental capacity, their representative (Mental Capacity Act
    2005; Children and Families Act 2014 s80). A young person lacking capacity with no
    representative recorded has no decision-maker: only the custodian can record consent.
    """
    if not handed_over(record, today):
        return frozenset(record.parents)
    if record.lacks_capacity:
        return frozenset({record.representative}) if record.representative else frozenset()
    return frozenset({record.patient_ref})


def parent_consent_lapse(grant: Grant, handover: date) -> date:
    """First day a parent's consent no longer holds after the handover.

    A parent's consent carries over for a grace period so sharing does not stop overnight;
    the young person may shorten it (lapse-date extension) but never lengthen it.
    """
    grace_end = handover + timedelta(days=codes.PARENT_CONSENT_GRACE_DAYS)
    return min(grace_end, grant.lapse_date) if grant.lapse_date else grace_end


# ---------------------------------------------------------------- who the actor is

def is_subject(actor: Actor, record: RecordState) -> bool:
    """The child or young person the record is about."""
    if actor.role not in FAMILY_ROLES:
        return False
    if actor.fhir_user == record.patient_ref:
        return True
    return actor.role == codes.ROLE_YOUNG_PERSON and actor.patient == record.patient_ref


def _actor_refs(actor: Actor, record: RecordState) -> frozenset[str]:
    refs = {actor.fhir_user} if actor.fhir_user else set()
    if is_subject(actor, record):
        refs.add(record.patient_ref)
    return frozenset(refs)


def is_decision_maker(actor: Actor, record: RecordState, today: date) -> bool:
    """The actor decides for this record today (a family token naming a decision-maker)."""
    if actor.role not in FAMILY_ROLES:
        return False
    return bool(_actor_refs(actor, record) & decision_makers(record, today))


def is_family(actor: Actor, record: RecordState, today: date) -> bool:
    """The child or young person themself, or whoever currently decides for them.

    Parents with parental responsibility are family until the handover; after it they see
    what the young person shares with them (a consent naming the parent role), unless they
    are the representative of a young person who lacks capacity.
    """
    return is_subject(actor, record) or is_decision_maker(actor, record, today)


def is_custodian(actor: Actor, record: RecordState) -> bool:
    """The LA that holds custody of the plan here and now."""
    return (actor.role == codes.ROLE_LA and record.custodian is not None
            and actor.organization == record.custodian and not record.transferred_out)


def is_former_custodian(actor: Actor, record: RecordState) -> bool:
    """An LA that held the plan before a transfer (reg 15) and holds it no longer."""
    if actor.role != codes.ROLE_LA or actor.organization is None or is_custodian(actor, record):
        return False
    sent_away = record.transferred_out and actor.organization == record.custodian
    return sent_away or actor.organization in record.former_custodians


def _who(actor: Actor) -> str:
    return actor.organization or actor.fhir_user or f"the role {actor.role}"


# ---------------------------------------------------------------- grants

def grant_names(grant: Grant, actor: Actor, record: RecordState) -> bool:
    """The grant is about this record and names this actor as its recipient.

    A role-wide grant to "parent" reaches only parents with parental responsibility for this
    child, never the parent of another child holding a token with the same role.
    """
    if grant.patient is not None and grant.patient != record.patient_ref:
        return False
    if grant.recipient_org is not None:
        return actor.organization == grant.recipient_org
    if grant.recipient_role is None or grant.recipient_role != actor.role:
        return False
    if actor.role == codes.ROLE_PARENT:
        return actor.fhir_user in record.parents
    return True


def grant_blocker(grant: Grant, action: str, record: RecordState, now: datetime) -> str | None:
    """Why a grant naming the actor cannot be used for `action` now; None when it can."""
    if grant.problems:
        return f"consent {grant.id} is invalid: {grant.problems[0]}"
    if grant.status == "inactive":
        return f"consent {grant.id} revoked"
    if grant.status != "active":
        return f"consent {grant.id} is not active (status {grant.status or 'missing'})"
    if action not in grant.actions:
        return f"consent {grant.id} does not cover {_VERB.get(action, action)}"
    now = as_utc(now)
    if grant.start is not None and now < grant.start:
        return f"consent {grant.id} starts on {uk_date(grant.start).isoformat()}"
    if grant.end is not None and now > grant.end:
        return f"consent {grant.id} expired on {uk_date(grant.end).isoformat()}"
    return grantor_blocker(grant, record, uk_date(now))


def grantor_blocker(grant: Grant, record: RecordState, today: date) -> str | None:
    """Why whoever gave the grant cannot (or can no longer) give it; None when they can."""
    makers = decision_makers(record, today)
    if grant.grantor in makers or (grant.confirmed_by and grant.confirmed_by in makers):
        return None
    if grant.grantor in record.parents and handed_over(record, today):
        handover = handover_date(record.birth_date)  # type: ignore[arg-type]
        lapse = parent_consent_lapse(grant, handover)
        if today < lapse:
            return None
        return (f"consent {grant.id} was given by a parent before the young person took over "
                f"decisions on {handover.isoformat()}; it lapsed on {lapse.isoformat()} "
                "because the young person has not confirmed it")
    return (f"consent {grant.id} was given by {grant.grantor or 'nobody recorded'}, who does "
            "not decide for this child or young person")


def _by_consent(actor: Actor, action: str, record: RecordState, grants: Iterable[Grant],
                now: datetime) -> Decision:
    """Union of the sections of every usable grant naming the actor (deny when none)."""
    sections: set[str] = set()
    used: list[str] = []
    permits: list[str] = []
    blockers: list[str] = []
    for grant in grants:
        if not grant_names(grant, actor, record):
            continue
        blocker = grant_blocker(grant, action, record, now)
        if blocker:
            blockers.append(blocker)
            continue
        sections |= grant.sections
        used.append(grant.id)
        listed = " ".join(s for s in codes.SECTIONS if s in grant.sections)
        permits.append(f"consent {grant.id} permits {_VERB[action]} sections {listed}")
    if not sections:
        first = f"no active consent names {_who(actor)} for {_VERB[action]}"
        return Decision(False, frozenset(), (first, *blockers), (), "none")
    return Decision(True, frozenset(sections), tuple(permits), tuple(used), "consent")


# ---------------------------------------------------------------- the decision

def _permit(sections: frozenset[str], reason: str, basis: str) -> Decision:
    return Decision(True, sections, (reason,), (), basis)


def _deny(reason: str) -> Decision:
    return Decision(False, frozenset(), (reason,), (), "none")


def _custodian(actor: Actor, sections: frozenset[str] = codes.ALL_SECTIONS) -> Decision:
    return _permit(sections, f"{actor.organization} holds custody of the record", "custodian")


def _transferred(actor: Actor) -> Decision:
    return _deny(f"custody transferred: {actor.organization} no longer holds this record")


def _family(actor: Actor, record: RecordState, today: date,
            sections: frozenset[str]) -> Decision:
    if is_decision_maker(actor, record, today):
        return _permit(sections, "the actor decides for this child or young person",
                       "decision-maker")
    return _permit(sections, "the record is the young person's own", "family")


def _sections_decision(actor: Actor, action: str, record: RecordState, grants: Iterable[Grant],
                       now: datetime) -> Decision:
    """read / contribute: custodian, then family, then consent."""
    today = uk_date(now)
    if is_custodian(actor, record):
        return _custodian(actor)
    if is_former_custodian(actor, record):
        return _transferred(actor)
    if actor.role == codes.ROLE_AUDITOR:
        if action == codes.OP_READ:
            return _permit(frozenset(), "auditors read the audit trail, not plan content",
                           "auditor")
        return _deny("auditors cannot contribute to a plan")
    if is_family(actor, record, today):
        family_sections = (codes.ALL_SECTIONS if action == codes.OP_READ
                           else codes.FAMILY_CONTRIBUTE_SECTIONS)
        return _family(actor, record, today, family_sections)
    return _by_consent(actor, action, record, grants, now)


def _write(actor: Actor, record: RecordState, grants: Iterable[Grant], now: datetime) -> Decision:
    if is_custodian(actor, record):
        return _custodian(actor)
    if is_former_custodian(actor, record):
        return _transferred(actor)
    return _deny("only the local authority holding custody may change the record; others "
                 "send their advice as a contribution")


def _manage_consent(actor: Actor, record: RecordState, grants: Iterable[Grant],
                    now: datetime) -> Decision:
    if is_decision_maker(actor, record, uk_date(now)):
        return _permit(frozenset(), "the actor decides who the plan is shared with",
                       "decision-maker")
    if is_custodian(actor, record):
        return _permit(frozenset(), f"{actor.organization} holds custody and may record a "
                       "consent from the family's signed form", "custodian")
    return _deny("only the parent with parental responsibility, or the young person from the "
                 "end of compulsory school age, decides who sees the plan")


def _respond(actor: Actor, record: RecordState, grants: Iterable[Grant],
             now: datetime) -> Decision:
    if is_decision_maker(actor, record, uk_date(now)):
        return _permit(frozenset(), "the actor decides for this child or young person",
                       "decision-maker")
    return _deny("only the parent with parental responsibility, or the young person from the "
                 "end of compulsory school age, may respond to a proposed plan")


def _transfer(actor: Actor, record: RecordState, grants: Iterable[Grant],
              now: datetime) -> Decision:
    if is_custodian(actor, record):
        return _custodian(actor, frozenset())
    if is_former_custodian(actor, record):
        return _transferred(actor)
    return _deny("only the local authority holding custody may transfer the plan")


def _erase(actor: Actor, record: RecordState, grants: Iterable[Grant], now: datetime) -> Decision:
    """Only the custodian LA erases a record: it is the data controller that set its retention
    schedule (UK GDPR Art. 5(1)(e) storage limitation, Art. 17 erasure)."""
    if is_custodian(actor, record):
        return _custodian(actor, frozenset())
    if is_former_custodian(actor, record):
        return _transferred(actor)
    return _deny("only the local authority holding custody may erase the record")


def _audit_log(actor: Actor, record: RecordState, grants: Iterable[Grant],
               now: datetime) -> Decision:
    today = uk_date(now)
    if is_custodian(actor, record):
        return _custodian(actor, frozenset())
    if actor.role == codes.ROLE_AUDITOR:
        return _permit(frozenset(), "auditors read the audit trail", "auditor")
    if is_family(actor, record, today):
        return _family(actor, record, today, frozenset())
    if is_former_custodian(actor, record):
        return _permit(frozenset(), f"custody transferred: {actor.organization} may see only "
                       "its own entries", "former-custodian")
    return _deny("only the family, the local authority holding custody and auditors may see "
                 "who accessed the record")


_RULES: dict[str, Callable[[Actor, RecordState, Iterable[Grant], datetime], Decision]] = {
    codes.OP_WRITE: _write,
    codes.OP_MANAGE_CONSENT: _manage_consent,
    codes.OP_RESPOND: _respond,
    codes.OP_TRANSFER: _transfer,
    codes.OP_AUDIT_LOG: _audit_log,
    codes.OP_ERASE: _erase,
}


def decide(actor: Actor, action: str, record: RecordState, grants: Iterable[Grant],
           now: datetime) -> Decision:
    """May `actor` perform `action` on this record now, and over which sections.

    `action` is one of codes.OPERATIONS. For read, contribute and write, `sections` lists the
    plan sections permitted; the other operations are not section-scoped (sections empty).
    A naive `now` is taken as UTC. Raises ValueError for an unknown action (a programming
    error, not a reason to deny quietly). `grants` is iterated at most once, and only when
    the decision rests on consent (not for the custodian, the family or an auditor), so a
    caller may pass a lazy iterable that loads the record's consents on first use.
    """
    if action in (codes.OP_READ, codes.OP_CONTRIBUTE):
        return _sections_decision(actor, action, record, grants, now)
    rule = _RULES.get(action)
    if rule is None:
        raise ValueError(f"unknown consent action '{action}'; expected one of "
                         f"{', '.join(codes.OPERATIONS)}")
    return rule(actor, record, grants, now)


# ---------------------------------------------------------------- handover flags

CONFIRMATION_TAG_SYSTEM = codes.BASE + "/CodeSystem/ehcp-consent-status"


def confirmation_flag(grant: Grant, record: RecordState, today: date) -> dict | None:
    """The tag a young person sees on a consent their parent gave before the handover and
    they have not confirmed: when it lapses (or lapsed), so they can confirm or let it go."""
    if not handed_over(record, today) or grant.confirmed_by or grant.grantor not in record.parents:
        return None
    if grant.grantor in decision_makers(record, today):
        return None  # a parent acting as representative decides still
    lapse = parent_consent_lapse(grant, handover_date(record.birth_date))  # type: ignore[arg-type]
    verb = "lapses" if today < lapse else "lapsed"
    return {"system": CONFIRMATION_TAG_SYSTEM, "code": "needs-confirmation",
            "display": f"Given by a parent before you took over decisions; {verb} on {lapse.isoformat()} "
                       "unless you confirm it"}
