"""`JobInfo`: a parsed jobInfo reply (upstream's attributes)."""
import re
from datetime import timedelta

_RTIME = re.compile(r"^(?:(\d+) days?, )?(\d+):(\d\d):(\d\d)(?:\.(\d+))?$")


def parse_rtime(text) -> timedelta | None:
    m = _RTIME.match(text or "")
    if not m:
        return None
    days, h, mi, s, frac = m.groups()
    micro = int((frac or "0").ljust(6, "0")[:6])
    return timedelta(days=int(days or 0), hours=int(h), minutes=int(mi), seconds=int(s), microseconds=micro)


def parse_allocation(text) -> dict:
    """`n0[0:1],n1[3]` -> {'n0': ['0', '1'], 'n1': ['3']}"""
    nodes = {}
    for m in re.finditer(r"([^,\[\]]+)\[([^\]]*)\]", text or ""):
        nodes[m.group(1)] = [c for c in m.group(2).split(":") if c]
    return nodes


class JobInfo:
    def __init__(self):
        self.name = None
        self.status = None
        self.nodes = None
        self.total_cores = None
        self.wdir = None
        self.time = None
        self.iterations = None
        self.childs = []
        self.history = []
        self.messages = None
        self.exit_code = None
        self.pid = None

    def _runtime(self, runtime: dict) -> None:
        if not runtime:
            return
        self.nodes = parse_allocation(runtime.get("allocation"))
        self.total_cores = sum(len(c) for c in self.nodes.values())
        self.wdir = runtime.get("wd")
        self.time = parse_rtime(runtime.get("rtime"))
        if runtime.get("exit_code") is not None:
            self.exit_code = int(runtime["exit_code"])
        if runtime.get("pid") is not None:
            self.pid = int(runtime["pid"])

    @staticmethod
    def from_job(job: dict) -> "JobInfo":
        info = JobInfo()
        info.name = job.get("jobName")
        info.status = job.get("status")
        info.messages = job.get("messages")
        info.history = [line for line in (job.get("history") or "").split("\n") if line]
        info._runtime(job.get("runtime") or {})
        if "iterations" in job:
            info.iterations = job["iterations"]
        for child in job.get("childs") or []:
            info.childs.append(JobInfo.from_child(info.name, child))
        return info

    @staticmethod
    def from_child(job_name, child: dict) -> "JobInfo":
        info = JobInfo()
        info.name = f"{job_name}:{child.get('iteration')}"
        info.status = child.get("state")
        info.messages = child.get("messages")
        info._runtime(child.get("runtime") or {})
        return info

    def __repr__(self) -> str:
        return f"JobInfo(name={self.name!r}, status={self.status!r})"
