"""Reading a run back from its service directory: service.log, jobs.report, final_status.json.

Works on a finished run and on one still going (the report then holds what has ended so far),
and on upstream QCG-PilotJob's files too (same formats).
"""
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import orjson

from ..service.servicedir import find_service_dirs

_STARTED = re.compile(r"service \S+ version \S+ started (.+?) @ ")
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}): ")
_RESOURCES = re.compile(r"available resources: (\d+) \((\d+) used\) cores on (\d+) nodes")


def _ts(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def parse_allocation(text: str) -> list[tuple[str, str]]:
    """`n0[0:1],n1[3]` -> [('n0', '0'), ('n0', '1'), ('n1', '3')]"""
    cores = []
    for m in re.finditer(r"([^,\[\]]+)\[([^\]]*)\]", text or ""):
        cores.extend((m.group(1), c) for c in m.group(2).split(":") if c)
    return cores


@dataclass
class Task:
    """One run of an iteration (or of a plain job)."""

    name: str
    job: str
    state: str
    scheduled: float | None
    started: float | None
    finished: float | None
    cores: list  # [(node, slot)]
    exit_code: str | None = None
    cpu: float | None = None
    max_rss_kb: int | None = None
    message: str | None = None
    queued: float | None = None  # when its job was submitted
    attempts: int = 1

    @property
    def runtime(self) -> float | None:
        return self.finished - self.started if self.finished and self.started else None

    @property
    def wait(self) -> float | None:
        return self.scheduled - self.queued if self.scheduled and self.queued else None

    @property
    def nodes(self) -> list[str]:
        return sorted({node for node, _ in self.cores})


@dataclass
class JobLine:
    name: str
    state: str
    queued: float | None
    finished: float | None
    iterative: bool
    message: str | None


@dataclass
class Run:
    service_dir: Path
    started: float | None = None
    finished: float | None = None
    total_cores: int | None = None
    total_nodes: int | None = None
    tasks: list = field(default_factory=list)
    jobs: dict = field(default_factory=dict)
    final_status: dict | None = None

    @property
    def span(self) -> tuple[float, float] | None:
        starts = [t.started for t in self.tasks if t.started]
        ends = [t.finished for t in self.tasks if t.finished]
        begin = self.started or (min(starts) if starts else None)
        end = self.finished or (max(ends) if ends else None)
        return (begin, end) if begin and end else None


def _history_times(history: list) -> dict:
    times = {}
    for entry in history or ():
        times.setdefault(entry.get("state"), []).append(_ts(entry.get("date")))
    return times


def _read_log(run: Run) -> None:
    log = run.service_dir / "service.log"
    if not log.exists():
        return
    last_time = None
    with open(log, errors="replace") as f:
        for line in f:
            if run.started is None:
                m = _STARTED.search(line)
                if m:
                    run.started = _ts(m.group(1).replace(" ", "T", 1))
            m = _RESOURCES.search(line)
            if m and run.total_cores is None:
                run.total_cores, run.total_nodes = int(m.group(1)) - int(m.group(2)), int(m.group(3))
            m = _LOG_TIME.match(line)
            if m:
                last_time = m
    if last_time is not None and (run.service_dir / "final_status.json").exists():
        run.finished = _ts(f"{last_time.group(1)}.{last_time.group(2)}")


def _read_report(run: Run) -> None:
    report = run.service_dir / "jobs.report"
    if not report.exists():
        return
    entries = []
    with open(report, "rb") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                entries.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                raise ValueError(f"{report} is not a JSON-lines report (use --report-format json)") from None
    for e in entries:
        if "execution" in e or "resources" in e:  # a whole-job line
            times = _history_times(e.get("history"))
            run.jobs[e["name"]] = JobLine(e["name"], e["state"], (times.get("QUEUED") or [None])[0],
                                          (times.get(e["state"]) or [None])[-1], "iteration" in e or not e.get("runtime"),
                                          e.get("messages"))
    for e in entries:
        is_job_line = "execution" in e or "resources" in e
        runtime = e.get("runtime") or {}
        if is_job_line and not runtime:
            continue  # an iterative job's summary, or a job that never ran
        times = _history_times(e.get("history"))
        job = e["name"].rpartition(":")[0] if not is_job_line and ":" in e["name"] else e["name"]
        queued = run.jobs[job].queued if job in run.jobs else None
        cpu = runtime.get("cpu_time")
        rss = runtime.get("max_rss_kb")
        run.tasks.append(Task(
            name=e["name"], job=job, state=e["state"],
            scheduled=(times.get("SCHEDULED") or [None])[-1], started=(times.get("EXECUTING") or [None])[-1],
            finished=(times.get(e["state"]) or [None])[-1], cores=parse_allocation(runtime.get("allocation")),
            exit_code=runtime.get("exit_code"), cpu=float(cpu) if cpu else None,
            max_rss_kb=int(rss) if rss else None, message=e.get("messages"), queued=queued,
            attempts=max(1, len(times.get("SCHEDULED") or ()))))


def load_run(path) -> Run:
    dirs = find_service_dirs(Path(path))
    if not dirs:
        raise FileNotFoundError(f"no .qcgpjm-service-* directory in {path}")
    run = Run(dirs[0])
    status_file = run.service_dir / "final_status.json"
    if status_file.exists():
        run.final_status = orjson.loads(status_file.read_bytes())
        res = run.final_status.get("Resources") or {}
        run.total_cores, run.total_nodes = res.get("TotalCores"), res.get("TotalNodes")
    _read_log(run)
    _read_report(run)
    return run
