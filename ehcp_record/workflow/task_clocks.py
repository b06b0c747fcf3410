"""Statutory deadlines the server sets on workflow Tasks, so an LA can list what is late.

Annual review (SEND Regulations 2014 reg 20(10)): within 4 weeks of the review meeting the LA
decides whether to maintain, amend or cease the plan. The deadline goes in
Task.restriction.period.end, which the `due` search parameter indexes, so
`Task?code=annual-review&status=requested&due=lt<today>` lists the overdue decisions.
"""

from __future__ import annotations

from datetime import date

from ehcp_record.fhir.dates import parse_date
from ehcp_record.workflow import clocks
from ehcp_record.errors import unprocessable
from ehcp_record.workflow.task_values import TASK_INPUT_SYSTEM, has_coding, is_task



def apply(task: dict) -> dict:
    """Set (or check) the decision deadline on an annual-review Task; other Tasks unchanged."""
    if not is_task(task, "annual-review"):
        return task
    meeting = _meeting_date(task)
    due = clocks.review_decision_deadline(meeting).isoformat()
    period = dict((task.get("restriction") or {}).get("period") or {})
    if period.get("end") not in (None, due):
        raise unprocessable(f"the decision after a review meeting on {meeting} is due by {due} "
                            "(SEND Regulations 2014 reg 20(10)); leave restriction.period.end for the server to set",
                            "business-rule", ["Task.restriction.period.end"])
    period.update({"start": period.get("start", meeting.isoformat()), "end": due})
    return dict(task, restriction=dict(task.get("restriction") or {}, period=period))


def _meeting_date(task: dict) -> date:
    for item in task.get("input", []) or []:
        if has_coding(item.get("type"), TASK_INPUT_SYSTEM, "meeting-date") and isinstance(item.get("valueDate"), str):
            try:
                return parse_date(item["valueDate"])
            except ValueError:
                break
    raise unprocessable("an annual-review Task needs input meeting-date (valueDate): the date of the review meeting",
                        "required", ["Task.input"])
