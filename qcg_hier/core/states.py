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

    # Enum's own __hash__ is Python code; states key hot counters, so hash as the str does
    __hash__ = str.__hash__

    def __str__(self) -> str:  # so f-strings give the wire name
        return self._value_


FINAL_STATES = frozenset({JobState.SUCCEED, JobState.FAILED, JobState.CANCELED, JobState.OMITTED})
for _state in JobState:
    # a plain attribute, not a property: read on every state change
    _state.is_final = _state in FINAL_STATES

# Compact per-iteration state codes (one byte each in a bytearray).
STATE_CODES = list(JobState)
CODE_OF = {state: code for code, state in enumerate(STATE_CODES)}
