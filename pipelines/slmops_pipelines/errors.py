"""The error every layer raises for bad input or a failed step.

A :class:`JobError` carries the spec field it is about (``dataset.uri``,
``output.uri``, ...) so that the CLI, the operator's status and the KFP run all show the
same one-line message: ``<field>: <reason>``.  Anything else escaping a step is a bug
and is reported with its traceback.
"""

from __future__ import annotations

from typing import Any


class JobError(Exception):
    """A job cannot run or failed for a reason the user can act on."""

    def __init__(self, message: str, *, field: str | None = None, reason: str = "JobFailed") -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message

    def to_dict(self) -> dict[str, Any]:
        """The error as JSON travels between processes and pods (``.slmops/error.json``, a child's report)."""
        return {"message": self.message, "field": self.field, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobError:
        """The error :meth:`to_dict` wrote, as the class it was (an InputError stays one: exit code 2)."""
        reason = data.get("reason") or "JobFailed"
        if reason == "InvalidInput":
            return InputError(data["message"], field=data.get("field"))
        if reason == "StorageError":
            return StorageError(data["message"], field=data.get("field"))
        return JobError(data["message"], field=data.get("field"), reason=reason)


class InputError(JobError):
    """The spec or its data is wrong: fixing the input fixes the job."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message, field=field, reason="InvalidInput")


class StorageError(JobError):
    """The artifact store cannot be reached, refuses the credentials, or lacks an object."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message, field=field, reason="StorageError")
