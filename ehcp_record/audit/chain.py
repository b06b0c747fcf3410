"""The per-record audit trail: an append-only SHA-256 hash chain with signed checkpoints.

Every record (one child's compartment; its id is the Patient id) has exactly one chain. Entry
n holds the hash of entry n-1, so editing, deleting, reordering or inserting any stored entry
breaks every link after it (DESIGN.md, "Audit"). The repository stores the dicts built here;
this module does no I/O.

Stored entry::

    {"record": str, "seq": 1, 2, 3..., "prev": hex (GENESIS for seq 1), "hash": hex,
     "body": {"at", "action", "outcome", "reason", "agent", "source", "resources", "consent"...}}

    hash = sha256(canonical_json({"record", "seq", "prev", "body"}))

`body.resources` names resource versions: {"ref": "Type/id/_history/n", "sha256": content hash},
and, in the entry of the write that stored a sealed version, "stored": the SHA-256 of its sealed
bytes as stored (docs/encryption.md, "Verifying sealed versions"; `ChainNames`).

A hash chain alone does not stop someone who can write the database from recomputing every
hash after an edit. Checkpoints do: a checkpoint is an ordinary entry (action "checkpoint")
whose body carries an Ed25519 signature by the server's key over (record, seq, hash, at) of the
entry before it. Rewriting history before a checkpoint then needs the private key. Two limits
remain and are the caller's to close: entries after the newest checkpoint can be rewritten or
cut off (pass `expected_head` from an independently held copy of the head, or checkpoint
often), and a verifier must be given the trusted public keys (an unknown key fails).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ehcp_record.audit import signing

__all__ = [
    "CHECKPOINT_ACTION",
    "GENESIS",
    "ChainHead",
    "ChainVerdict",
    "HashedEntry",
    "StoredVersions",
    "canonical_json",
    "checkpoint_body",
    "checkpoint_entry_body",
    "content_hash",
    "entry_hash",
    "hash_entry",
    "iso_instant",
    "next_checkpoint_entry",
    "next_entry",
    "sign_checkpoint",
    "unrecorded_verdict",
    "verify_chain",
    "verify_checkpoint",
]

#: `prev` of the first entry of every chain.
GENESIS = "0" * 64
#: The body action that marks a checkpoint entry.
CHECKPOINT_ACTION = "checkpoint"

# ---------------------------------------------------------------------------------------------
# Canonical JSON (RFC 8785, JSON Canonicalization Scheme)
# ---------------------------------------------------------------------------------------------

# The fast path writes with orjson (sorted keys, compact): for what `_scan` lets through to it
# (str, int within 64 bits, bool, None, dicts with ASCII keys, lists and tuples) its bytes are
# those of the stdlib encoder below, escaping included (tests/unit/test_audit_chain.py checks
# every code point), at a tenth of the cost; the stdlib encoder is the fallback for what orjson
# refuses. Built once: json.dumps with options builds a new encoder per call. Circular structures are
# caught by _scan (RecursionError -> ValueError) before they reach it.
_FAST_ENCODER = json.JSONEncoder(
    sort_keys=True,
    separators=(",", ":"),
    ensure_ascii=False,
    allow_nan=False,
    check_circular=False,
)


def canonical_json(obj: Any) -> bytes:
    """The one byte string that every party hashes or signs for `obj`.

    Equal to RFC 8785 (JCS) output for every value it accepts (integers beyond ±2**53 aside,
    see below), so anyone can recompute our hashes with an off-the-shelf JCS library:

    - objects: members sorted by key, no whitespace, separators "," and ":";
    - strings: UTF-8, only '"', '\\\\' and U+0000..U+001F escaped (\\b \\t \\n \\f \\r, the rest
      as lowercase \\u00xx), everything else literal (RFC 8785 §3.2.2.2);
    - null, true, false; integers in plain decimal. RFC 8785 reads every number as an IEEE-754
      double, so for integers beyond ±2**53 (outside I-JSON's range, RFC 7493 §2.2) a JCS
      library would round; we write the exact value instead, as changing a number silently is
      worse than differing from JCS on numbers neither audit bodies nor FHIR R4 (32-bit
      integers) carry;
    - floats: audit bodies never hold one (times are ISO strings, counts are ints), but FHIR
      resources passed to `content_hash` may (Quantity.value, Money.value), so floats are
      written as RFC 8785 §3.2.2.3 requires, i.e. ECMAScript Number.prototype.toString:
      shortest round-trip digits, 1.0 -> "1", -0.0 -> "0", 1e21 -> "1e+21", 1e-7 -> "1e-7".
      NaN and infinities are refused (ValueError), as JSON has no spelling for them;
    - lists and tuples (and dict/list subclasses such as bson's SON) as arrays and objects.
      Keys must be str; any other type, str/int/float subclasses (enums) included, raises
      TypeError.

    Keys are sorted by UTF-16 code units, as RFC 8785 §3.2.3 requires; Python's own sort is by
    code point, which differs only for keys holding characters above U+FFFF next to ones in
    U+E000..U+FFFF. The fast path (orjson, or the C json encoder) is taken when every key is ASCII and no
    float occurs - every audit body - and a small pure-Python writer handles the rest.
    Strings with lone surrogates are refused (ValueError): they are not Unicode text.
    """
    try:
        needs_writer = _scan(obj)
        if needs_writer:
            parts: list[str] = []
            _write(obj, parts)
            return "".join(parts).encode("utf-8")
        try:
            return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
        except TypeError:  # an int beyond 64 bits, or nesting orjson refuses: the stdlib says why
            return _FAST_ENCODER.encode(obj).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("canonical JSON refuses strings holding lone surrogates") from None
    except RecursionError:
        raise ValueError("value is nested too deeply to canonicalise") from None


_LEAVES = (str, int, bool, type(None))  # JSON leaves the C encoder writes as RFC 8785 does


def _scan(obj: Any) -> bool:
    """Check that `obj` is canonicalisable; True when the pure-Python writer is needed.

    Runs on every entry a verifier reads, so leaves are tested inline rather than recursed into.
    """
    kind = type(obj)
    if kind is dict:
        return _scan_dict(obj)
    if kind is list or kind is tuple:
        writer = False
        for item in obj:
            if type(item) not in _LEAVES and _scan(item):
                writer = True
        return writer
    if kind in _LEAVES:
        return False
    if kind is float:
        if not math.isfinite(obj):
            raise ValueError(f"{obj!r} has no JSON representation")
        return True
    return _scan_subclass(obj)


def _scan_dict(obj: Mapping[Any, Any]) -> bool:
    writer = False
    for key, value in obj.items():
        if type(key) is not str:
            raise TypeError(f"object keys must be strings, not {type(key).__name__} ({key!r})")
        if not key.isascii():
            writer = True
        if type(value) not in _LEAVES and _scan(value):
            writer = True
    return writer


def _scan_subclass(obj: Any) -> bool:
    """Mapping and sequence subclasses (OrderedDict, bson's SON) are JSON; str, int and float
    subclasses (enums) are refused, as their str() and their JSON spelling can disagree."""
    if isinstance(obj, dict):
        return _scan_dict(obj)
    if isinstance(obj, (list, tuple)) and not isinstance(obj, (str, bytes)):
        writer = False
        for item in obj:
            writer = _scan(item) or writer  # scan every item: each may raise
        return writer
    raise TypeError(f"{type(obj).__name__} is not a JSON value")


def _write(obj: Any, out: list[str]) -> None:
    """RFC 8785 writer for values `_scan` has accepted."""
    if obj is None:
        out.append("null")
    elif obj is True or obj is False:
        out.append("true" if obj else "false")
    elif isinstance(obj, str):
        out.append(_encode_string(obj))
    elif isinstance(obj, int):
        out.append(str(obj))
    elif isinstance(obj, float):
        out.append(_es_number(obj))
    elif isinstance(obj, dict):
        out.append("{")
        for index, key in enumerate(sorted(obj, key=_utf16_key)):
            if index:
                out.append(",")
            out.append(_encode_string(key))
            out.append(":")
            _write(obj[key], out)
        out.append("}")
    else:  # list or tuple
        out.append("[")
        for index, item in enumerate(obj):
            if index:
                out.append(",")
            _write(item, out)
        out.append("]")


def _encode_string(text: str) -> str:
    # The C encoder's escaping equals RFC 8785 §3.2.2.2 (lowercase \u00xx for controls).
    return json.dumps(text, ensure_ascii=False)


def _utf16_key(key: str) -> bytes:
    # Big-endian UTF-16 bytes compare exactly as the sequence of UTF-16 code units does.
    return key.encode("utf-16-be", "surrogatepass")


def _es_number(value: float) -> str:
    """ECMAScript Number::toString for a finite double (ECMA-262 §6.1.6.1.20, RFC 8785 §3.2.2.3).

    Python's repr already yields the shortest digits that round-trip; only the layout differs
    (where the decimal point goes and when exponent notation starts).
    """
    if value == 0:
        return "0"  # covers -0.0
    sign = "-" if value < 0 else ""
    digits, point = _shortest_digits(abs(value))
    count = len(digits)
    if count <= point <= 21:
        body = digits + "0" * (point - count)
    elif 0 < point <= 21:
        body = f"{digits[:point]}.{digits[point:]}"
    elif -6 < point <= 0:
        body = "0." + "0" * -point + digits
    else:
        exponent = point - 1
        mantissa = digits if count == 1 else f"{digits[0]}.{digits[1:]}"
        body = f"{mantissa}e{'+' if exponent >= 0 else '-'}{abs(exponent)}"
    return sign + body


def _shortest_digits(value: float) -> tuple[str, int]:
    """(digits, point) with value == 0.digits * 10**point and no leading/trailing zeros."""
    text = repr(value)
    mantissa, _, exponent = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + (int(exponent) if exponent else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    return stripped.rstrip("0"), point


def content_hash(resource: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a stored resource version's canonical JSON: what an entry pins."""
    return hashlib.sha256(canonical_json(resource)).hexdigest()


# ---------------------------------------------------------------------------------------------
# Entries
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The newest entry of a chain: what the next entry links to."""

    seq: int
    hash: str

    @classmethod
    def of(cls, entry: Mapping[str, Any]) -> ChainHead:
        return cls(entry["seq"], entry["hash"])


def entry_hash(record: str, seq: int, prev: str, body: Mapping[str, Any]) -> str:
    """SHA-256 (hex) binding an entry's body to its record, its position and its predecessor.

    `record` and `seq` are inside the hash so an entry cannot be moved to another record or
    another position without detection.
    """
    return hashlib.sha256(_entry_bytes(record, seq, prev, body)).hexdigest()


def _entry_bytes(record: str, seq: int, prev: str, body: Mapping[str, Any]) -> bytes:
    return canonical_json({"record": record, "seq": seq, "prev": prev, "body": body})


def next_entry(record: str, head: ChainHead | None, body: Mapping[str, Any]) -> dict:
    """Build the entry that follows `head` (None: the record's first entry).

    The stored body is a fresh copy re-read from its canonical JSON, so the caller mutating its
    dict later cannot make the stored entry disagree with its hash, and what is stored re-hashes
    to exactly the same bytes (tuples become lists, 1.0 becomes 1).
    """
    if not isinstance(record, str) or not record:
        raise ValueError("an audit entry needs the record id")
    if not isinstance(body, Mapping):
        raise TypeError("an audit entry body must be a JSON object")
    seq = 1 if head is None else head.seq + 1
    prev = GENESIS if head is None else head.hash
    canonical = _entry_bytes(record, seq, prev, body)
    return {
        "record": record,
        "seq": seq,
        "prev": prev,
        "hash": hashlib.sha256(canonical).hexdigest(),
        "body": json.loads(canonical)["body"],
    }


def iso_instant(moment: datetime | None = None) -> str:
    """An aware datetime (default: now) as the UTC instant bodies carry, e.g.
    "2025-03-01T09:30:00.123Z" (FHIR `instant`, millisecond precision)."""
    moment = datetime.now(UTC) if moment is None else moment
    if moment.tzinfo is None:
        raise ValueError("audit times must be timezone-aware")
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def checkpoint_body(record: str, seq: int, hash: str, at: str) -> dict:
    """The statement a checkpoint signs: "record's chain had head `hash` at `seq` at time `at`"."""
    return {"record": record, "seq": seq, "hash": hash, "at": at}


def sign_checkpoint(key: Ed25519PrivateKey, record: str, seq: int, head_hash: str, at: str) -> dict:
    """A signed checkpoint: the statement plus `kid` (which key) and `signature` (base64url of
    Ed25519 over the statement's canonical JSON)."""
    statement = checkpoint_body(record, seq, head_hash, at)
    return {
        **statement,
        "kid": signing.key_id(key.public_key()),
        "signature": signing.sign(key, canonical_json(statement)),
    }


def verify_checkpoint(public_key: Ed25519PublicKey, checkpoint: Mapping[str, Any]) -> bool:
    """True when `checkpoint` was signed by `public_key`; never raises on malformed input.

    A `kid` naming a different key is refused outright, so a checkpoint cannot pass under a key
    it does not claim.
    """
    try:
        statement = checkpoint_body(
            checkpoint["record"], checkpoint["seq"], checkpoint["hash"], checkpoint["at"]
        )
        if "kid" in checkpoint and checkpoint["kid"] != signing.key_id(public_key):
            return False
        payload = canonical_json(statement)
    except (KeyError, TypeError, ValueError):
        return False
    return signing.verify(public_key, payload, checkpoint.get("signature"))


def checkpoint_entry_body(checkpoint: Mapping[str, Any]) -> dict:
    """The audit body of the entry that stores a signed checkpoint."""
    return {
        "at": checkpoint["at"],
        "action": CHECKPOINT_ACTION,
        "outcome": "permit",
        "reason": f"signed checkpoint of entry {checkpoint['seq']}",
        "checkpoint": dict(checkpoint),
    }


def next_checkpoint_entry(
    key: Ed25519PrivateKey, record: str, head: ChainHead | None, at: str
) -> dict:
    """Sign the current head and return the entry that records the signature after it."""
    seq, head_hash = (0, GENESIS) if head is None else (head.seq, head.hash)
    checkpoint = sign_checkpoint(key, record, seq, head_hash, at)
    return next_entry(record, head, checkpoint_entry_body(checkpoint))


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HashedEntry:
    """An entry whose hash was already recomputed from its stored content by `hash_entry`
    (in a worker process, for a long chain), so `verify_chain` need not canonicalise it again.

    `entry` may be slimmed to what linking needs (record, seq, prev, hash and the body's
    action, checkpoint and resources). `computed` is `entry_hash` over the entry as stored, or
    None with `error` saying why it could not be hashed. The verifier builds these itself;
    nothing read from the database can pass for one.
    """

    entry: Mapping[str, Any]
    computed: str | None
    error: str | None = None


_LINK_FIELDS = ("action", "checkpoint", "resources")


def hash_entry(record: str, entry: Any) -> HashedEntry:
    """Recompute one stored entry's hash as a member of `record`'s chain, and keep only what
    `verify_chain` reads after that (the full body is hashed here, then dropped)."""
    try:
        seq, prev, body = entry["seq"], entry["prev"], entry["body"]
    except (KeyError, TypeError, IndexError):
        return HashedEntry(entry, None, "a required field is missing")
    if not (type(entry) is dict or isinstance(entry, Mapping)) or not isinstance(body, dict):  # a dict: no ABC check
        return HashedEntry(entry, None, "its body is not an object")
    stored = entry.get("hash")
    computed, error = _quick_match(record, seq, prev, body, stored), None
    if computed is None:
        try:
            computed = entry_hash(record, seq, prev, body)
        except (TypeError, ValueError) as exc:
            error = str(exc)
    if "record" in entry and "hash" in entry:  # every stored entry: seq and prev were read above
        slim = {"record": entry["record"], "seq": seq, "prev": prev, "hash": stored}
    else:
        slim = {key: entry[key] for key in ("record", "seq", "prev", "hash") if key in entry}
    slim["body"] = {key: body[key] for key in _LINK_FIELDS if key in body}
    return HashedEntry(slim, computed, error)


class StoredVersions:
    """Sealed versions the chain does not name by their exact stored bytes, as settled by
    `ChainNames.settle` once the walk is done.

    `waiting` maps each such version's ref ("Type/id/_history/n") to (sha256, stored): its
    recorded content sha256 and the SHA-256 of its sealed bytes as read
    (`sealed_bytes.stored_digest`). `named` keeps what else the chain names for a waiting ref
    (sha256, stored or None), so the verifier can tell an entry written before entries named
    stored bytes from bytes that changed.
    """

    __slots__ = ("named", "waiting")

    def __init__(self) -> None:
        self.waiting: dict[str, tuple[Any, Any]] = {}
        self.named: dict[str, set[tuple[str, str | None]]] = {}


class ChainNames:
    """What the chain's entries name, collected as `verify_chain` walks them: for each version
    ref, every (sha256, stored) pair an entry's `resources` gives it (`stored`: the SHA-256 of
    the sealed bytes the write stored, None in an entry that does not name them).

    Collected rather than struck off a list of the stored versions so that the walk need not
    wait for those versions: the verifier reads them beside the chain (a long record's in a
    process of its own) and settles them afterwards (`settle`, `records`). Items that are not
    a ref with a string sha256 (and a string or no `stored`) can match no stored version and
    are left out. Memory: one small tuple per version the chain names.
    """

    __slots__ = ("_names",)

    def __init__(self) -> None:
        self._names: dict[str, Any] = {}  # ref -> one (sha256, stored) pair, or a set of them

    def note(self, body: Mapping[str, Any]) -> None:
        """Collect every version this entry's body names."""
        resources = body.get("resources")
        if type(resources) is not list:
            return
        names = self._names
        for item in resources:
            if type(item) is not dict:
                continue
            ref, digest, stored = item.get("ref"), item.get("sha256"), item.get("stored")
            if type(ref) is not str or type(digest) is not str or not (stored is None or type(stored) is str):
                continue
            got, had = (digest, stored), names.get(ref)
            if had is None:
                names[ref] = got
            elif type(had) is set:
                had.add(got)
            elif had != got:
                names[ref] = {had, got}

    def pairs(self, ref: str) -> set[tuple[str, str | None]]:
        had = self._names.get(ref)
        return set() if had is None else had if type(had) is set else {had}

    def records(self, ref: str, digest: str) -> bool:
        """Some entry names version `ref` with content sha256 `digest`."""
        return any(sha == digest for sha, _ in self.pairs(ref))

    def settle(self, versions: Iterable[tuple[str, Any, Any]]) -> StoredVersions:
        """The sealed `versions` (ref, recorded sha256, stored digest) that no entry names with
        exactly that pair, each with the other pairs the chain names for its ref."""
        settled = StoredVersions()
        names = self._names
        for ref, digest, stored in versions:
            want, had = (digest, stored), names.get(ref)
            if had == want or (type(had) is set and _holds(had, want)):
                continue
            settled.waiting[ref] = want
            if had is not None:
                settled.named[ref] = self.pairs(ref)
        return settled


def _holds(pairs: set, pair: tuple) -> bool:
    try:
        return pair in pairs
    except TypeError:  # an unhashable value read from the database is named by no entry
        return False


#: orjson as a plain JSON writer: sorted keys, and anything but exact str, int, bool, None,
#: dict and list (subclasses, dates, dataclasses) refused rather than written.
_QUICK = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATETIME \
    | orjson.OPT_PASSTHROUGH_DATACLASS


def _quick_match(record: str, seq: Any, prev: Any, body: dict, stored: Any) -> str | None:
    """`stored` when the entry's JSON, written by orjson without `_scan`'s checks, hashes to
    it; else None, and the caller computes `entry_hash` in full.

    Exact, not an approximation: equal hashes mean (SHA-256 being collision resistant) the bytes
    orjson wrote are the canonical bytes the writer hashed; orjson is a correct JSON writer, so
    the entry is, as a JSON value, the one the writer hashed, and `entry_hash` of it gives those
    same bytes. Only a mismatch (an altered entry, a float, a non-ASCII key, a type orjson
    refuses) costs the full computation, which then decides. Saves `_scan`, a third of the
    time of re-hashing a long chain."""
    if type(stored) is not str:
        return None
    try:
        text = orjson.dumps({"record": record, "seq": seq, "prev": prev, "body": body}, option=_QUICK)
    except TypeError:
        return None
    return stored if hashlib.sha256(text).hexdigest() == stored else None


@dataclass(frozen=True, slots=True)
class ChainVerdict:
    """What `verify_chain` found.

    `entries` counts every entry read (the whole stream, even past a fault). `first_invalid` is
    None when valid; otherwise the 1-based position in the stream of the first entry that
    fails. In an intact chain position n holds seq n, so this is the seq the faulty place should
    have: an edited entry's own seq, the place where a deleted entry is missing, where a
    reordered or inserted entry sits. 0 means the chain itself links up but a stored resource
    version is not recorded in it (or, with `expected_head`, the chain was cut short).
    """

    valid: bool
    entries: int
    first_invalid: int | None
    reason: str


def verify_chain(
    entries: Iterable[Mapping[str, Any]],
    record: str,
    version_hashes: Iterable[tuple[str, str]] = (),
    public_keys: Mapping[str, Ed25519PublicKey | str] | None = None,
    *,
    expected_head: ChainHead | None = None,
    known_heads: Iterable[tuple[ChainHead, str]] = (),
    names: ChainNames | None = None,
) -> ChainVerdict:
    """Check one record's chain, read once in seq order, in O(1) memory for the entries.

    Detects, at the first entry where it shows: an edited entry (hash mismatch), a deleted
    entry (seq gap, or prev not matching), reordering (seq not +1), an inserted or duplicated
    entry (seq repeats, or prev not matching), an entry of another record, and a checkpoint
    whose signature fails, whose key is not in `public_keys` (key_id -> public key or PEM), or
    which does not sign the entry before it.

    `version_hashes` are (versioned ref, sha256) pairs of the resource versions held in the
    database, e.g. ("Composition/abc/_history/3", content_hash(v3)). Each must appear in some
    entry's `resources`; one that does not (a version written or altered without an audit
    entry) fails with first_invalid 0 and the ref in the reason. Memory is O(number of pairs).
    `expected_head`, when given, must be the last entry: a chain truncated at its tail is
    otherwise indistinguishable from a shorter one. `known_heads` are (head, who holds it)
    pairs kept outside the database (a signed checkpoint the family kept, the anchor log, the
    high-water mark): the chain must reach each and hold exactly that hash at that seq, so
    entries cut from the tail after one of them are found.

    `names`, when given, collects what every entry read names (`ChainNames.note`), even past a
    fault, so the caller can settle its stored versions afterwards (`ChainNames.settle`) and
    say which one is at fault whatever else is: the walk does not wait for them.

    Entries may be `HashedEntry`s, their hash already recomputed (`hash_entry`, run in worker
    processes by the store for a long chain); the checks are the same.

    Speed: about 1.5 s per 100,000 typical entries on one core, ~14 µs each, most of it the
    C json encoder writing the canonical form; `python bench/verify.py` measures and prints it.
    """
    versions = list(version_hashes)
    if versions and names is None:
        names = ChainNames()
    keys = _trusted_keys(public_keys or {})
    heads = [(head, holder) for head, holder in known_heads if head is not None]
    wanted = {head.seq for head, _ in heads}
    seen: dict[int, str] = {}
    stream = iter(entries)
    prev, position = GENESIS, 0
    for item in stream:
        position += 1
        if type(item) is HashedEntry:
            entry, fault = item.entry, _check_entry(item.entry, record, position, prev, keys, item)
        else:
            entry, fault = item, _check_entry(item, record, position, prev, keys)
        if fault is not None:
            if names is not None:
                _note(names, entry)
            return ChainVerdict(False, position + _count(stream, names), position, fault)
        prev = entry["hash"]
        if position in wanted:
            seen[position] = prev
        if names is not None:
            names.note(entry["body"])
    for head, holder in sorted(heads, key=lambda pair: pair[0].seq):
        if head.seq > position:
            reason = (f"entries {position + 1} to {head.seq} are missing from the end of the chain "
                      f"({holder} records entry {head.seq}): deleted")
            return ChainVerdict(False, position, position + 1, reason)
        if head.seq > 0 and seen.get(head.seq) != head.hash:
            reason = f"entry {head.seq} is not the entry {holder} records (sha256 {head.hash})"
            return ChainVerdict(False, position, head.seq, reason)
    pending = {(ref, digest) for ref, digest in versions
               if not names.records(ref, digest)} if versions and names is not None else set()
    return _final_verdict(position, prev, pending, expected_head)


def _final_verdict(
    count: int, last_hash: str, pending: set[tuple[str, str]], expected_head: ChainHead | None
) -> ChainVerdict:
    if expected_head is not None and (expected_head.seq, expected_head.hash) != (count, last_hash):
        reason = (
            f"the chain ends at entry {count} but its head is recorded as entry "
            f"{expected_head.seq}: entries are missing from the end"
        )
        return ChainVerdict(False, count, 0, reason)
    if pending:
        return unrecorded_verdict(count, pending)
    return ChainVerdict(True, count, None, f"{count} entries verified")


def unrecorded_verdict(count: int, pending: Iterable[tuple[str, str]]) -> ChainVerdict:
    """The verdict on a chain of `count` entries that links up but records none of `pending`
    (ref, sha256) versions held in the database."""
    pending = set(pending)
    ref, digest = min(pending, key=lambda pair: (str(pair[0]), str(pair[1])))
    more = f" (and {len(pending) - 1} more)" if len(pending) > 1 else ""
    reason = f"history version {ref} (sha256 {digest}) is not recorded in the audit chain{more}"
    return ChainVerdict(False, count, 0, reason)


def _trusted_keys(public_keys: Mapping[str, Ed25519PublicKey | str]) -> dict[str, Ed25519PublicKey]:
    keys = {}
    for kid, key in public_keys.items():
        keys[kid] = signing.public_key_from_pem(key) if isinstance(key, (str, bytes)) else key
    return keys


def _count(stream: Iterator[Any], names: ChainNames | None = None) -> int:
    if names is None:
        return sum(1 for _ in stream)
    count = 0
    for item in stream:
        count += 1
        _note(names, item.entry if type(item) is HashedEntry else item)
    return count


def _note(names: ChainNames, entry: Any) -> None:
    body = entry.get("body") if isinstance(entry, Mapping) else None
    if isinstance(body, Mapping):
        names.note(body)


def _check_entry(
    entry: Any, record: str, position: int, prev: str, keys: Mapping[str, Ed25519PublicKey],
    hashed: HashedEntry | None = None,
) -> str | None:
    """The reason entry number `position` is not a valid successor of `prev`, or None
    (`hashed`: its hash recomputed already)."""
    try:
        entry_record, seq = entry["record"], entry["seq"]
        entry_prev, stored_hash, body = entry["prev"], entry["hash"], entry["body"]
    except (KeyError, TypeError, IndexError):
        return f"entry {position} is malformed (a required field is missing)"
    if entry_record != record:
        return f"entry {position} belongs to record {entry_record!r}, not {record!r}"
    if type(seq) is not int or seq != position:
        return _seq_fault(position, seq)
    if entry_prev != prev:
        return (
            f"entry {position} does not link to entry {position - 1} "
            "(an entry was deleted, inserted or edited before it)"
        )
    if not isinstance(body, dict):
        return f"entry {position} is malformed (its body is not an object)"
    if hashed is not None:
        if hashed.computed is None:
            return f"entry {position} is malformed ({hashed.error})"
        computed = hashed.computed
    else:
        try:
            computed = entry_hash(record, seq, entry_prev, body)
        except (TypeError, ValueError) as exc:
            return f"entry {position} is malformed ({exc})"
    if computed != stored_hash:
        return f"entry {position} was altered (its hash does not match its content)"
    if "checkpoint" in body or body.get("action") == CHECKPOINT_ACTION:
        return _checkpoint_fault(body.get("checkpoint"), record, position, prev, keys)
    return None


def _seq_fault(position: int, seq: Any) -> str:
    if type(seq) is not int:
        return f"entry {position} is malformed (seq {seq!r} is not an integer)"
    if seq > position:
        return f"entry {position} is missing (the next stored entry is {seq}): deleted"
    return f"entry {seq} appears again at position {position}: entries reordered or inserted"


def _checkpoint_fault(
    checkpoint: Any, record: str, position: int, prev: str, keys: Mapping[str, Ed25519PublicKey]
) -> str | None:
    if not isinstance(checkpoint, dict):
        return f"checkpoint entry {position} is malformed"
    seq, kid = checkpoint.get("seq"), checkpoint.get("kid")
    if type(seq) is not int or not isinstance(kid, str):
        return f"checkpoint entry {position} is malformed"
    if (checkpoint.get("record"), seq, checkpoint.get("hash")) != (record, position - 1, prev):
        return f"checkpoint entry {position} does not sign the entry before it"
    key = keys.get(kid)
    if key is None:
        return f"checkpoint entry {position} is signed by unknown key {kid!r}"
    if not verify_checkpoint(key, checkpoint):
        return f"checkpoint entry {position} has an invalid signature"
    return None
