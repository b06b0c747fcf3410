"""Reading and writing the coded parts of workflow Tasks (parental review, transfer, notices).

Task.input / Task.output are typed by codes from profiles/CodeSystem/ehcp-task-input; Task.code
by ehcp-task-code. One place reads and builds them, so every workflow speaks the same way.
"""

from __future__ import annotations

from ehcp_record.fhir.canonical import code_system

TASK_CODE_SYSTEM = code_system("ehcp-task-code")
TASK_INPUT_SYSTEM = code_system("ehcp-task-input")


def concept(system: str, code: str) -> dict:
    return {"coding": [{"system": system, "code": code}]}


def is_task(task: dict, code: str) -> bool:
    """Is this a Task of the given ehcp-task-code (parental-review, transfer, annual-review...)?"""
    return has_coding(task.get("code"), TASK_CODE_SYSTEM, code)


def has_coding(value: object, system: str, code: str) -> bool:
    codings = value.get("coding", []) if isinstance(value, dict) else []
    return any(c.get("system") == system and c.get("code") == code for c in codings if isinstance(c, dict))


def task_input(task: dict, code: str) -> object:
    return _typed_value(task.get("input", []), code)


def task_output(task: dict, code: str) -> object:
    return _typed_value(task.get("output", []), code)


def _typed_value(items: list, code: str) -> object:
    """The value of the first item typed `code`: a reference string, a code, or the primitive."""
    for item in items or []:
        if any(c.get("code") == code for c in (item.get("type") or {}).get("coding", [])):
            for key, value in item.items():
                if key == "valueReference":
                    return value.get("reference")
                if key == "valueCodeableConcept":
                    return value["coding"][0]["code"]
                if key.startswith("value"):
                    return value
    return None
