"""Statutory clocks for EHC plans in England.

Sources: Children and Families Act 2014 (CFA) s44; Special Educational Needs and
Disability Regulations 2014 (SI 2014/1530, "SEND Regs") regs 13, 15, 20 and 22; SEND Code
of Practice 0 to 25 (2015). Pure date arithmetic, no I/O.

Every deadline function returns the LAST day on which the duty is still met on time.
Where the statute counts a period "beginning with" (or "starting with") a day, that day
is day one, so the period ends a day earlier than a period counted "of" or "after" it:

* "within 15 working days beginning with the day on which it did become aware"
  (reg 15(2)) ends on the 15th working day counting that day itself;
* "the period of 12 months beginning with the date ..." (reg 15(5), CFA s44(1)) ends the
  day before the same date a year later;
* "within 6 weeks of the date of the transfer" (reg 15(4)), "within 4 weeks of the review
  meeting" (reg 20(10)) and "within 8 weeks of ... sending" (reg 22(3)) end on the same
  weekday 6, 4 or 8 weeks later.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache

import holidays

_ONE_DAY = timedelta(days=1)


# --------------------------------------------------------------------------- working days


@lru_cache(maxsize=256)
def _bank_holidays(year: int) -> frozenset[date]:
    """England's bank and public holidays in ``year``, substitute days included.

    From the pinned ``holidays`` package (GB, subdivision ENG): Good Friday and Christmas
    Day, the bank holidays of the Banking and Financial Dealings Act 1971, substitute
    ("observed") days and one-off proclaimed days such as 19 September 2022.
    """
    return frozenset(holidays.country_holidays("GB", subdiv="ENG", years=year).keys())


def is_working_day(d: date) -> bool:
    """True unless ``d`` is a Saturday, Sunday or bank holiday in England."""
    return d.weekday() < 5 and d not in _bank_holidays(d.year)


def add_working_days(d: date, n: int) -> date:
    """The ``n``th working day after ``d`` (before it when ``n`` is negative).

    ``d`` itself is never counted, so ``add_working_days(d, 0)`` is ``d``.
    """
    step = _ONE_DAY if n >= 0 else -_ONE_DAY
    remaining = abs(n)
    while remaining:
        d += step
        if is_working_day(d):
            remaining -= 1
    return d


def working_days_between(a: date, b: date) -> int:
    """Working days passed going from ``a`` to ``b``, counting days landed on, not ``a``.

    Forwards, the working days after ``a`` up to and including ``b``; backwards, minus
    the working days from ``b`` up to but excluding ``a``. So it inverts
    ``add_working_days``: ``working_days_between(a, add_working_days(a, n)) == n`` for
    every ``n``.
    """
    step = _ONE_DAY if b >= a else -_ONE_DAY
    sign = 1 if b >= a else -1
    count = 0
    d = a
    while d != b:
        d += step
        if is_working_day(d):
            count += 1
    return sign * count


def _working_period_end(start: date, n: int) -> date:
    """Last day of a period of ``n`` working days beginning with ``start``.

    ``start`` counts as the first day when it is a working day.
    """
    return add_working_days(start - _ONE_DAY, n)


# --------------------------------------------------------------------------- months


def add_months(d: date, n: int) -> date:
    """``d`` moved by ``n`` calendar months, clamped to the end of a shorter month.

    31 January + 1 month is 28 February (29 in a leap year).
    """
    index = d.year * 12 + (d.month - 1) + n
    year, month = divmod(index, 12)
    month += 1
    return date(year, month, min(d.day, calendar.monthrange(year, month)[1]))


def _month_period_end(start: date, months: int) -> date:
    """Last day of a period of ``months`` calendar months beginning with ``start``.

    The day before the corresponding date; when the target month has no corresponding
    date (a period beginning 31 August ending in February) the period runs to the end
    of that month.
    """
    target = add_months(start, months)
    return target - _ONE_DAY if target.day == start.day else target


# --------------------------------------------------------------------------- EHC plan clocks


def response_window_end(sent: date) -> date:
    """Last day of the parent's or young person's window to respond to a draft or proposal.

    SEND Regs 13(1)(a) and 22(2)(c): "at least 15 days, beginning with the day on which
    the draft plan was served" (calendar days; Code of Practice 9.77). The window runs to
    ``sent`` + 15 days, one day beyond the minimum, so it still holds the full 15 days
    when the papers arrive the day after they were sent.
    """
    return sent + timedelta(days=15)


def amendment_deadline(proposed: date) -> date:
    """Last day to issue the final amended plan after proposing amendments.

    SEND Regs 22(3): "within 8 weeks of the local authority sending a copy of the EHC
    plan" with the notice of proposed amendments (reg 22(2)(a)).
    """
    return proposed + timedelta(weeks=8)


def review_decision_deadline(meeting: date) -> date:
    """Last day to tell the family whether the LA maintains, amends or ceases the plan.

    SEND Regs 20(10) (and 21(9) where the child attends no school or institution): notify
    "within 4 weeks of the review meeting".
    """
    return meeting + timedelta(weeks=4)


def annual_review_due(made_or_last_review: date) -> date:
    """Last day by which the plan must be reviewed again.

    CFA 2014 s44(1): review "in the period of 12 months starting with the date on which
    the plan was first made" and in each later 12 months "starting with the date on which
    the plan was last reviewed". Made 15 March 2025 -> review by 14 March 2026.
    """
    return _month_period_end(made_or_last_review, 12)


# --------------------------------------------------------------------------- transfer (reg 15)


@dataclass(frozen=True)
class TransferClocks:
    """The three reg 15 deadlines of a transfer to another LA (last days on time)."""

    transfer_due: date
    notice_due: date
    review_due: date


def transfer_due(move_date: date, notified_date: date) -> date:
    """Last day for the old LA to transfer the plan to the new LA.

    SEND Regs 15(2): "on the day of the move or, where it has not become aware of the
    move at least 15 working days prior to that move, within 15 working days beginning
    with the day on which it did become aware". Aware on or before the 15th working day
    before the move -> the move date; otherwise the 15th working day counting the day it
    became aware (which is never before the move date).
    """
    fifteen_working_days_before = add_working_days(move_date, -15)
    if notified_date <= fifteen_working_days_before:
        return move_date
    return _working_period_end(notified_date, 15)


def transfer_notice_due(transfer_date: date) -> date:
    """Last day for the new LA to tell the family the plan has transferred.

    SEND Regs 15(4): "within 6 weeks of the date of the transfer", telling them that it
    has transferred, whether a new assessment is proposed and when the review will be.
    """
    return transfer_date + timedelta(weeks=6)


def transfer_review_due(last_review_or_made: date, transfer_date: date) -> date:
    """Last day for the new LA's first review of a transferred plan.

    SEND Regs 15(5): before the expiry of the later of the period of 12 months beginning
    with the date the plan was made or last reviewed, and the period of 3 months
    beginning with the date of the transfer. The plan keeps its original dates (reg
    15(3)(a)), so the 12 months run from the old LA's last review.
    """
    return max(
        _month_period_end(last_review_or_made, 12),
        _month_period_end(transfer_date, 3),
    )


def transfer_clocks(move_date: date, notified_date: date, last_review_or_made: date) -> TransferClocks:
    """The reg 15 clocks for planning a transfer, before it happens.

    Notice and review run from the latest lawful transfer day (``transfer_due``); once
    the plan has actually transferred, recompute them from the real transfer date with
    ``transfer_notice_due`` and ``transfer_review_due``, which can only bring them forward.
    """
    due = transfer_due(move_date, notified_date)
    return TransferClocks(
        transfer_due=due,
        notice_due=transfer_notice_due(due),
        review_due=transfer_review_due(last_review_or_made, due),
    )


# --------------------------------------------------------------------------- assessment (regs 5, 8, 10, 13)


def assessment_decision_due(request_received: date) -> date:
    """Last day to tell the family whether the LA will carry out an EHC needs assessment.

    SEND Regs 5(1): "as soon as practicable and in any event within 6 weeks of ... receiving a
    request for an assessment under section 36(1) of the Act" (reg 5(1)(a); 5(1)(b) runs the same
    6 weeks from becoming responsible under section 24), notifying "its decision whether or not"
    to assess, so a refusal and a decision to assess share the limit (a refusal's notice carries
    the appeal rights, reg 5(3)). Exceptions: reg 5(4)(a)-(d).
    """
    return request_received + timedelta(weeks=6)


def advice_due(advice_requested: date) -> date:
    """Last day for an adviser (school, health, social care, educational psychologist) to reply.

    SEND Regs 8(1): those asked for advice under reg 6 must comply "within 6 weeks of the date
    on which a request for advice" was made. Exceptions: reg 8(2).
    """
    return advice_requested + timedelta(weeks=6)


def issue_decision_due(request_received: date) -> date:
    """Last day to notify a decision NOT to issue a plan after the assessment.

    SEND Regs 10(1): "as soon as practicable, and in any event within 16 weeks of the local
    authority receiving a request for an EHC needs assessment". Reg 10(1) times only that
    notice; the record also closes this clock when the LA decides to issue a plan instead (the
    draft goes to the family, reg 13(1)), for which the regulations set no separate date.
    Exceptions: reg 10(4)(a)-(d).
    """
    return request_received + timedelta(weeks=16)


def final_plan_due(request_received: date) -> date:
    """Last day to send the finalised EHC plan.

    SEND Regs 13(2): "as soon as practicable, and in any event within 20 weeks of the local
    authority receiving a request for an EHC needs assessment". Exceptions: reg 13(3), which
    applies the reasons in reg 10(4)(a)-(d).
    """
    return request_received + timedelta(weeks=20)


# --------------------------------------------------------------------------- review (regs 18, 20)


def review_advice_circulated_by(meeting: date) -> date:
    """Last day to circulate the advice gathered for a review meeting.

    SEND Regs 20(4): the advice and information must be circulated "at least two weeks in
    advance of the review meeting" (and reg 20(3): two weeks' notice of the meeting).
    """
    return meeting - timedelta(weeks=2)


def review_report_due(meeting: date) -> date:
    """Last day to send the report of a review meeting.

    SEND Regs 20(7): within two weeks of the review meeting, prepare and send a report of the
    meeting to everyone invited, setting out recommendations on amendments.
    """
    return meeting + timedelta(weeks=2)


def phase_transfer_due(transfer_year: int, to_post16: bool) -> date:
    """Last day to review and amend the plan before a transfer between phases of education.

    SEND Regs 18(1): "before (a) 31 March in the calendar year of the ... transfer from
    secondary school to a post-16 institution; and (b) 15 February in the calendar year of
    the child's transfer in any other case". "Before" excludes the day itself, so the last
    day on time is 30 March or 14 February.
    """
    limit = date(transfer_year, 3, 31) if to_post16 else date(transfer_year, 2, 15)
    return limit - _ONE_DAY


# --------------------------------------------------------------------------- appeals and notices


def appeal_deadline(notice_sent: date, mediation_certificate: date | None = None) -> date:
    """Last day for the First-tier Tribunal (SEND) to receive an appeal against a decision.

    Tribunal Procedure (First-tier Tribunal) (Health, Education and Social Care Chamber) Rules
    2008, rule 20(1)(c): "(i) within 2 months after written notice of the decision being
    challenged was sent ...; or (ii) within 1 month from the date of issue of the mediation
    certificate if that date would be a later date". Calendar months, clamped at month end.
    """
    deadline = add_months(notice_sent, 2)
    if mediation_certificate is not None:
        deadline = max(deadline, add_months(mediation_certificate, 1))
    return deadline


#: Working days a decision notice may go unread before the LA sends it another way. A service
#: standard of this project (Ombudsman case 21 019 072: a parent missed her appeal window
#: because nothing told her the decision was online), not a statutory limit.
NOTICE_READ_WORKING_DAYS = 5


def notice_read_due(notice_sent: date) -> date:
    """Last day a sent decision notice may stay unread before it is on the LA's overdue list."""
    return add_working_days(notice_sent, NOTICE_READ_WORKING_DAYS)
