"""One error type for every refusal, mapped to an OperationOutcome in exactly one place (api)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FhirError(Exception):
    """A refusal the client can act on: HTTP status, FHIR issue-type code, one plain line.

    `expression` names the element at fault when there is one (FHIR OperationOutcome.issue
    .expression), so an integration engineer can find the bad field without guessing.
    """

    status: int
    code: str
    diagnostics: str
    expression: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    extra_issues: list[dict] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.diagnostics}"


def not_found(what: str) -> FhirError:
    return FhirError(404, "not-found", f"{what} was not found")


def deleted_by_owner(what: str) -> FhirError:
    """410 Gone (R4 http §3.1.0.7): deleted; its earlier versions stay in its history."""
    return FhirError(410, "deleted", f"{what} was deleted by its owner; its earlier versions stay readable in its "
                     "_history")


def invalid(message: str, code: str = "invalid", expression: list[str] | None = None) -> FhirError:
    return FhirError(400, code, message, expression or [])


def unprocessable(message: str, code: str = "invalid", expression: list[str] | None = None) -> FhirError:
    return FhirError(422, code, message, expression or [])


def forbidden(message: str) -> FhirError:
    return FhirError(403, "forbidden", message)


def conflict(message: str, code: str = "conflict") -> FhirError:
    return FhirError(409, code, message)


def business_rule(message: str) -> FhirError:
    return FhirError(409, "business-rule", message)


def precondition_required(message: str) -> FhirError:
    return FhirError(428, "required", message)


def precondition_failed(message: str) -> FhirError:
    return FhirError(412, "conflict", message)


def not_supported(message: str, status: int = 400) -> FhirError:
    return FhirError(status, "not-supported", message)


def too_costly(message: str) -> FhirError:
    return FhirError(400, "too-costly", message)


def outcome_of(error: FhirError) -> dict:
    """The OperationOutcome for a refusal: one issue, plain-English diagnostics."""
    issue: dict = {"severity": "error", "code": error.code, "diagnostics": error.diagnostics}
    if error.expression:
        issue["expression"] = error.expression
    return {"resourceType": "OperationOutcome", "issue": [issue] + list(error.extra_issues)}


#: Seconds a client should wait before retrying when the database is unavailable (503).
RETRY_AFTER_SECONDS = 5
_STATUS_CODES = {
    400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
    406: "not-supported", 409: "conflict", 410: "deleted", 412: "conflict", 413: "too-costly",
    414: "too-costly", 415: "not-supported", 416: "not-supported", 417: "not-supported", 422: "invalid",
    428: "required", 429: "throttled", 431: "too-costly", 501: "not-supported", 503: "transient",
}


def issue_code_for_status(status: int) -> str:
    """The FHIR issue-type code for an HTTP error status that carries no more specific one."""
    return _STATUS_CODES.get(status, "invalid" if status < 500 else "exception")


def unavailable(message: str = "the database is unavailable just now; try again shortly") -> FhirError:
    """503 transient, with Retry-After: storage trouble the client can simply retry."""
    return FhirError(503, "transient", message, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
