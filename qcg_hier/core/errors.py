"""Errors raised by the scheduling core; the shells turn them into replies."""


class CoreError(Exception):
    """Base class of every error the core raises on purpose."""


class JobDescriptionError(CoreError):
    """A job description is invalid; the message names the job and the field."""

    def __init__(self, job: str | None, field: str | None, problem: str):
        self.job = job
        self.field = field
        self.problem = problem
        where = []
        if job is not None:
            where.append(f"job '{job}'")
        if field:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {problem}" if prefix else problem)


class SubmitError(CoreError):
    """A submit request is rejected as a whole (nothing of it is accepted)."""


class ResourceSpecError(CoreError):
    """A resource specification (nodes spec, hostlist, CPU list) cannot be parsed."""


class UnknownJobError(CoreError):
    """A request names a job or an iteration that does not exist."""
