"""The journal: what was accepted and what ended, so that `--resume` restarts exactly the rest.

`<service dir>/journal` (the successor of upstream's `track.reqs`/`track.states`), JSON lines:

    {"opts": {...}}                          the service options, first line of a new journal
    {"submit": [job description, ...]}       an accepted submit, after submit-time substitution
    {"file": N}                              batch-file requests 0..N handled
    {"cancel": name} / {"remove": name}      accepted cancel and remove requests
    {"run": {job: [[a, b], ...]}}            iterations a..b-1 started
    {"fin": {state: {job: [[a, b], ...]}}}   iterations that ended in that state
    {"interrupted": {job: [[a, b], ...]}}    running when SIGTERM/SIGINT stopped the run (never ended:
                                             --resume runs them again)

Records are buffered and written together: a submit before its reply is sent, task ends
before they reach jobs.report or the status publisher, starts with the next write. One
write() per scheduling pass, never an open/append/close per event.
"""
import os
from collections import defaultdict
from pathlib import Path

import orjson

JOURNAL_FILE = "journal"


def to_ranges(values) -> list[list[int]]:
    """[1, 2, 3, 7] -> [[1, 4], [7, 8]] (half-open)."""
    out = []
    for v in sorted(values):
        if out and out[-1][1] == v:
            out[-1][1] = v + 1
        else:
            out.append([v, v + 1])
    return out


class Journal:
    def __init__(self, service_dir: Path):
        self.path = Path(service_dir) / JOURNAL_FILE
        _drop_torn_tail(self.path)  # a resumed run appends: never glue its first record to a torn line
        self._file = open(self.path, "ab")
        self._buffer: list[bytes] = []
        self._started = defaultdict(list)
        self._finished = defaultdict(lambda: defaultdict(list))

    def record(self, entry: dict) -> None:
        self._buffer.append(orjson.dumps(entry) + b"\n")

    def record_json(self, key: str, value_json: bytes) -> None:
        """record({key: value}) for a value already in JSON text."""
        self._buffer.append(b'{"%s":%s}\n' % (key.encode(), value_json))

    def started(self, job: str, it: int) -> None:
        self._started[job].append(it)

    def finished(self, job: str, it: int, state: str) -> None:
        self._finished[state][job].append(it)

    def flush(self) -> None:
        if self._started:
            self.record({"run": {job: to_ranges(its) for job, its in self._started.items()}})
            self._started.clear()
        if self._finished:
            self.record({"fin": {state: {job: to_ranges(its) for job, its in jobs.items()}
                                 for state, jobs in self._finished.items()}})
            self._finished.clear()
        if self._buffer:
            self._file.write(b"".join(self._buffer))
            self._file.flush()  # in the kernel: survives a kill -9 of the service
            self._buffer.clear()

    def close(self) -> None:
        self.flush()
        self._file.close()


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line without its newline (a write cut short by a crash); read() ignores it anyway."""
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if not size:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            end = size
            while end > 0:
                start = max(0, end - 65536)
                f.seek(start)
                chunk = f.read(end - start)
                cut = chunk.rfind(b"\n")
                if cut >= 0:
                    f.truncate(start + cut + 1)
                    return
                end = start
            f.truncate(0)
    except FileNotFoundError:
        pass


def read(service_dir: Path) -> list[dict]:
    path = Path(service_dir) / JOURNAL_FILE
    if not path.exists():
        raise FileNotFoundError(f"no journal in {service_dir}: nothing to resume")
    records = []
    with open(path, "rb") as f:
        for line in f:
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                break  # a torn last line from a crash: everything before it counts
    return records


def exists(service_dir: Path) -> bool:
    return os.path.exists(Path(service_dir) / JOURNAL_FILE)
