"""The anchor's high-water mark (audit/anchor.py): raised only, and keeping when the chain was
last signed, so an append can link to it without asking the database for the chain's tip."""

from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import given
from hypothesis import strategies as st

from ehcp_record.audit.anchor import FileAnchorLog, NoAnchor
from ehcp_record.audit.chain import ChainHead

SIGNED = datetime(2026, 12, 2, 9, 30, 15, 123000, tzinfo=timezone.utc)


def test_the_mark_keeps_the_signing_time(tmp_path):
    anchor = FileAnchorLog(tmp_path)
    anchor.raise_high_water("child-1", 7, "a" * 64, SIGNED)
    tip = anchor.marked_tip("child-1")
    assert tip is not None and tip.head == ChainHead(7, "a" * 64) and tip.signed_at == SIGNED
    assert anchor.high_water("child-1") == ChainHead(7, "a" * 64)


def test_a_mark_from_before_the_signing_time_gives_no_tip(tmp_path):
    """Such a chain's tip is asked of the database once; the next append rewrites the mark."""
    anchor = FileAnchorLog(tmp_path)
    (tmp_path / "child-1.seq").write_text(f"7 {'a' * 64}\n")
    assert anchor.high_water("child-1") == ChainHead(7, "a" * 64)
    assert anchor.marked_tip("child-1") is None
    anchor.raise_high_water("child-1", 8, "b" * 64, SIGNED)
    assert anchor.marked_tip("child-1").head == ChainHead(8, "b" * 64)


def test_a_damaged_mark_is_no_mark(tmp_path):
    anchor = FileAnchorLog(tmp_path)
    (tmp_path / "child-1.seq").write_text(f"7 {'a' * 64} not-a-time\n")
    assert anchor.marked_tip("child-1") is None and anchor.high_water("child-1") is None
    assert FileAnchorLog(tmp_path).marked_tip("never-seen") is None
    assert NoAnchor().marked_tip("child-1") is None


@given(st.lists(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=30))
def test_the_mark_is_only_ever_raised(tmp_path_factory, seqs):
    anchor = FileAnchorLog(tmp_path_factory.mktemp("anchor"))
    for seq in seqs:
        anchor.raise_high_water("child-1", seq, f"{seq:064x}", SIGNED)
    top = max(seqs)
    assert anchor.marked_tip("child-1").head == ChainHead(top, f"{top:064x}")
