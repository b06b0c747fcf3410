"""The assessment, review, appeal and notice clocks, and the exception rules.

Each deadline cites the provision it follows; expected dates were counted by hand (the
comments show the count). Exceptions follow SEND Regulations 2014 regs 5(4), 8(2), 10(4) and
13(3): a listed reason, with its dates, lifts a limit; it never moves the deadline.
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given, strategies as st

from ehcp_record.workflow import clocks, statutory
from ehcp_record.workflow.statutory import ClockException, evaluate, exception_problem

D = date
dates = st.dates(min_value=D(2015, 1, 1), max_value=D(2035, 12, 31))


# --------------------------------------------------------------------------- assessment


def test_decision_whether_to_assess_is_6_weeks_from_receipt():
    # reg 5(1): "within 6 weeks of ... receiving a request". Mon 5 Jan 2026 -> Mon 16 Feb 2026.
    assert clocks.assessment_decision_due(D(2026, 1, 5)) == D(2026, 2, 16)


def test_advice_is_due_6_weeks_from_the_request_for_advice():
    # reg 8(1): 6 weeks of the date the request for advice is made. Tue 10 Feb -> Tue 24 Mar 2026.
    assert clocks.advice_due(D(2026, 2, 10)) == D(2026, 3, 24)


def test_decision_not_to_issue_is_16_weeks_from_the_request():
    # reg 10(1): 16 weeks of receiving the request. 5 Jan 2026 + 112 days = 27 Apr 2026.
    assert clocks.issue_decision_due(D(2026, 1, 5)) == D(2026, 4, 27)


def test_final_plan_is_20_weeks_from_the_request_even_over_bank_holidays():
    # reg 13(2): 20 calendar weeks; the limit is in weeks, so bank holidays neither add nor
    # take away days. 5 Jan 2026 + 140 days = Mon 25 May 2026, itself the spring bank holiday.
    due = clocks.final_plan_due(D(2026, 1, 5))
    assert due == D(2026, 5, 25) and not clocks.is_working_day(due)
    # A request received over Christmas: Wed 24 Dec 2025 -> Wed 13 May 2026.
    assert clocks.final_plan_due(D(2025, 12, 24)) == D(2026, 5, 13)


@given(dates)
def test_the_assessment_clocks_are_ordered(received):
    assert (received < clocks.assessment_decision_due(received) < clocks.issue_decision_due(received)
            < clocks.final_plan_due(received))
    assert (clocks.final_plan_due(received) - received).days == 140


# --------------------------------------------------------------------------- review and transfer


def test_review_advice_must_be_circulated_two_weeks_before_the_meeting():
    # reg 20(4): at least two weeks in advance. Meeting Mon 26 Apr 2027 -> by Mon 12 Apr 2027.
    assert clocks.review_advice_circulated_by(D(2027, 4, 26)) == D(2027, 4, 12)


def test_review_report_within_two_weeks_and_decision_within_four():
    # reg 20(7): report within two weeks; reg 20(10): decision within 4 weeks of the meeting.
    assert clocks.review_report_due(D(2027, 4, 26)) == D(2027, 5, 10)
    assert clocks.review_decision_deadline(D(2027, 4, 26)) == D(2027, 5, 24)


@pytest.mark.parametrize("year, post16, due", [
    (2028, False, D(2028, 2, 14)),  # reg 18(1)(b): before 15 February -> 14 February is the last day
    (2028, True, D(2028, 3, 30)),   # reg 18(1)(a): before 31 March (secondary to post-16)
    (2027, False, D(2027, 2, 14)),  # a Sunday: the regulation counts calendar days, so it stays
])
def test_phase_transfer_is_before_15_february_or_31_march(year, post16, due):
    assert clocks.phase_transfer_due(year, post16) == due


# --------------------------------------------------------------------------- appeals and notices


@pytest.mark.parametrize("sent, certificate, deadline", [
    (D(2026, 5, 14), None, D(2026, 7, 14)),           # r20(1)(c)(i): 2 months after the notice
    (D(2025, 12, 31), None, D(2026, 2, 28)),          # no 31 February: the end of the month
    (D(2026, 2, 2), D(2026, 3, 20), D(2026, 4, 20)),  # (ii): 1 month from the certificate, later
    (D(2026, 2, 2), D(2026, 2, 10), D(2026, 4, 2)),   # an early certificate: 2 months still later
])
def test_appeal_deadline_is_the_later_of_2_months_and_1_month_from_mediation(sent, certificate, deadline):
    assert clocks.appeal_deadline(sent, certificate) == deadline


def test_an_unread_notice_is_overdue_after_5_working_days_counting_bank_holidays():
    # Sent Wed 10 Jun 2026: Thu 11, Fri 12, Mon 15, Tue 16, Wed 17 -> 17 June.
    assert clocks.notice_read_due(D(2026, 6, 10)) == D(2026, 6, 17)
    # Sent Thu 24 Dec 2026: Christmas (Fri 25) and the substitute Boxing Day (Mon 28) do not
    # count: Tue 29, Wed 30, Thu 31, Fri 1 Jan is New Year's Day, Mon 4, Tue 5 -> 5 Jan 2027.
    assert clocks.notice_read_due(D(2026, 12, 24)) == D(2027, 1, 5)
    # Sent Thu 2 Apr 2026 (Good Friday 3 Apr, Easter Monday 6 Apr): 7, 8, 9, 10, 13 April.
    assert clocks.notice_read_due(D(2026, 4, 2)) == D(2026, 4, 13)


# --------------------------------------------------------------------------- exceptions


def absent(start: date, days: int) -> ClockException:
    return ClockException("absent-from-area", start, start + timedelta(days=days - 1))


def test_exception_reasons_are_the_regulations_own():
    rules = statutory.exception_rules()
    assert set(rules) == {"school-closed", "early-years-closed", "exceptional-circumstances", "absent-from-area",
                          "missed-appointment"}
    assert rules["missed-appointment"].clocks == {"advice"}  # reg 8(2)(c) only
    assert {"issue-decision", "final-plan", "assessment-decision"} <= rules["absent-from-area"].clocks
    assert rules["absent-from-area"].minimum_days == 28  # "a continuous period of not less than 4 weeks"


def test_absence_of_less_than_4_weeks_is_not_an_exception():
    assert "at least 28 days" in exception_problem("final-plan", absent(D(2026, 3, 1), 27))
    assert exception_problem("final-plan", absent(D(2026, 3, 1), 28)) is None


def test_a_missed_appointment_lifts_the_advice_limit_only():
    missed = ClockException("missed-appointment", D(2026, 3, 2), D(2026, 3, 2))
    assert exception_problem("advice", missed) is None
    assert "reg 8(2)(c)" in exception_problem("final-plan", missed)


def test_a_late_final_plan_with_an_exception_in_its_period_is_late_excepted():
    start, due = D(2026, 1, 12), clocks.final_plan_due(D(2026, 1, 12))  # due 1 June 2026
    state = evaluate("final-plan", start, due, D(2026, 6, 10), [absent(D(2026, 3, 1), 36)], D(2026, 6, 10))
    assert (state.state, state.exception, state.days_left) == ("late-excepted", "absent-from-area", -9)


def test_a_late_step_without_an_exception_is_late():
    state = evaluate("final-plan", D(2026, 1, 5), D(2026, 5, 25), D(2026, 6, 5), [], D(2026, 6, 5))
    assert (state.state, state.exception, state.days_left) == ("late", None, -11)


def test_an_exception_outside_the_clocks_period_does_not_apply():
    # absent in 2025, before the request: "during that time period" is not met
    state = evaluate("final-plan", D(2026, 1, 5), D(2026, 5, 25), D(2026, 6, 5), [absent(D(2025, 9, 1), 40)],
                     D(2026, 6, 5))
    assert state.state == "late" and state.exception is None


def test_an_on_time_step_reports_no_exception_even_when_one_is_recorded():
    state = evaluate("final-plan", D(2026, 1, 5), D(2026, 5, 25), D(2026, 5, 14), [absent(D(2026, 3, 1), 40)],
                     D(2026, 5, 14))
    assert (state.state, state.exception) == ("met", None)


def test_school_closure_counts_from_a_week_before_it_closed():
    # reg 10(4)(a): from one week before closing to one week before re-opening. Summer closure
    # 22 Jul - 2 Sep 2026 counts 15 Jul - 26 Aug; a clock running 1-14 Jul is not covered,
    # one running until 16 Jul is.
    closure = ClockException("school-closed", D(2026, 7, 22), D(2026, 9, 2))
    assert not statutory.applies("final-plan", D(2026, 2, 24), D(2026, 7, 14), closure)
    assert statutory.applies("final-plan", D(2026, 3, 2), D(2026, 7, 16), closure)


def test_open_clocks_count_down_and_go_overdue():
    due = D(2026, 3, 24)
    assert evaluate("advice", D(2026, 2, 10), due, None, [], D(2026, 3, 20)).days_left == 4
    overdue = evaluate("advice", D(2026, 2, 10), due, None, [], D(2026, 3, 30))
    assert (overdue.state, overdue.days_left, overdue.regulation) == ("overdue", -6, "SEND Regulations 2014 reg 8(1)")


@given(dates, st.integers(min_value=0, max_value=200), st.integers(min_value=0, max_value=400))
def test_evaluate_is_met_exactly_when_done_by_the_due_day(start, length, after):
    due = start + timedelta(days=length)
    done = start + timedelta(days=after)
    state = evaluate("final-plan", start, due, done, [], done)
    assert (state.state == "met") is (done <= due)
