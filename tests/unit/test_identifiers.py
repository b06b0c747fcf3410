"""NHS number, UPN, DfE LA number and GSS code checks (ehcp_record.fhir.identifiers)."""

from __future__ import annotations

import re
from datetime import date

import pytest
from hypothesis import given, strategies as st
from stdnum.gb import nhs as stdnum_nhs
from stdnum.gb import upn as stdnum_upn

from ehcp_record.fhir.identifiers import (
    GSS_SYSTEM,
    LA_NUMBER_SYSTEM,
    NHS_NUMBER_SYSTEM,
    ODS_SYSTEM,
    UPN_SYSTEM,
    identifier_problems,
    is_temporary_upn,
    la_by_gss,
    la_by_number,
    la_number_problem,
    gss_problem,
    local_authorities,
    compact_nhs_number,
    nhs_number_problem,
    upn_problem,
)


def with_check_letter(body: str) -> str:
    """A UPN made from its last 12 characters, check letter computed by stdnum."""
    return stdnum_upn.calc_check_digit(body) + body


# --------------------------------------------------------------------------- NHS number


@pytest.mark.parametrize("value", [
    "9000000009",  # the NHS test number in EHCP-REFERENCE
    "9434765870",  # 11 - (308 mod 11) = 11, which becomes check digit 0
    "4010232137",
])
def test_valid_nhs_numbers(value):
    assert nhs_number_problem(value) is None


def modulus_11_check_digit(first_nine: str) -> int | None:
    """Test oracle, NHS Data Dictionary "NHS Number": weights 10 down to 2, 11 - (sum mod 11);
    11 becomes 0 and 10 means no NHS number begins with these nine digits."""
    check = 11 - sum(int(d) * w for d, w in zip(first_nine, range(10, 1, -1), strict=True)) % 11
    return {11: 0, 10: None}.get(check, check)


@pytest.mark.parametrize("value, reason", [
    ("9000000008", "NHS number 9000000008 fails the modulus 11 check: the last digit does not match the first nine"),
    # 123456789: weighted sum 210, 210 mod 11 = 1, 11 - 1 = 10 -> no check digit exists
    ("1234567890", "NHS number 1234567890 fails the modulus 11 check: no NHS number can begin with these nine digits"),
    ("1234567899", "NHS number 1234567899 fails the modulus 11 check: no NHS number can begin with these nine digits"),
    # the printed form is recognised and checked, but stored Identifier.value is compact
    ("943 476 5870", "NHS number must be 10 digits with no spaces: send 9434765870"),
    ("943 476 5919", "NHS number must be 10 digits with no spaces: send 9434765919"),
    (" 9000000009", "NHS number must be 10 digits with no spaces: send 9000000009"),
    ("943 476 5871", "NHS number 9434765871 fails the modulus 11 check: the last digit does not match the first nine"),
    ("943\t476 5870", "NHS number must be 10 digits with no spaces"),
    ("900 000 000", "NHS number must be 10 digits with no spaces"),
    ("900-000-0009", "NHS number must be 10 digits"),
    ("900000000", "NHS number must be 10 digits"),
    ("90000000090", "NHS number must be 10 digits"),
    ("\uff19000000009", "NHS number must be 10 digits"),  # full-width 9 is not 0-9
    ("", "NHS number must be 10 digits"),
    (9000000009, "NHS number must be a string of 10 digits"),
    (None, "NHS number must be a string of 10 digits"),
])
def test_invalid_nhs_numbers(value, reason):
    assert nhs_number_problem(value) == reason


@pytest.mark.parametrize("prefix, check", [
    ("900000000", 9),
    ("943476587", 0),     # 11 -> 0
    ("123456789", None),  # 10 -> invalid
    ("401023213", 7),
])
def test_nhs_check_digit(prefix, check):
    assert modulus_11_check_digit(prefix) == check
    valid = [d for d in "0123456789" if nhs_number_problem(prefix + d) is None]
    assert valid == ([] if check is None else [str(check)])


def test_compact_removes_only_spaces():
    assert compact_nhs_number("943 476 5919") == "9434765919"
    assert compact_nhs_number("943-476-5919") == "943-476-5919"


@given(st.from_regex(r"[0-9]{9}", fullmatch=True))
def test_each_prefix_has_exactly_one_valid_check_digit_or_none(prefix):
    valid = [d for d in "0123456789" if nhs_number_problem(prefix + d) is None]
    expected = modulus_11_check_digit(prefix)
    assert valid == ([] if expected is None else [str(expected)])
    # the spaced printed form names the same fault, or the compact form to send
    for d in "0123456789":
        spaced = f"{prefix[:3]} {prefix[3:6]} {prefix[6:]}{d}"
        reason = nhs_number_problem(spaced)
        assert reason is not None
        assert (reason.endswith(f"send {prefix}{d}")) == (d in valid)
    # python-stdnum is an independent implementation of the same check
    assert valid == [d for d in "0123456789" if stdnum_nhs.is_valid(prefix + d)]


# --------------------------------------------------------------------------- UPN


@pytest.mark.parametrize("value", [
    "B801200005001",                          # stdnum's own example
    with_check_letter("855" + "2001" + "24" + "017"),   # Leicestershire
    with_check_letter("916" + "4023" + "19" + "305"),   # Gloucestershire
    with_check_letter("838" + "2000" + "21" + "001"),   # Dorset since 2019: not in stdnum's list
    with_check_letter("943" + "2000" + "23" + "001"),   # Westmorland and Furness since 2023
    with_check_letter("820" + "2000" + "05" + "001"),   # Bedfordshire, abolished 2009: UPNs live on
    with_check_letter("909" + "2000" + "15" + "001"),   # Cumbria, abolished 2023
])
def test_valid_upns(value):
    assert upn_problem(value) is None


def test_new_la_numbers_are_checked_by_the_table_not_stdnums_stale_list():
    value = with_check_letter("838" + "2000" + "21" + "001")
    assert not stdnum_upn.is_valid(value)  # stdnum 2.2 still has 835 Dorset, not 838
    assert upn_problem(value) is None
    wrong_letter = ("A" if value[0] != "A" else "B") + value[1:]
    assert upn_problem(wrong_letter) == f"UPN {wrong_letter} has the wrong check letter"


def test_temporary_upn_is_valid_and_recognised():
    temporary = with_check_letter("801" + "2000" + "05" + "01A")
    permanent = "B801200005001"
    assert upn_problem(temporary) is None
    assert is_temporary_upn(temporary)
    assert not is_temporary_upn(permanent)
    assert not is_temporary_upn("A801200005001")  # invalid, so not a temporary UPN either


@pytest.mark.parametrize("value, reason", [
    ("A801200005001", "UPN A801200005001 has the wrong check letter"),
    ("b801200005001", "UPN must be written in capital letters"),
    ("B801 200005001", "UPN must be 13 characters with no spaces"),
    ("B801200005001 ", "UPN must be 13 characters with no spaces"),
    ("B80120000500", "UPN must be 13 characters long, not 12"),
    ("X80120000A001", "UPN must be a check letter, 11 digits and a final digit or letter "
                      "(the letters I, O and S are never used)"),
    ("E000200005001", "UPN E000200005001 does not contain a DfE local authority number (000)"),
    (with_check_letter("702" + "2000" + "05" + "001"),  # BFPO overseas: not an English LA
     f"UPN {with_check_letter('702200005001')} does not contain a DfE local authority number (702)"),
    (None, "UPN must be a string of 13 characters"),
])
def test_invalid_upns(value, reason):
    assert upn_problem(value) == reason


def test_upn_ending_in_a_letter_never_used_is_a_format_problem():
    body = "80120000501"
    for letter in "IOS":
        value = "A" + body + letter
        assert "never used" in upn_problem(value)


@given(
    la=st.sampled_from([la.number for la in local_authorities()]),
    rest=st.from_regex(r"[0-9]{9}|[0-9]{8}[A-HJ-NPQRT-Z]", fullmatch=True),
)
def test_any_upn_with_a_table_la_and_stdnums_check_letter_is_valid(la, rest):
    value = with_check_letter(la + rest)
    assert upn_problem(value) is None
    for letter in "ABCDEFGHJKLMNPQRTUVWXYZ":
        if letter != value[0]:
            assert upn_problem(letter + value[1:]) is not None


# --------------------------------------------------------------------------- LA table


def test_table_has_every_current_english_la_once():
    current = [la for la in local_authorities() if la.current]
    assert len(current) == 153
    numbers = [la.number for la in local_authorities()]
    assert len(numbers) == len(set(numbers))
    codes = [c for la in local_authorities() for c in (la.gss, *la.former_gss)]
    assert len(codes) == len(set(codes))
    assert all(re.fullmatch(r"E(06|08|09|10)[0-9]{6}", code) for code in codes)


@pytest.mark.parametrize("number, name, gss", [
    ("855", "Leicestershire", "E10000018"),
    ("856", "Leicester", "E06000016"),
    ("857", "Rutland", "E06000017"),
    ("866", "Swindon", "E06000030"),
    ("916", "Gloucestershire", "E10000013"),
    ("201", "City of London", "E09000001"),
    ("330", "Birmingham", "E08000025"),
    ("420", "Isles of Scilly", "E06000053"),
    ("838", "Dorset", "E06000059"),
    ("839", "Bournemouth, Christchurch and Poole", "E06000058"),
    ("942", "Cumberland", "E06000063"),
    ("815", "North Yorkshire", "E06000065"),
    ("370", "Barnsley", "E08000038"),
])
def test_reference_las(number, name, gss):
    la = la_by_number(number)
    assert (la.name, la.gss, la.current) == (name, gss, True)
    assert la_by_gss(gss) == la


def test_table_agrees_with_stdnum_upn_la_list():
    ours = {int(la.number) for la in local_authorities()}
    stdnums = set(stdnum_upn._la_numbers)
    assert stdnums <= ours, "every LA number stdnum accepts in a UPN must be in our table"
    # what stdnum 2.2 (list of 2011) lacks: LAs abolished in 2009 and those created since
    assert ours - stdnums == {820, 875, 838, 839, 940, 941, 942, 943}


def test_abolished_las_name_current_successors():
    abolished = {la.number: la for la in local_authorities() if not la.current}
    assert set(abolished) == {"820", "835", "836", "837", "875", "909", "928"}
    assert abolished["909"].abolished == date(2023, 4, 1)
    assert abolished["909"].replaced_by == ("942", "943")
    for la in abolished.values():
        assert la.replaced_by and all(la_by_number(n).current for n in la.replaced_by)


@pytest.mark.parametrize("former, number", [
    ("E10000023", "815"),  # North Yorkshire county -> unitary 2023
    ("E10000027", "933"),  # Somerset
    ("E10000002", "825"),  # Buckinghamshire
    ("E06000048", "929"),  # Northumberland, recoded 2013
    ("E08000020", "390"),  # Gateshead, recoded 2013
    ("E08000016", "370"),  # Barnsley, recoded 2025
    ("E08000019", "373"),  # Sheffield, recoded 2025
])
def test_superseded_gss_codes_find_the_la(former, number):
    assert la_by_gss(former).number == number


@pytest.mark.parametrize("value", ["85", "8555", "000", 855, None, " 855"])
def test_unknown_la_numbers(value):
    assert la_by_number(value) is None
    assert la_number_problem(value) is not None


def test_la_and_gss_problem_reasons():
    assert la_number_problem("855") is None
    assert la_number_problem("999") == "999 is not a DfE local authority number in England"
    assert gss_problem("E06000030") is None
    assert gss_problem("E06000099") == "E06000099 is not the ONS GSS code of an English local authority"
    assert "E06, E08, E09 or E10" in gss_problem("E07000026")  # a district, not an LA
    assert la_by_gss("W06000001") is None


# --------------------------------------------------------------------------- resources


def test_patient_identifiers_are_checked_with_paths():
    patient = {
        "resourceType": "Patient",
        "identifier": [
            {"system": NHS_NUMBER_SYSTEM, "value": "9000000009"},
            {"system": UPN_SYSTEM, "value": "A801200005001"},
            {"system": "urn:example:local", "value": "anything goes"},
            {"system": NHS_NUMBER_SYSTEM, "value": "9000000008"},
        ],
    }
    assert identifier_problems(patient) == [
        ("Patient.identifier[1].value", "UPN A801200005001 has the wrong check letter"),
        ("Patient.identifier[3].value",
         "NHS number 9000000008 fails the modulus 11 check: the last digit does not match the first nine"),
    ]


def test_valid_resources_have_no_problems():
    patient = {"resourceType": "Patient", "identifier": [
        {"system": NHS_NUMBER_SYSTEM, "value": "9000000009"},
        {"system": UPN_SYSTEM, "value": "B801200005001"},
    ]}
    organization = {"resourceType": "Organization", "identifier": [
        {"system": LA_NUMBER_SYSTEM, "value": "866"},
        {"system": GSS_SYSTEM, "value": "E06000030"},
        {"system": ODS_SYSTEM, "value": "RVJ"},
    ]}
    assert identifier_problems(patient) == []
    assert identifier_problems(organization) == []
    assert identifier_problems({"resourceType": "Patient"}) == []


def test_single_identifier_and_references_by_identifier():
    composition = {
        "resourceType": "Composition",
        "identifier": {"system": LA_NUMBER_SYSTEM, "value": "123"},
        "subject": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": "900 000 0009"}},
        "author": [{"identifier": {"system": LA_NUMBER_SYSTEM, "value": "866"}}],
    }
    assert identifier_problems(composition) == [
        ("Composition.identifier.value", "123 is not a DfE local authority number in England"),
        ("Composition.subject.identifier.value", "NHS number must be 10 digits with no spaces: send 9000000009"),
    ]


def test_bundle_entries_contained_and_value_identifier():
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": {"resourceType": "Patient",
                          "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": "9000000009"}]}},
            {"resource": {
                "resourceType": "Task",
                "contained": [{"resourceType": "Organization",
                               "identifier": [{"system": GSS_SYSTEM, "value": "E99999999"}]}],
                "input": [{"valueIdentifier": {"system": UPN_SYSTEM, "value": "short"}}],
            }},
        ],
    }
    paths = [path for path, _ in identifier_problems(bundle)]
    assert paths == [
        "Bundle.entry[1].resource.contained[0].identifier[0].value",
        "Bundle.entry[1].resource.input[0].valueIdentifier.value",
    ]


def test_identifier_of_an_identifiers_assigner_is_checked_too():
    patient = {"resourceType": "Patient", "identifier": [{
        "system": UPN_SYSTEM, "value": "B801200005001",
        "assigner": {"identifier": {"system": LA_NUMBER_SYSTEM, "value": "8O1"}},
    }]}
    assert identifier_problems(patient) == [
        ("Patient.identifier[0].assigner.identifier.value", "DfE LA number must be 3 digits"),
    ]


def test_identifier_without_value_is_a_problem():
    patient = {"resourceType": "Patient", "identifier": [{"system": NHS_NUMBER_SYSTEM}]}
    assert identifier_problems(patient) == [
        ("Patient.identifier[0]", "NHS number identifier has no value"),
    ]


def test_la_number_and_gss_code_must_name_the_same_la():
    organization = {"resourceType": "Organization", "identifier": [
        {"system": LA_NUMBER_SYSTEM, "value": "855"},
        {"system": GSS_SYSTEM, "value": "E06000016"},
    ]}
    assert identifier_problems(organization) == [(
        "Organization.identifier",
        "DfE LA number 855 (Leicestershire) and ONS GSS code E06000016 (Leicester) "
        "name different local authorities",
    )]
    organization["identifier"][1]["value"] = "E10000018"
    assert identifier_problems(organization) == []


def test_deeply_nested_input_does_not_exhaust_the_stack():
    node: dict = {"system": NHS_NUMBER_SYSTEM, "value": "bad"}
    resource: dict = {"resourceType": "Patient", "identifier": [node]}
    inner = resource
    for _ in range(5000):
        child: dict = {}
        inner["extension"] = [child]
        inner = child
    inner["valueIdentifier"] = {"system": NHS_NUMBER_SYSTEM, "value": "also bad"}
    problems = identifier_problems(resource)
    assert len(problems) == 2
    assert problems[0] == ("Patient.identifier[0].value", "NHS number must be 10 digits")


def test_nhs_numbers_of_a_patient_and_the_refusal_of_a_second_record():
    from ehcp_record.fhir.identifiers import NHS_NUMBER_SYSTEM, nhs_number_taken, nhs_numbers

    patient = {"resourceType": "Patient", "identifier": [
        {"system": NHS_NUMBER_SYSTEM, "value": "9434765919"}, {"system": "urn:other", "value": "x"},
        {"system": NHS_NUMBER_SYSTEM, "value": "9434765919"}]}
    assert nhs_numbers(patient) == ["9434765919"]
    assert nhs_numbers(dict(patient, resourceType="RelatedPerson")) == []
    error = nhs_number_taken(["9434765919"])
    assert (error.status, error.code, error.expression) == (409, "duplicate", ["Patient.identifier"])
    assert error.diagnostics.startswith("a child with NHS number 9434765919 is already recorded")
