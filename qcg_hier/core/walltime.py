"""The `wt` (wall time) field: "1h30m", "90s", "2h", "10m5s"."""
import re

from .errors import JobDescriptionError

_WT = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_walltime(text, job: str | None = None) -> float:
    """Seconds of a wall time string; raises naming the job when malformed or zero."""
    if not isinstance(text, str) or not text:
        raise JobDescriptionError(job, "resources.wt", f"wall time must be a string like '1h30m' or '90s', got {text!r}")
    m = _WT.match(text.strip())
    if not m or not any(m.groups()):
        raise JobDescriptionError(job, "resources.wt", f"malformed wall time {text!r} (expected e.g. '1h30m', '10m', '90s')")
    hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise JobDescriptionError(job, "resources.wt", f"wall time {text!r} must be greater than zero")
    return float(total)
