"""Identifiers the record relies on: NHS number, UPN, DfE LA number, ONS GSS code.

Pure functions, no I/O beyond reading the LA table shipped in the package. Each
``*_problem`` function returns ``None`` for a good value, else one plain-English reason
that the API can put straight into ``OperationOutcome.issue.diagnostics`` (HTTP 422).
Values are checked exactly as sent: nothing is trimmed, upper-cased or re-spaced, so a
stored identifier always equals the one that passed the check (an NHS number written
with spaces is recognised, checked, and refused with its compact form; see
``nhs_number_problem``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from importlib import resources
from typing import Any, Callable, Iterator

from stdnum import exceptions as stdnum_errors
from stdnum.gb import nhs as stdnum_nhs
from stdnum.gb import upn as stdnum_upn

from ehcp_record.errors import FhirError
from ehcp_record.fhir.canonical import naming_system

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
UPN_SYSTEM = naming_system("upn")
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
LA_NUMBER_SYSTEM = naming_system("dfe-la-number")
GSS_SYSTEM = naming_system("ons-gss-code")

_TEN_DIGITS = re.compile(r"[0-9]{10}")
_THREE_DIGITS = re.compile(r"[0-9]{3}")
# GSS codes for English upper-tier LAs: unitary (E06), metropolitan district (E08),
# London borough (E09), county (E10).
_LA_GSS = re.compile(r"E(06|08|09|10)[0-9]{6}")
_WHITESPACE = re.compile(r"\s")


# --------------------------------------------------------------------------- NHS number


def nhs_numbers(resource: dict[str, Any]) -> list[str]:
    """The NHS numbers a Patient carries (`identifier` with the NHS number system), as stored."""
    if resource.get("resourceType") != "Patient":
        return []
    return sorted({i["value"] for i in resource.get("identifier") or []
                   if isinstance(i, dict) and i.get("system") == NHS_NUMBER_SYSTEM and isinstance(i.get("value"), str)})


def nhs_number_taken(values: list[str]) -> FhirError:
    """409 for a second record of a child: one record per NHS number, whoever holds the first,
    since two records would split the plan and its audit. The answer says only that the number
    is taken (If-None-Exist on it finds a record the caller may see). One wording for the
    pre-check and for the database's unique index, so a race loses with the same answer."""
    shown = " and ".join(values)
    return FhirError(409, "duplicate", f"a child with NHS number {shown} is already recorded; create it with "
                     f"If-None-Exist: identifier={NHS_NUMBER_SYSTEM}|{values[0]}, or ask the local authority "
                     "that holds the record for a transfer", ["Patient.identifier"])


def compact_nhs_number(value: str) -> str:
    """The NHS number without the spaces of its printed form: "943 476 5919" -> "9434765919".

    Only ASCII spaces are removed. stdnum's own ``compact`` also drops dashes and folds
    full-width digits to ASCII, which would let "\uff19000000009" pass as a number here.
    """
    return value.replace(" ", "")


def nhs_number_problem(value: Any) -> str | None:
    """None when ``value`` is a valid NHS number as a stored ``Identifier.value``, else why not.

    The check digit is python-stdnum's (``stdnum.gb.nhs``, NHS Data Dictionary "NHS Number",
    modulus 11). The printed form with spaces ("943 476 5919") is recognised: it is compacted
    before the check, so the reason names the real fault, and a correct number written with
    spaces is refused with the form to send instead. It is not rewritten: UK Core and PDS
    exchange ``Identifier.value`` as 10 digits, searches and conditional creates match it
    exactly, and a resource reads back as written, so a stored NHS number is always compact.
    """
    if not isinstance(value, str):
        return "NHS number must be a string of 10 digits"
    compact = compact_nhs_number(value)
    if not _TEN_DIGITS.fullmatch(compact):
        if _WHITESPACE.search(value):
            return "NHS number must be 10 digits with no spaces"
        return "NHS number must be 10 digits"
    if not stdnum_nhs.is_valid(compact):
        if not any(stdnum_nhs.is_valid(compact[:9] + digit) for digit in "0123456789"):
            return (f"NHS number {compact} fails the modulus 11 check: "
                    "no NHS number can begin with these nine digits")
        return (f"NHS number {compact} fails the modulus 11 check: "
                "the last digit does not match the first nine")
    if compact != value:
        return f"NHS number must be 10 digits with no spaces: send {compact}"
    return None


# --------------------------------------------------------------------------- LA table


@dataclass(frozen=True)
class LocalAuthority:
    """An English local authority as DfE and ONS identify it.

    ``number`` is the DfE three-digit LA number (Get Information about Schools), the
    one inside every UPN; ``gss`` the current ONS GSS code. Former LAs stay in the
    table with ``abolished`` (the day their successors took over) because their
    numbers live on in UPNs issued before then.
    """

    number: str
    name: str
    gss: str | None
    former_gss: tuple[str, ...] = ()
    abolished: date | None = None
    replaced_by: tuple[str, ...] = ()

    @property
    def current(self) -> bool:
        """True while the LA exists (it has not been abolished)."""
        return self.abolished is None


@lru_cache(maxsize=1)
def local_authorities() -> tuple[LocalAuthority, ...]:
    """Every LA in the shipped table (``data/la-numbers.json``), ordered by number."""
    text = resources.files("ehcp_record").joinpath("data/la-numbers.json").read_text("utf-8")
    rows = json.loads(text)["local_authorities"]
    return tuple(_la_from_row(row) for row in sorted(rows, key=lambda r: r["number"]))


def _la_from_row(row: dict[str, Any]) -> LocalAuthority:
    abolished = row.get("abolished")
    return LocalAuthority(
        number=row["number"],
        name=row["name"],
        gss=row.get("gss"),
        former_gss=tuple(row.get("former_gss") or ()),
        abolished=date.fromisoformat(abolished) if abolished else None,
        replaced_by=tuple(row.get("replaced_by") or ()),
    )


@lru_cache(maxsize=1)
def _by_number() -> dict[str, LocalAuthority]:
    return {la.number: la for la in local_authorities()}


@lru_cache(maxsize=1)
def _by_gss() -> dict[str, LocalAuthority]:
    index: dict[str, LocalAuthority] = {}
    for la in local_authorities():
        for code in (la.gss, *la.former_gss):
            if code:
                index[code] = la
    return index


def la_by_number(number: str) -> LocalAuthority | None:
    """The LA with this DfE three-digit number ("855"), current or former, or None."""
    return _by_number().get(number) if isinstance(number, str) else None


def la_by_gss(code: str) -> LocalAuthority | None:
    """The LA with this ONS GSS code, or None.

    A superseded code (e.g. E10000023, North Yorkshire before it became unitary in
    2023) finds the LA that now carries the same DfE number.
    """
    return _by_gss().get(code) if isinstance(code, str) else None


def la_number_problem(value: Any) -> str | None:
    """None when ``value`` is a DfE LA number in the shipped table, else why not."""
    if not isinstance(value, str) or not _THREE_DIGITS.fullmatch(value):
        return "DfE LA number must be 3 digits"
    if la_by_number(value) is None:
        return f"{value} is not a DfE local authority number in England"
    return None


def gss_problem(value: Any) -> str | None:
    """None when ``value`` is the ONS GSS code of an English LA in the table."""
    if not isinstance(value, str) or not _LA_GSS.fullmatch(value):
        return "ONS GSS code of a local authority must look like E06000030 (E06, E08, E09 or E10)"
    if la_by_gss(value) is None:
        return f"{value} is not the ONS GSS code of an English local authority"
    return None


# --------------------------------------------------------------------------- UPN


def upn_problem(value: Any) -> str | None:
    """None when ``value`` is a valid UPN, else why not.

    DfE "Unique pupil numbers (UPN)" guidance: a check letter, the 3-digit DfE LA number,
    a 4-digit establishment number, 2 digits for the year of issue and a 3-character
    serial. The check letter and format come from ``stdnum.gb.upn``. Its own LA list is
    from 2011 and lacks the LAs created since (838 Dorset, 839 BCP, 940-943) and those
    abolished in 2009 (820, 875), so the shipped LA table decides which LA numbers exist
    and stdnum's check-letter function still decides the check letter.

    Temporary UPNs (serial = two digits and a letter) are valid UPNs: stdnum accepts
    them and so do we; see ``is_temporary_upn``.
    """
    if not isinstance(value, str):
        return "UPN must be a string of 13 characters"
    if _WHITESPACE.search(value):
        return "UPN must be 13 characters with no spaces"
    if value != value.upper():
        return "UPN must be written in capital letters"
    if len(value) != 13:
        return f"UPN must be 13 characters long, not {len(value)}"
    try:
        stdnum_upn.validate(value)
    except stdnum_errors.InvalidFormat:
        return ("UPN must be a check letter, 11 digits and a final digit or letter "
                "(the letters I, O and S are never used)")
    except stdnum_errors.InvalidComponent:
        return _upn_outside_stdnum_list(value)
    except stdnum_errors.InvalidChecksum:
        return f"UPN {value} has the wrong check letter"
    except stdnum_errors.ValidationError:
        return "UPN is not valid"
    return None


def _upn_outside_stdnum_list(value: str) -> str | None:
    """Decide a UPN whose LA number stdnum does not know, using the shipped table."""
    if la_by_number(value[1:4]) is None:
        return f"UPN {value} does not contain a DfE local authority number ({value[1:4]})"
    if stdnum_upn.calc_check_digit(value[1:]) != value[0]:
        return f"UPN {value} has the wrong check letter"
    return None


def is_temporary_upn(value: str) -> bool:
    """True for a valid temporary UPN, one whose last character is a letter."""
    return upn_problem(value) is None and value[-1].isalpha()


# --------------------------------------------------------------------------- resources

_CHECKS = {
    NHS_NUMBER_SYSTEM: nhs_number_problem,
    UPN_SYSTEM: upn_problem,
    LA_NUMBER_SYSTEM: la_number_problem,
    GSS_SYSTEM: gss_problem,
}
_SYSTEM_LABELS = {
    NHS_NUMBER_SYSTEM: "NHS number",
    UPN_SYSTEM: "UPN",
    LA_NUMBER_SYSTEM: "DfE LA number",
    GSS_SYSTEM: "ONS GSS code",
}


def identifier_problems(resource: dict[str, Any]) -> list[tuple[str, str]]:
    """Every wrong NHS number, UPN, LA number or GSS code anywhere in ``resource``.

    Looks at each ``identifier`` (list or single) and ``valueIdentifier`` in the whole
    tree, so references by identifier, contained resources and Bundle entries are
    covered. Returns ``(path, reason)`` pairs, path in FHIRPath style, e.g.
    ``("Patient.identifier[0].value", "NHS number must be 10 digits")``. Also reports an
    element holding an LA number and a GSS code of two different LAs.
    """
    root = resource.get("resourceType", "Resource") if isinstance(resource, dict) else "Resource"
    problems: list[tuple[str, str]] = []
    for owner_path, identifiers in _identifier_lists(resource, root):
        problems.extend(_check_identifiers(identifiers))
        problems.extend(_la_mismatch(owner_path, identifiers))
    return problems


# A path is kept as a chain of (parent, segment) links and only rendered to a string for
# elements that hold identifiers, so walking a deep tree costs time linear in its size.
_PathLink = tuple[Any, str]


def _render(link: _PathLink) -> str:
    segments: list[str] = []
    while link is not None:
        link, segment = link
        segments.append(segment)
    return "".join(reversed(segments))


def _identifier_lists(node: Any, root: str) -> Iterator[tuple[str, list[tuple[str, Any]]]]:
    """Yield (element path, [(identifier path, identifier)]) for each element that has any.

    Iterative on purpose: a hostile, deeply nested body must not exhaust the stack.
    """
    stack: list[tuple[_PathLink, Any]] = [((None, root), node)]
    while stack:
        link, current = stack.pop()
        if isinstance(current, list):
            stack.extend(((link, f"[{i}]"), item) for i, item in reversed(list(enumerate(current))))
            continue
        if not isinstance(current, dict):
            continue
        if "identifier" in current or "valueIdentifier" in current:
            path = _render(link)
            found = _identifiers_of(path, current)
            if found:
                yield path, found
        for key, child in reversed(list(current.items())):
            if isinstance(child, (dict, list)):
                stack.append(((link, f".{key}"), child))


def _identifiers_of(path: str, element: dict) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    for key in ("identifier", "valueIdentifier"):
        value = element.get(key)
        if isinstance(value, list):
            found.extend((f"{path}.{key}[{i}]", item) for i, item in enumerate(value))
        elif value is not None:
            found.append((f"{path}.{key}", value))
    return found


def _check_identifiers(identifiers: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for path, identifier in identifiers:
        if not isinstance(identifier, dict):
            continue
        check = _CHECKS.get(identifier.get("system"))
        if check is None:
            continue
        if "value" not in identifier:
            label = _SYSTEM_LABELS[identifier["system"]]
            problems.append((path, f"{label} identifier has no value"))
            continue
        reason = check(identifier["value"])
        if reason:
            problems.append((f"{path}.value", reason))
    return problems


def _la_mismatch(owner_path: str, identifiers: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    """An element naming LA 855 by number and E06000016 by GSS code names two LAs."""
    by_number = _values_for(identifiers, LA_NUMBER_SYSTEM, la_by_number)
    by_gss = _values_for(identifiers, GSS_SYSTEM, la_by_gss)
    problems: list[tuple[str, str]] = []
    for number, la_num in by_number:
        for code, la_gss in by_gss:
            if la_num.number != la_gss.number:
                problems.append((
                    f"{owner_path}.identifier",
                    f"DfE LA number {number} ({la_num.name}) and ONS GSS code "
                    f"{code} ({la_gss.name}) name different local authorities",
                ))
    return problems


def _values_for(
    identifiers: list[tuple[str, Any]],
    system: str,
    lookup: Callable[[str], LocalAuthority | None],
) -> list[tuple[str, LocalAuthority]]:
    """(value, LA) for each identifier of ``system`` whose value names a known LA."""
    found = []
    for _, identifier in identifiers:
        if isinstance(identifier, dict) and identifier.get("system") == system:
            value = identifier.get("value")
            la = lookup(value)
            if la is not None:
                found.append((value, la))
    return found
