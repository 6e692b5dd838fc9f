"""`jobs.report`: one entry per finished iteration and per finished job, written in batches."""
import os
import re
import time

import orjson

from ..core.job import Job, Record

_seconds: dict = {}  # whole second -> its text: a report line's dates span a few seconds at most


def iso(t: float) -> str:
    """Local ISO date with microseconds, as upstream; each second is formatted once."""
    sec = int(t)
    text = _seconds.get(sec)
    if text is None:
        if len(_seconds) > 4096:
            _seconds.clear()
        text = _seconds[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(sec))
    return f"{text}.{int((t - sec) * 1e6):06d}"


def _history(history) -> list:
    # `_value_` is a plain attribute (`.value` is a property, and orjson reads it per entry)
    return [{"state": state._value_, "date": iso(t)} for state, t in history]


def iteration_entry(job: Job, it: int, state, record: Record | None) -> dict:
    entry = {"name": f"{job.name}:{it}", "state": state._value_,
             "history": _history(record.history) if record else [],
             "runtime": record.runtime() if record else {}}
    if record is not None and record.message:
        entry["messages"] = record.message
    return entry


def job_entry(job: Job) -> dict:
    record = job.records.get(job.start) if (job.records and not job.iterative) else None
    entry = {"name": job.name, "state": job.state._value_, "history": _history(job.history),
             "runtime": record.runtime() if record else {}}
    spec = job.spec.to_dict()
    entry["execution"] = spec["execution"]
    entry["resources"] = spec["resources"]
    if "dependencies" in spec:
        entry["dependencies"] = spec["dependencies"]
    if "iteration" in spec:
        entry["iteration"] = spec["iteration"]
    if job.messages:
        entry["messages"] = "; ".join(job.messages)
    return entry


_TEXT_HEADER = re.compile(rb"(.*?) \(([A-Z]+)\)(?: |$)")


def last_entry_names(path, fmt: str, count: int) -> set[str]:
    """The names of the last `count` entries of a report (read from its end, never in whole)."""
    if count <= 0 or fmt == "none":
        return set()
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return set()
    with f:
        end = f.seek(0, os.SEEK_END)
        data = b""
        while True:
            start = max(0, end - 65536)
            f.seek(start)
            data = f.read(end - start) + data
            end = start
            lines = data.split(b"\n")
            heads = [ln for ln in (lines if start == 0 else lines[1:]) if ln and not ln.startswith(b"\t")]
            if len(heads) >= count or start == 0:
                return {_entry_name(ln, fmt) for ln in heads[-count:]} - {None}


def _entry_name(line: bytes, fmt: str) -> str | None:
    try:
        if fmt == "json":
            return orjson.loads(line)["name"]
        m = _TEXT_HEADER.match(line)
        return m.group(1).decode() if m else None
    except (orjson.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        return None  # a line torn by the crash


def _text(entry: dict) -> str:
    lines = [f"{entry['name']} ({entry['state']})" + (f" {entry['messages']}" if entry.get("messages") else "")]
    lines += [f"\t{h['date']}: {h['state']}" for h in entry["history"]]
    lines += [f"\t{k}: {v}" for k, v in entry["runtime"].items()]
    return "\n".join(lines) + "\n"


class ReportWriter:
    """Buffers entries and appends them to the report file in batches (never per event)."""

    def __init__(self, path, fmt: str = "json", batch: int = 2000):
        self.path = path
        self.format = fmt
        self.batch = batch
        self._buffer: list[bytes] = []
        self._file = open(path, "ab") if fmt != "none" else None

    @property
    def enabled(self) -> bool:
        """False with `--report-format none`: entries need not even be built."""
        return self._file is not None

    def add(self, entry: dict) -> None:
        if self._file is None:
            return
        if self.format == "json":
            self._buffer.append(orjson.dumps(entry) + b"\n")
        else:
            self._buffer.append(_text(entry).encode())
        if len(self._buffer) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if self._buffer and self._file is not None:
            self._file.write(b"".join(self._buffer))
            self._file.flush()
            self._buffer.clear()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
