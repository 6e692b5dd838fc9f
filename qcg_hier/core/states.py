"""Job and iteration states, with the names used on the wire and in reports."""
from enum import Enum


class JobState(str, Enum):
    QUEUED = "QUEUED"
    SCHEDULED = "SCHEDULED"
    EXECUTING = "EXECUTING"
    SUCCEED = "SUCCEED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    OMITTED = "OMITTED"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES

    def __str__(self) -> str:  # so f-strings give the wire name
        return self.value


FINAL_STATES = frozenset({JobState.SUCCEED, JobState.FAILED, JobState.CANCELED, JobState.OMITTED})

# Compact per-iteration state codes (one byte each in a bytearray).
STATE_CODES = list(JobState)
CODE_OF = {state: code for code, state in enumerate(STATE_CODES)}
