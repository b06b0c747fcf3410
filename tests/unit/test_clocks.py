"""Statutory clocks (ehcp_record.workflow.clocks): worked examples and properties.

Each expected date below was counted by hand against the England bank holiday calendar;
the comments show the count so a reader can check it without running anything.
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given, strategies as st

from ehcp_record.workflow.clocks import (
    TransferClocks,
    add_months,
    add_working_days,
    amendment_deadline,
    annual_review_due,
    is_working_day,
    response_window_end,
    review_decision_deadline,
    transfer_clocks,
    transfer_due,
    transfer_notice_due,
    transfer_review_due,
    working_days_between,
)

D = date
dates = st.dates(min_value=D(2015, 1, 1), max_value=D(2035, 12, 31))


# --------------------------------------------------------------------------- working days


@pytest.mark.parametrize("day, working", [
    (D(2026, 12, 24), True),    # Christmas Eve is a working day
    (D(2026, 12, 25), False),   # Christmas Day (Friday)
    (D(2026, 12, 26), False),   # Boxing Day falls on a Saturday...
    (D(2026, 12, 28), False),   # ...so Monday 28th is the substitute bank holiday
    (D(2026, 12, 29), True),
    (D(2027, 1, 1), False),     # New Year's Day (Friday)
    (D(2027, 3, 26), False),    # Good Friday 2027
    (D(2027, 3, 29), False),    # Easter Monday 2027
    (D(2027, 3, 30), True),
    (D(2027, 5, 3), False),     # early May bank holiday
    (D(2022, 9, 19), False),    # one-off: state funeral of Queen Elizabeth II
    (D(2023, 5, 8), False),     # one-off: coronation of King Charles III
    (D(2021, 12, 27), False),   # substitute for Christmas Day on a Saturday
    (D(2021, 12, 28), False),   # substitute for Boxing Day on a Sunday
    (D(2027, 3, 20), False),    # Saturday
    (D(2027, 3, 21), False),    # Sunday
    (D(2027, 3, 22), True),     # Monday
    (D(2026, 3, 17), True),     # St Patrick's Day is a holiday in Northern Ireland only
    (D(2026, 11, 30), True),    # St Andrew's Day is a holiday in Scotland only
])
def test_is_working_day(day, working):
    assert is_working_day(day) is working


@pytest.mark.parametrize("start, n, expected", [
    (D(2026, 12, 24), 1, D(2026, 12, 29)),   # over Christmas Day, weekend and substitute Monday
    (D(2026, 12, 31), 1, D(2027, 1, 4)),     # over New Year's Day and the weekend
    (D(2027, 3, 25), 1, D(2027, 3, 30)),     # over Good Friday, weekend, Easter Monday
    (D(2027, 3, 22), 5, D(2027, 3, 31)),     # 23 24 25 30 31
    (D(2026, 12, 29), -1, D(2026, 12, 24)),  # backwards over the same holidays
    (D(2027, 3, 20), 0, D(2027, 3, 20)),     # zero days: the day itself, even a Saturday
    (D(2027, 3, 20), 1, D(2027, 3, 22)),     # from a Saturday: Monday
])
def test_add_working_days(start, n, expected):
    assert add_working_days(start, n) == expected


@pytest.mark.parametrize("a, b, expected", [
    (D(2026, 12, 21), D(2026, 12, 30), 5),   # 22 23 24 29 30
    (D(2026, 12, 30), D(2026, 12, 21), -5),
    (D(2027, 3, 20), D(2027, 3, 20), 0),
    (D(2027, 3, 26), D(2027, 3, 29), 0),     # Good Friday to Easter Monday: none
])
def test_working_days_between(a, b, expected):
    assert working_days_between(a, b) == expected


@given(dates, st.integers(min_value=1, max_value=60))
def test_adding_working_days_lands_on_a_working_day_and_counts_back(start, n):
    end = add_working_days(start, n)
    assert is_working_day(end)
    assert working_days_between(start, end) == n


@given(dates, st.integers(min_value=1, max_value=60))
def test_subtracting_working_days_is_the_mirror_image(start, n):
    earlier = add_working_days(start, -n)
    assert is_working_day(earlier)
    assert working_days_between(start, earlier) == -n


# --------------------------------------------------------------------------- months


@pytest.mark.parametrize("start, n, expected", [
    (D(2027, 1, 31), 1, D(2027, 2, 28)),     # clamped to month end
    (D(2028, 1, 31), 1, D(2028, 2, 29)),     # leap year
    (D(2028, 2, 29), 12, D(2029, 2, 28)),
    (D(2026, 11, 15), 3, D(2027, 2, 15)),    # across the year end
    (D(2027, 3, 31), -1, D(2027, 2, 28)),
    (D(2026, 5, 10), 0, D(2026, 5, 10)),
    (D(2026, 8, 31), 6, D(2027, 2, 28)),
])
def test_add_months(start, n, expected):
    assert add_months(start, n) == expected


# --------------------------------------------------------------------------- plan clocks


@pytest.mark.parametrize("made, due", [
    (D(2025, 3, 15), D(2026, 3, 14)),   # 12 months starting with 15 March end on 14 March
    (D(2019, 1, 1), D(2019, 12, 31)),
    (D(2023, 3, 1), D(2024, 2, 29)),    # ends on the leap day
    (D(2024, 2, 29), D(2025, 2, 28)),   # no 29 February in 2025: the period runs to month end
    (D(2023, 2, 28), D(2024, 2, 27)),
])
def test_annual_review_due(made, due):
    assert annual_review_due(made) == due


@pytest.mark.parametrize("sent, end", [
    (D(2027, 3, 1), D(2027, 3, 16)),
    (D(2026, 12, 20), D(2027, 1, 4)),   # calendar days: bank holidays are not skipped
    (D(2028, 2, 20), D(2028, 3, 6)),    # through the leap day
])
def test_response_window_end(sent, end):
    assert response_window_end(sent) == end


@pytest.mark.parametrize("proposed, deadline", [
    (D(2027, 1, 4), D(2027, 3, 1)),
    (D(2026, 12, 1), D(2027, 1, 26)),
])
def test_amendment_deadline_is_eight_weeks(proposed, deadline):
    assert amendment_deadline(proposed) == deadline


@pytest.mark.parametrize("meeting, deadline", [
    (D(2027, 1, 4), D(2027, 2, 1)),
    (D(2026, 12, 10), D(2027, 1, 7)),
])
def test_review_decision_deadline_is_four_weeks(meeting, deadline):
    assert review_decision_deadline(meeting) == deadline


# --------------------------------------------------------------------------- transfer (reg 15)


def test_move_learned_20_working_days_ahead_transfers_on_the_move_date():
    notified = D(2026, 11, 30)
    move = D(2026, 12, 30)  # Dec 1-4 (4), 7-11 (9), 14-18 (14), 21-24 (18), 29 (19), 30 (20)
    assert working_days_between(notified, move) == 20
    clocks = transfer_clocks(move, notified, last_review_or_made=D(2026, 6, 1))
    assert clocks == TransferClocks(
        transfer_due=move,
        notice_due=D(2027, 2, 10),    # 6 weeks after 30 December
        review_due=D(2027, 5, 31),    # 12 months from 1 June 2026 (to 31 May) beat 3 months (to 29 March)
    )


def test_move_learned_5_working_days_ahead_over_christmas_and_new_year():
    notified = D(2026, 12, 21)   # Monday
    move = D(2026, 12, 30)       # 22 23 24 29 30: 5 working days ahead
    # 15 working days beginning with 21 December: 21 22 23 24 29 30 31 | Jan 4 5 6 7 8 11 12 13
    # (25 Dec, 28 Dec substitute for Boxing Day and 1 Jan are bank holidays)
    clocks = transfer_clocks(move, notified, last_review_or_made=D(2026, 1, 15))
    assert clocks.transfer_due == D(2027, 1, 13)
    assert clocks.notice_due == D(2027, 2, 24)
    assert clocks.review_due == D(2027, 4, 12)   # 3 months beginning with 13 January 2027


def test_move_learned_5_working_days_ahead_over_easter_2027():
    notified = D(2027, 3, 22)    # Monday
    move = D(2027, 3, 31)        # 23 24 25 30 31: 5 working days ahead
    # 15 working days beginning with 22 March: 22 23 24 25 30 31 | Apr 1 2 5 6 7 8 9 12 13
    # (Good Friday 26 March and Easter Monday 29 March are bank holidays)
    assert transfer_due(move, notified) == D(2027, 4, 13)


def test_15_working_days_notice_is_enough_and_fewer_is_not():
    move = D(2027, 3, 31)
    fifteen_before = add_working_days(move, -15)
    # back from 31 March: 30 25 24 23 22 19 18 17 16 15 12 11 10 9 8
    assert fifteen_before == D(2027, 3, 8)
    assert transfer_due(move, fifteen_before) == move
    # 14 ahead: 15 working days beginning with 9 March end on the move date itself
    # (9 10 11 12 15 16 17 18 19 22 23 24 25 30 31)
    assert transfer_due(move, D(2027, 3, 9)) == move
    # 13 ahead: 10 11 12 15 16 17 18 19 22 23 24 25 30 31 | Apr 1
    assert transfer_due(move, D(2027, 3, 10)) == D(2027, 4, 1)


def test_learned_on_a_weekend_the_count_starts_on_the_next_working_day():
    notified = D(2027, 3, 20)    # Saturday
    move = D(2027, 3, 31)
    # 22 23 24 25 30 31 | Apr 1 2 5 6 7 8 9 12 13
    assert transfer_due(move, notified) == D(2027, 4, 13)


def test_learned_after_the_move():
    move = D(2027, 1, 4)
    notified = D(2027, 1, 11)    # Monday, a week after the move
    # 11 12 13 14 15 | 18 19 20 21 22 | 25 26 27 28 29
    assert transfer_due(move, notified) == D(2027, 1, 29)


def test_plan_reviewed_11_months_before_the_move_gets_3_months_from_transfer():
    move = D(2026, 12, 30)
    last_review = D(2026, 1, 30)          # 11 months before the move
    clocks = transfer_clocks(move, notified_date=D(2026, 11, 2), last_review_or_made=last_review)
    assert clocks.transfer_due == move
    # (a) 12 months beginning 30 Jan 2026 end 29 Jan 2027
    # (b) 3 months beginning 30 Dec 2026 end 29 Mar 2027 -> the later one wins
    assert clocks.review_due == D(2027, 3, 29)


def test_recomputing_from_the_actual_transfer_date():
    actual = D(2027, 1, 6)
    assert transfer_notice_due(actual) == D(2027, 2, 17)
    assert transfer_review_due(D(2026, 1, 30), actual) == D(2027, 4, 5)
    assert transfer_review_due(D(2026, 9, 1), actual) == D(2027, 8, 31)


@given(move=dates, offset=st.integers(min_value=-30, max_value=90), reviewed_days_before=st.integers(0, 400))
def test_transfer_clock_properties(move, offset, reviewed_days_before):
    notified = move - timedelta(days=offset)
    clocks = transfer_clocks(move, notified, move - timedelta(days=reviewed_days_before))
    assert clocks.transfer_due >= move
    assert clocks.transfer_due >= notified
    if clocks.transfer_due != move:
        assert is_working_day(clocks.transfer_due)
        # never more than 15 working days counting the day the LA learned of the move
        assert working_days_between(notified - timedelta(days=1), clocks.transfer_due) == 15
    assert clocks.notice_due == clocks.transfer_due + timedelta(weeks=6)
    assert clocks.review_due >= add_months(clocks.transfer_due, 3) - timedelta(days=1)
    assert clocks.review_due >= annual_review_due(move - timedelta(days=reviewed_days_before))


# --------------------------------------------------------------------------- worked examples (issue 6)

@pytest.mark.parametrize("move, notified, reviewed, transfer_due, notice_due, review_due", [
    # learned well ahead: transfer on the move date; review 12 months after the last review wins
    (D(2027, 3, 1), D(2027, 1, 4), D(2026, 9, 1), D(2027, 3, 1), D(2027, 4, 12), D(2027, 8, 31)),
    # learned 5 working days before a move over Christmas: 15 working days beginning with the day learned
    (D(2026, 12, 28), D(2026, 12, 21), D(2026, 6, 1), D(2027, 1, 13), D(2027, 2, 24), D(2027, 5, 31)),
    # plan last reviewed 11 months before the move: 3 months from transfer is later
    (D(2027, 1, 4), D(2026, 11, 2), D(2026, 2, 4), D(2027, 1, 4), D(2027, 2, 15), D(2027, 4, 3)),
])
def test_transfer_worked_examples(move, notified, reviewed, transfer_due, notice_due, review_due):
    clocks = transfer_clocks(move, notified, reviewed)
    assert (clocks.transfer_due, clocks.notice_due, clocks.review_due) == (transfer_due, notice_due, review_due)
