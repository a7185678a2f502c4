"""The error types that map to the CLI's exit codes (0 ok, 1 internal, 2 bad input, 3 validation
failed), and the one-line forms of errors that reach a user."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError


class UserError(Exception):
    """Bad input: the message names the file or value and the problem; exit code 2."""

    exit_code = 2


class ValidationFailed(Exception):
    """A candidate model scored worse than allowed; exit code 3."""

    exit_code = 3


@dataclass(frozen=True)
class FieldError:
    """The first thing pydantic refused: where (dotted, as the input spells it) and why."""

    field: str  # e.g. "spec.serving.mode"; "" when the whole object is refused
    message: str  # one line, without pydantic's "Value error, " prefix
    value: Any  # the input that was refused

    def at(self, root: str) -> str:
        """One line with the field under `root`, e.g. `spec.serving.mode: Input should be ...`."""
        where = ".".join(part for part in (root, self.field) if part) or "input"
        return f"{where}: {self.message}"

    def __str__(self) -> str:
        return self.at("")


def first_error(exc: ValidationError) -> FieldError:
    """The first of pydantic's errors: a user fixes one thing at a time, named in one line."""
    error = exc.errors()[0]
    message = " ".join(str(error["msg"]).split()).removeprefix("Value error, ")
    field = ".".join(str(part) for part in error["loc"])
    return FieldError(field=field, message=message, value=error.get("input"))


def failure_reason(exc: BaseException) -> str:
    """The reason word a Job's container reports for an exception (its termination result)."""
    if isinstance(exc, ValidationFailed):
        return "ValidationFailed"
    if isinstance(exc, UserError):
        return "InvalidInput"
    if isinstance(exc, KeyboardInterrupt):  # SIGTERM, as Kubernetes stops pods
        return "Interrupted"
    return "Error"


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's first line (libraries' messages can run to pages), or its type's name."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__
