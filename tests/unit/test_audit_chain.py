"""The audit hash chain: canonical JSON (RFC 8785), entries, checkpoints, verification."""

from __future__ import annotations

import copy
import hashlib
import json
import random
import struct
import time
import tracemalloc
from collections import OrderedDict
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ehcp_record.audit import signing
from ehcp_record.audit.chain import (
    GENESIS,
    ChainHead,
    ChainNames,
    ChainVerdict,
    _write,
    canonical_json,
    checkpoint_body,
    checkpoint_entry_body,
    content_hash,
    entry_hash,
    hash_entry,
    iso_instant,
    next_checkpoint_entry,
    next_entry,
    sign_checkpoint,
    verify_chain,
    verify_checkpoint,
)

RECORD = "patient-7f3a"
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------------------------
# canonical_json
# ---------------------------------------------------------------------------------------------


def test_rfc8785_example_object() -> None:
    """RFC 8785 §3.2.2's worked example, byte for byte."""
    value = {
        "numbers": [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001],
        "string": "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/",
        "literals": [None, True, False],
    }
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonical_json(value) == expected.encode("utf-8")


def test_rfc8785_sorts_keys_by_utf16_code_units() -> None:
    """RFC 8785 §3.2.3: the emoji (a surrogate pair) sorts before U+FB33, unlike code points."""
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    keys = list(json.loads(canonical_json(value)))
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


# RFC 8785 Appendix B: IEEE-754 bit patterns and their ECMAScript serialisation.
_NUMBERS = {
    "0000000000000000": "0",
    "8000000000000000": "0",
    "0000000000000001": "5e-324",
    "8000000000000001": "-5e-324",
    "7fefffffffffffff": "1.7976931348623157e+308",
    "4340000000000000": "9007199254740992",
    "c340000000000000": "-9007199254740992",
    "4430000000000000": "295147905179352830000",
    "44b52d02c7e14af5": "9.999999999999997e+22",
    "44b52d02c7e14af6": "1e+23",
    "44b52d02c7e14af7": "1.0000000000000001e+23",
    "444b1ae4d6e2ef4e": "999999999999999700000",
    "444b1ae4d6e2ef50": "1e+21",
    "3eb0c6f7a0b5ed8c": "9.999999999999997e-7",
    "3eb0c6f7a0b5ed8d": "0.000001",
    "41b3de4355555553": "333333333.3333332",
    "41b3de4355555554": "333333333.33333325",
    "41b3de4355555557": "333333333.33333343",
    "becbf647612f3696": "-0.0000033333333333333333",
    "43143ff3c1cb0959": "1424953923781206.2",
}


@pytest.mark.parametrize(("bits", "text"), sorted(_NUMBERS.items()))
def test_rfc8785_number_serialisation(bits: str, text: str) -> None:
    value = struct.unpack(">d", bytes.fromhex(bits))[0]
    assert canonical_json([value]) == f"[{text}]".encode()


def test_integral_floats_are_written_like_integers() -> None:
    assert canonical_json({"v": 3.0, "w": 3}) == b'{"v":3,"w":3}'


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused(bad: float) -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": [bad]})


def test_integers_are_written_exactly() -> None:
    """Within ±2**53 this is RFC 8785; beyond it we keep the exact value rather than round."""
    assert canonical_json([2**53 - 1, -(2**53)]) == b"[9007199254740991,-9007199254740992]"
    assert canonical_json({"n": 2**60}) == b'{"n":1152921504606846976}'


@pytest.mark.parametrize(
    "bad", [{1: "a"}, {None: 1}, {"d": datetime(2025, 1, 1)}, {b"k": 1}, {"s": {1, 2}}]
)
def test_non_json_values_are_refused(bad: object) -> None:
    with pytest.raises(TypeError):
        canonical_json(bad)


def test_lone_surrogates_are_refused() -> None:
    with pytest.raises(ValueError):
        canonical_json({"text": "\ud800"})
    with pytest.raises(ValueError):
        canonical_json({"\udfff": 1, "é": 2})


def test_circular_structures_are_refused() -> None:
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError):
        canonical_json(loop)


def test_json_types_are_told_apart() -> None:
    assert canonical_json([True, 1, "1", None, False, 0]) == b'[true,1,"1",null,false,0]'
    assert canonical_json(("a", 1)) == canonical_json(["a", 1])
    assert canonical_json(OrderedDict([("b", 1), ("a", 2)])) == b'{"a":2,"b":1}'


def test_strings_escape_only_what_rfc8785_requires() -> None:
    text = '\b\t\n\f\r\x00\x1f\x7f\u2028é\U0001f600"\\/'
    assert canonical_json(text) == (
        '"\\b\\t\\n\\f\\r\\u0000\\u001f\x7f\u2028é\U0001f600\\"\\\\/"'.encode("utf-8")
    )


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=12))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
float_values = st.floats(allow_nan=False, allow_infinity=False)


def _shuffled(value: object, rng: random.Random) -> object:
    """The same JSON value with every object's keys inserted in a random order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {key: _shuffled(item, rng) for key, item in items}
    if isinstance(value, list):
        return [_shuffled(item, rng) for item in value]
    return value


@FAST
@given(value=json_values, rng=st.randoms(use_true_random=False))
def test_canonical_json_ignores_key_order(value: object, rng: random.Random) -> None:
    assert canonical_json(_shuffled(value, rng)) == canonical_json(value)


@FAST
@given(value=json_values)
def test_canonical_json_round_trips(value: object) -> None:
    text = canonical_json(value)
    assert json.loads(text) == value
    assert canonical_json(json.loads(text)) == text


@FAST
@given(
    value=st.recursive(
        json_scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(
                st.text(st.characters(max_codepoint=0xD7FF), max_size=6), inner, max_size=4
            ),
        ),
        max_leaves=20,
    )
)
def test_fast_path_and_rfc8785_writer_agree(value: object) -> None:
    """The C-encoder fast path and the pure-Python RFC 8785 writer give identical bytes
    wherever code-point and UTF-16 key order coincide (keys below U+D800)."""
    parts: list[str] = []
    _write(value, parts)
    fast = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert "".join(parts) == fast
    assert canonical_json(value) == fast.encode("utf-8")


def test_the_fast_path_writes_what_the_stdlib_encoder_writes() -> None:
    """The fast path writes with orjson: byte for byte the stdlib encoder's output (escaping of
    every code point, integers at and past 64 bits, nesting past orjson's depth limit)."""
    stdlib = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    points = [chr(cp) for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]
    for start in range(0, len(points), 4096):
        value = {"s": points[start:start + 4096], "t": "".join(points[start:start + 64])}
        assert canonical_json(value) == stdlib.encode(value).encode("utf-8")
    for number in (2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1, 10**40):
        assert canonical_json({"n": [number]}) == stdlib.encode({"n": [number]}).encode("utf-8")
    deep: object = "leaf"
    for _ in range(300):
        deep = {"k": [deep]}
    assert canonical_json(deep) == stdlib.encode(deep).encode("utf-8")


@FAST
@given(number=float_values)
def test_floats_round_trip_exactly(number: float) -> None:
    """Any finite double survives canonical JSON exactly, and re-canonicalising what a JSON
    parser reads back (Python reads 1e+16 style integral values as int) gives the same bytes."""
    text = canonical_json([number])
    assert float(json.loads(text)[0]) == number
    assert canonical_json(json.loads(text)) == text


def test_content_hash_is_sha256_of_canonical_json() -> None:
    resource = {"resourceType": "Goal", "id": "g1", "meta": {"versionId": "2"}}
    reordered = {"meta": {"versionId": "2"}, "id": "g1", "resourceType": "Goal"}
    assert content_hash(resource) == hashlib.sha256(canonical_json(resource)).hexdigest()
    assert content_hash(reordered) == content_hash(resource)
    assert content_hash({**resource, "id": "g2"}) != content_hash(resource)


# ---------------------------------------------------------------------------------------------
# entries
# ---------------------------------------------------------------------------------------------

AT = "2025-03-01T09:30:00.123Z"


def _body(index: int = 0, **extra: object) -> dict:
    return {
        "at": AT,
        "action": "read",
        "outcome": "permit",
        "reason": f"consent grants read ({index})",
        "agent": {
            "sub": "u1",
            "role": "health",
            "fhirUser": "Practitioner/p1",
            "organization": "Organization/o1",
            "iss": "https://idp.example.org",
        },
        "source": {"ip": "10.0.0.1", "user_agent": "test", "request_id": f"req-{index}"},
        "resources": [{"ref": f"Composition/c1/_history/{index + 1}", "sha256": "a" * 64}],
        "consent": ["consent-1"],
        **extra,
    }


def _chain(bodies: list[dict], record: str = RECORD) -> list[dict]:
    entries, head = [], None
    for body in bodies:
        entry = next_entry(record, head, body)
        entries.append(entry)
        head = ChainHead.of(entry)
    return entries


def test_entry_hash_is_sha256_over_the_documented_fields() -> None:
    body = _body()
    expected = hashlib.sha256(
        canonical_json({"record": RECORD, "seq": 1, "prev": GENESIS, "body": body})
    ).hexdigest()
    assert entry_hash(RECORD, 1, GENESIS, body) == expected
    assert entry_hash("other", 1, GENESIS, body) != expected
    assert entry_hash(RECORD, 2, GENESIS, body) != expected
    assert entry_hash(RECORD, 1, "1" * 64, body) != expected


def test_next_entry_links_to_the_head() -> None:
    first = next_entry(RECORD, None, _body(0))
    second = next_entry(RECORD, ChainHead.of(first), _body(1))
    assert (first["seq"], first["prev"]) == (1, GENESIS)
    assert (second["seq"], second["prev"]) == (2, first["hash"])
    assert set(first) == {"record", "seq", "prev", "hash", "body"}
    assert first["hash"] == entry_hash(RECORD, 1, GENESIS, first["body"])


def test_next_entry_stores_its_own_copy_of_the_body() -> None:
    body = _body()
    entry = next_entry(RECORD, None, body)
    body["reason"] = "changed afterwards"
    body["agent"]["sub"] = "someone else"
    assert entry["body"]["reason"] == "consent grants read (0)"
    assert verify_chain([entry], RECORD).valid


def test_next_entry_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        next_entry("", None, _body())
    with pytest.raises(TypeError):
        next_entry(RECORD, None, ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        next_entry(RECORD, None, _body(extra=float("nan")))


def test_iso_instant_is_utc_with_milliseconds() -> None:
    moment = datetime(2025, 3, 1, 10, 30, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert iso_instant(moment) == "2025-03-01T09:30:00.123Z"
    assert iso_instant().endswith("Z")
    with pytest.raises(ValueError):
        iso_instant(datetime(2025, 3, 1))


# ---------------------------------------------------------------------------------------------
# verification: intact chains and every kind of tampering
# ---------------------------------------------------------------------------------------------

_ALPHABET = 'abcXYZ019 é€\u2028\U0001f600"\\\n'


def _random_body(rng: random.Random) -> dict:
    def text(size: int) -> str:
        return "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, size)))

    return {
        "at": f"2025-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T0{rng.randint(0, 9)}:00:00."
        f"{rng.randint(0, 999):03d}Z",
        "action": rng.choice(
            [
                "create",
                "read",
                "update",
                "search",
                "vread",
                "history",
                "consent-decision",
                "refusal",
                "propose",
                "respond",
                "issue",
            ]
        ),
        "outcome": rng.choice(["permit", "deny", "error"]),
        "reason": text(20),
        "agent": {"sub": text(8), "role": rng.choice(["parent", "la", "health"]), "iss": text(5)},
        "source": {
            "ip": f"10.0.{rng.randint(0, 255)}.{rng.randint(0, 255)}",
            "request_id": text(6),
        },
        "resources": [
            {
                "ref": f"Goal/{text(4)}/_history/{rng.randint(1, 9)}",
                "sha256": rng.choice([None, f"{rng.getrandbits(256):064x}"]),
            }
            for _ in range(rng.randint(0, 3))
        ],
        "consent": [text(5) for _ in range(rng.randint(0, 2))],
        "count": rng.randint(-(2**40), 2**40),
        "flag": rng.choice([True, False, None]),
    }


@st.composite
def chains(draw: st.DrawFn, min_size: int = 1) -> list[dict]:
    """A valid chain of 1..200 entries with random bodies."""
    size = draw(st.integers(min_size, 200))
    rng = random.Random(draw(st.integers(0, 2**64)))
    return _chain([_random_body(rng) for _ in range(size)])


def _first_difference(original: list[dict], mutated: list[dict]) -> int:
    """1-based position of the first entry that is not what the intact chain holds there."""
    for position, (kept, seen) in enumerate(zip(original, mutated, strict=False), start=1):
        if kept != seen:
            return position
    return min(len(original), len(mutated)) + 1


def _assert_caught(original: list[dict], mutated: list[dict]) -> ChainVerdict:
    verdict = verify_chain(mutated, RECORD)
    assert not verdict.valid
    assert verdict.first_invalid == _first_difference(original, mutated)
    assert verdict.entries == len(mutated)
    assert verdict.reason
    return verdict


@FAST
@given(chain=chains())
def test_random_chains_verify(chain: list[dict]) -> None:
    verdict = verify_chain(chain, RECORD)
    assert verdict == ChainVerdict(True, len(chain), None, f"{len(chain)} entries verified")


@settings(max_examples=25, deadline=None)
@given(
    bodies=st.lists(
        st.dictionaries(st.text(max_size=6), json_values, max_size=4), min_size=1, max_size=6
    )
)
def test_chains_of_arbitrary_json_bodies_verify(bodies: list[dict]) -> None:
    chain = _chain(bodies)
    assert verify_chain(chain, RECORD).valid
    assert verify_chain(json.loads(json.dumps(chain)), RECORD).valid  # survives storage


_EDITS = {
    "reason": lambda body: body.__setitem__("reason", body["reason"] + "!"),
    "outcome": lambda body: body.__setitem__(
        "outcome", "deny" if body["outcome"] != "deny" else "permit"
    ),
    "agent": lambda body: body["agent"].__setitem__("sub", body["agent"]["sub"] + "x"),
    "resources": lambda body: body.__setitem__(
        "resources", body["resources"] + [{"ref": "Goal/g", "sha256": None}]
    ),
    "add key": lambda body: body.__setitem__("extra", 1),
    "drop key": lambda body: body.pop("consent"),
    "at": lambda body: body.__setitem__("at", "2030-01-01T00:00:00.000Z"),
}


@FAST
@given(chain=chains(), data=st.data())
def test_editing_a_body_is_caught_at_that_entry(chain: list[dict], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(chain) - 1))
    edit = data.draw(st.sampled_from(sorted(_EDITS)))
    mutated = copy.deepcopy(chain)
    _EDITS[edit](mutated[index]["body"])
    verdict = _assert_caught(chain, mutated)
    assert verdict.first_invalid == index + 1


@FAST
@given(chain=chains(min_size=2), data=st.data())
def test_deleting_an_entry_is_caught(chain: list[dict], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(chain) - 2))  # a cut at the tail: see the next tests
    mutated = chain[:index] + chain[index + 1 :]
    assert _assert_caught(chain, mutated).first_invalid == index + 1


@FAST
@given(chain=chains(min_size=2), data=st.data())
def test_swapping_two_entries_is_caught(chain: list[dict], data: st.DataObject) -> None:
    first = data.draw(st.integers(0, len(chain) - 2))
    second = data.draw(st.integers(first + 1, len(chain) - 1))
    mutated = list(chain)
    mutated[first], mutated[second] = mutated[second], mutated[first]
    assert _assert_caught(chain, mutated).first_invalid == first + 1


@FAST
@given(chain=chains(), data=st.data())
def test_inserting_a_copy_is_caught(chain: list[dict], data: st.DataObject) -> None:
    source = data.draw(st.integers(0, len(chain) - 1))
    place = data.draw(st.integers(0, len(chain)))
    mutated = chain[:place] + [copy.deepcopy(chain[source])] + chain[place:]
    _assert_caught(chain, mutated)


@FAST
@given(chain=chains(), data=st.data())
def test_changing_prev_is_caught_at_that_entry(chain: list[dict], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(chain) - 1))
    forged = data.draw(st.text("0123456789abcdef", min_size=64, max_size=64))
    assume(forged != chain[index]["prev"])
    mutated = copy.deepcopy(chain)
    mutated[index]["prev"] = forged
    assert _assert_caught(chain, mutated).first_invalid == index + 1


@FAST
@given(chain=chains(), data=st.data())
def test_editing_any_stored_field_is_caught(chain: list[dict], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(chain) - 1))
    field = data.draw(st.sampled_from(["seq", "hash", "record"]))
    mutated = copy.deepcopy(chain)
    mutated[index][field] = {"seq": chain[index]["seq"] + 7, "hash": "f" * 64, "record": "other"}[
        field
    ]
    assume(mutated[index] != chain[index])
    assert _assert_caught(chain, mutated).first_invalid == index + 1


def test_recomputing_hashes_after_an_edit_is_still_caught_downstream() -> None:
    """An edit with its own hash fixed breaks the next entry's prev link."""
    chain = _chain([_body(i) for i in range(5)])
    mutated = copy.deepcopy(chain)
    mutated[2]["body"]["outcome"] = "deny"
    mutated[2]["hash"] = entry_hash(RECORD, 3, mutated[2]["prev"], mutated[2]["body"])
    verdict = verify_chain(mutated, RECORD)
    assert (verdict.valid, verdict.first_invalid) == (False, 4)
    assert "does not link" in verdict.reason


def test_an_entry_of_another_record_is_refused() -> None:
    chain = _chain([_body(i) for i in range(3)])
    foreign = _chain([_body(i) for i in range(3)], record="other-child")
    verdict = verify_chain(chain[:2] + foreign[2:], RECORD)
    assert (verdict.valid, verdict.first_invalid) == (False, 3)
    assert "other-child" in verdict.reason
    # a whole, internally consistent chain of another record is refused at its first entry
    assert verify_chain(foreign, RECORD).first_invalid == 1


@pytest.mark.parametrize(
    "broken",
    [
        {"seq": 1, "prev": GENESIS, "hash": "0" * 64, "body": {}},  # no record
        "not a dict",
        {"record": RECORD, "seq": "1", "prev": GENESIS, "hash": "0" * 64, "body": {}},
        {"record": RECORD, "seq": True, "prev": GENESIS, "hash": "0" * 64, "body": {}},
        {"record": RECORD, "seq": 1, "prev": GENESIS, "hash": "0" * 64, "body": ["x"]},
        {
            "record": RECORD,
            "seq": 1,
            "prev": GENESIS,
            "hash": "0" * 64,
            "body": {"x": float("nan")},
        },
    ],
)
def test_malformed_entries_are_reported_not_raised(broken: object) -> None:
    verdict = verify_chain([broken], RECORD)  # type: ignore[list-item]
    assert (verdict.valid, verdict.first_invalid, verdict.entries) == (False, 1, 1)


def test_empty_chain_is_valid_unless_versions_exist() -> None:
    assert verify_chain([], RECORD) == ChainVerdict(True, 0, None, "0 entries verified")
    assert verify_chain([], RECORD, [("Patient/x/_history/1", "a" * 64)]).first_invalid == 0


def test_verdict_counts_every_entry_even_after_a_fault() -> None:
    chain = _chain([_body(i) for i in range(10)])
    mutated = copy.deepcopy(chain)
    mutated[1]["body"]["reason"] = "edited"
    verdict = verify_chain(iter(mutated), RECORD)
    assert (verdict.entries, verdict.first_invalid) == (10, 2)


def test_stored_versions_are_settled_by_their_stored_bytes_only() -> None:
    """A sealed version is found by an entry naming its ref, content sha256 and stored digest
    together; other namings of its ref are kept for the verifier, even past a fault."""
    bodies = [_body(0, resources=[{"ref": "Condition/n/_history/1", "sha256": "a" * 64, "stored": "b" * 64}]),
              _body(1, resources=[{"ref": "Condition/n/_history/2", "sha256": "c" * 64, "stored": "d" * 64}]),
              _body(2, resources=[{"ref": "Condition/n/_history/3", "sha256": "e" * 64}]),
              _body(3, resources=[{"ref": "Condition/n/_history/4", "sha256": "f" * 64, "stored": "0" * 64}])]
    chain = _chain(bodies)
    chain[2]["body"]["reason"] = "edited"
    names = ChainNames()
    verdict = verify_chain(chain, RECORD, names=names)
    assert (verdict.valid, verdict.first_invalid, verdict.entries) == (False, 3, 4)
    stored = names.settle([("Condition/n/_history/1", "a" * 64, "b" * 64),  # named exactly
                           ("Condition/n/_history/2", "c" * 64, "9" * 64),  # other bytes named
                           ("Condition/n/_history/3", "e" * 64, "1" * 64),  # named the old way
                           ("Condition/n/_history/4", "f" * 64, "0" * 64),  # named after a fault
                           ("Condition/n/_history/5", "1" * 64, "2" * 64)])  # named by no entry
    assert set(stored.waiting) == {"Condition/n/_history/2", "Condition/n/_history/3", "Condition/n/_history/5"}
    assert stored.named == {"Condition/n/_history/2": {("c" * 64, "d" * 64)},
                            "Condition/n/_history/3": {("e" * 64, None)}}


def test_chain_names_keep_every_pair_a_ref_is_named_with_and_skip_what_matches_nothing() -> None:
    names = ChainNames()
    names.note({"resources": [{"ref": "Condition/n/_history/1", "sha256": "a" * 64, "stored": "b" * 64}]})
    names.note({"resources": [{"ref": "Condition/n/_history/1", "sha256": "a" * 64}]})
    names.note({"resources": [{"ref": "Condition/n/_history/1", "sha256": "a" * 64, "stored": "b" * 64}]})
    names.note({"resources": [{"ref": "Condition/n/_history/2", "sha256": ["a"], "stored": "b" * 64},
                              {"ref": "Condition/n/_history/2", "sha256": "c" * 64, "stored": {"x": 1}},
                              "Condition/n/_history/2", {"ref": 7, "sha256": "c" * 64}]})
    names.note({"resources": "Condition/n/_history/3"})
    assert names.pairs("Condition/n/_history/1") == {("a" * 64, "b" * 64), ("a" * 64, None)}
    assert names.pairs("Condition/n/_history/2") == set()
    assert names.records("Condition/n/_history/1", "a" * 64) and not names.records("Condition/n/_history/1", "b" * 64)
    settled = names.settle([("Condition/n/_history/1", "a" * 64, "b" * 64), ("Condition/n/_history/2", ["x"], "b" * 64)])
    assert list(settled.waiting) == ["Condition/n/_history/2"] and settled.named == {}


# ---------------------------------------------------------------------------------------------
# history versions that the chain must account for
# ---------------------------------------------------------------------------------------------


def _versions(chain: list[dict]) -> list[tuple[str, str]]:
    return [(r["ref"], r["sha256"]) for e in chain for r in e["body"]["resources"] if r["sha256"]]


def test_every_history_version_recorded_verifies() -> None:
    chain = _chain([_body(i) for i in range(4)])
    assert verify_chain(chain, RECORD, _versions(chain)).valid


def test_a_history_version_missing_from_the_chain_is_named() -> None:
    chain = _chain([_body(i) for i in range(4)])
    versions = _versions(chain) + [("Composition/c1/_history/9", "b" * 64)]
    verdict = verify_chain(chain, RECORD, versions)
    assert (verdict.valid, verdict.first_invalid) == (False, 0)
    assert "Composition/c1/_history/9" in verdict.reason


def test_an_altered_history_version_is_caught() -> None:
    """The stored version's content changed: its hash no longer matches what the chain pinned."""
    resource = {"resourceType": "Goal", "id": "g1", "description": {"text": "walk 10m"}}
    body = _body(0, resources=[{"ref": "Goal/g1/_history/1", "sha256": content_hash(resource)}])
    chain = _chain([body])
    assert verify_chain(chain, RECORD, [("Goal/g1/_history/1", content_hash(resource))]).valid
    altered = {**resource, "description": {"text": "walk 100m"}}
    verdict = verify_chain(chain, RECORD, [("Goal/g1/_history/1", content_hash(altered))])
    assert (verdict.valid, verdict.first_invalid) == (False, 0)
    assert "Goal/g1/_history/1" in verdict.reason


def test_cutting_the_tail_is_caught_by_versions_or_the_expected_head() -> None:
    chain = _chain([_body(i) for i in range(5)])
    cut = chain[:-1]
    assert verify_chain(cut, RECORD).valid  # a hash chain alone cannot see a cut tail
    assert verify_chain(cut, RECORD, _versions(chain)).first_invalid == 0
    head = ChainHead.of(chain[-1])
    assert verify_chain(chain, RECORD, expected_head=head).valid
    verdict = verify_chain(cut, RECORD, expected_head=head)
    assert (verdict.valid, verdict.first_invalid) == (False, 0)
    assert "missing from the end" in verdict.reason


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------

KEY = Ed25519PrivateKey.generate()
KEYS = {signing.key_id(KEY.public_key()): KEY.public_key()}


def _with_checkpoint(size: int = 4, key: Ed25519PrivateKey = KEY) -> list[dict]:
    chain = _chain([_body(i) for i in range(size)])
    chain.append(next_checkpoint_entry(key, RECORD, ChainHead.of(chain[-1]), AT))
    entry = next_entry(RECORD, ChainHead.of(chain[-1]), _body(size))
    return [*chain, entry]


def test_checkpoint_signs_the_head_statement() -> None:
    checkpoint = sign_checkpoint(KEY, RECORD, 4, "c" * 64, AT)
    assert checkpoint_body(RECORD, 4, "c" * 64, AT) == {
        k: checkpoint[k] for k in ("record", "seq", "hash", "at")
    }
    assert checkpoint["kid"] == signing.key_id(KEY.public_key())
    statement = canonical_json(checkpoint_body(RECORD, 4, "c" * 64, AT))
    assert signing.verify(KEY.public_key(), statement, checkpoint["signature"])
    assert verify_checkpoint(KEY.public_key(), checkpoint)


@pytest.mark.parametrize(
    "change",
    [
        {"seq": 5},
        {"hash": "d" * 64},
        {"record": "other"},
        {"at": "2026-01-01T00:00:00.000Z"},
        {"signature": "AAAA"},
        {"signature": None},
        {"kid": "0" * 16},
    ],
)
def test_a_tampered_checkpoint_does_not_verify(change: dict) -> None:
    checkpoint = sign_checkpoint(KEY, RECORD, 4, "c" * 64, AT)
    assert not verify_checkpoint(KEY.public_key(), {**checkpoint, **change})


@pytest.mark.parametrize(
    "garbage", [{}, None, "checkpoint", [], {"record": RECORD, "seq": object()}]
)
def test_verify_checkpoint_never_raises(garbage: object) -> None:
    assert verify_checkpoint(KEY.public_key(), garbage) is False  # type: ignore[arg-type]


def test_checkpoint_by_another_key_fails() -> None:
    checkpoint = sign_checkpoint(Ed25519PrivateKey.generate(), RECORD, 4, "c" * 64, AT)
    assert not verify_checkpoint(KEY.public_key(), checkpoint)


def test_chain_with_checkpoints_verifies_with_the_trusted_key() -> None:
    chain = _with_checkpoint()
    assert chain[4]["body"] == checkpoint_entry_body(chain[4]["body"]["checkpoint"])
    assert verify_chain(chain, RECORD, public_keys=KEYS).valid
    pem_keys = {kid: signing.public_key_pem(key) for kid, key in KEYS.items()}
    assert verify_chain(chain, RECORD, public_keys=pem_keys).valid


def test_checkpoint_by_an_untrusted_key_fails() -> None:
    chain = _with_checkpoint(key=Ed25519PrivateKey.generate())
    verdict = verify_chain(chain, RECORD, public_keys=KEYS)
    assert (verdict.valid, verdict.first_invalid) == (False, 5)
    assert "unknown key" in verdict.reason
    assert verify_chain(_with_checkpoint(), RECORD).first_invalid == 5  # no keys given


def test_forged_checkpoint_signature_fails_even_with_hashes_recomputed() -> None:
    """Someone who can write the database but lacks the key re-signs with their own key
    while claiming the server's kid, and recomputes every hash: the signature check fails."""
    chain = _with_checkpoint()
    intruder = Ed25519PrivateKey.generate()
    checkpoint = dict(chain[4]["body"]["checkpoint"])
    forged = sign_checkpoint(intruder, RECORD, checkpoint["seq"], checkpoint["hash"], AT)
    forged["kid"] = checkpoint["kid"]
    rebuilt = _chain(
        [e["body"] for e in chain[:4]] + [checkpoint_entry_body(forged), chain[5]["body"]]
    )
    verdict = verify_chain(rebuilt, RECORD, public_keys=KEYS)
    assert (verdict.valid, verdict.first_invalid) == (False, 5)
    assert "invalid signature" in verdict.reason


def test_rewriting_history_under_a_checkpoint_is_caught() -> None:
    """Edit entry 2 and recompute every hash, keeping the genuine checkpoint: the checkpoint
    no longer signs the entry before it."""
    chain = _with_checkpoint()
    bodies = [copy.deepcopy(e["body"]) for e in chain]
    bodies[1]["outcome"] = "deny"
    verdict = verify_chain(_chain(bodies), RECORD, public_keys=KEYS)
    assert (verdict.valid, verdict.first_invalid) == (False, 5)
    assert "does not sign the entry before it" in verdict.reason


def test_checkpoint_action_without_a_signature_fails() -> None:
    chain = _chain(
        [_body(0), {"at": AT, "action": "checkpoint", "outcome": "permit", "reason": ""}]
    )
    assert verify_chain(chain, RECORD, public_keys=KEYS).first_invalid == 2


def test_checkpoint_of_an_empty_chain_signs_genesis() -> None:
    entry = next_checkpoint_entry(KEY, RECORD, None, AT)
    assert entry["body"]["checkpoint"]["seq"] == 0
    assert entry["body"]["checkpoint"]["hash"] == GENESIS
    assert verify_chain([entry], RECORD, public_keys=KEYS).valid


# ---------------------------------------------------------------------------------------------
# streaming and speed
# ---------------------------------------------------------------------------------------------


def _fast_chain(count: int, body: dict, record: str = RECORD):
    """Yield a valid chain built from the documented hash definition, independently of
    next_entry: sha256 over {"body","prev","record","seq"} written in RFC 8785 key order."""
    body_json = canonical_json(body).decode()
    prev = GENESIS
    for seq in range(1, count + 1):
        text = f'{{"body":{body_json},"prev":"{prev}","record":"{record}","seq":{seq}}}'
        digest = hashlib.sha256(text.encode()).hexdigest()
        yield {"record": record, "seq": seq, "prev": prev, "hash": digest, "body": body}
        prev = digest


def test_verify_streams_in_constant_memory() -> None:
    """Entries come from a generator and are dropped once checked: peak memory stays far below
    what holding the 2,000 entries would need (about 2 MB)."""

    def stream():
        for entry in _fast_chain(2_000, _body()):
            entry["body"] = copy.deepcopy(entry["body"])  # each entry owns ~1 KB
            yield entry

    tracemalloc.start()
    try:
        verdict = verify_chain(stream(), RECORD)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert verdict.valid and verdict.entries == 2_000
    assert peak < 300_000, peak


def test_verifies_a_long_chain_naming_its_versions() -> None:
    """Correctness over a long chain; how fast is bench/verify.py's to measure and print."""
    count = 20_000
    body = _body(resources=[{"ref": "Composition/c1/_history/1", "sha256": "a" * 64}])
    entries = list(_fast_chain(count, body))
    verdict = verify_chain(entries, RECORD, [("Composition/c1/_history/1", "a" * 64)])
    assert verdict == ChainVerdict(True, count, None, f"{count} entries verified")


def test_entries_hashed_elsewhere_verify_exactly_as_stored_ones() -> None:
    """The store's worker processes hand verify_chain HashedEntry items (hash_entry): the same
    verdict, the same first fault, as the entries themselves."""
    body = _body(resources=[{"ref": "Composition/c1/_history/1", "sha256": "a" * 64}])
    entries = list(_fast_chain(50, body))
    pairs = [("Composition/c1/_history/1", "a" * 64)]
    hashed = [hash_entry(RECORD, e) for e in entries]
    assert verify_chain(hashed, RECORD, pairs) == verify_chain(entries, RECORD, pairs)
    assert all(set(h.entry["body"]) <= {"action", "checkpoint", "resources"} for h in hashed)
    edited = [copy.deepcopy(e) for e in entries]  # each its own body
    edited[20]["body"]["reason"] = "edited"
    rehashed = [hash_entry(RECORD, e) for e in edited]
    assert verify_chain(rehashed, RECORD, pairs) == verify_chain(edited, RECORD, pairs)
    assert verify_chain(rehashed, RECORD, pairs).first_invalid == 21
    broken = [copy.deepcopy(e) for e in entries]
    broken[5]["body"]["x"] = float("nan")
    del broken[9]["prev"]
    assert verify_chain([hash_entry(RECORD, e) for e in broken], RECORD) == verify_chain(broken, RECORD)
    assert verify_chain([hash_entry(RECORD, e) for e in broken[:9]], RECORD).reason.startswith("entry 6 is malformed")


@pytest.mark.parametrize(
    "checkpoint",
    [
        {"record": RECORD, "seq": True, "hash": GENESIS, "kid": "k", "signature": "x"},
        {"record": RECORD, "seq": 0, "hash": GENESIS, "kid": ["unhashable"], "signature": "x"},
        {"record": RECORD, "seq": 0, "hash": GENESIS, "signature": "x"},
    ],
)
def test_malformed_checkpoints_are_reported_not_raised(checkpoint: dict) -> None:
    body = {
        "at": AT,
        "action": "checkpoint",
        "outcome": "permit",
        "reason": "",
        "checkpoint": checkpoint,
    }
    verdict = verify_chain(_chain([body]), RECORD, public_keys=KEYS)
    assert (verdict.valid, verdict.first_invalid) == (False, 1)


def test_odd_resource_items_in_an_authentic_body_do_not_break_verification() -> None:
    body = _body(
        resources=[{"ref": ["list"], "sha256": {"x": 1}}, "text", {"ref": "Goal/g/_history/1"}]
    )
    verdict = verify_chain(_chain([body]), RECORD, [("Goal/g/_history/1", "e" * 64)])
    assert (verdict.valid, verdict.first_invalid) == (False, 0)
