"""`qcg-hier status`: a live view of a running service (or the final state of a finished one)."""
import time
from pathlib import Path

import orjson

from ..api.errors import QCGPJMAError
from ..api.jobinfo import parse_rtime
from ..api.manager import Manager
from ..service.servicedir import find_service_dirs

FINAL = ("SUCCEED", "FAILED", "CANCELED", "OMITTED")
LIVE_TIMEOUT = 10.0  # seconds a running service has to answer


def fetch(target: str | None) -> tuple[dict, bool]:
    """(status data, live): ask the running service; for a finished one read final_status.json."""
    path = Path(target) if target else Path.cwd()
    if target and "://" in target:
        return _live(target), True
    dirs = find_service_dirs(path)
    if not dirs:
        raise FileNotFoundError(f"no .qcgpjm-service-* directory in {path}")
    address = dirs[0] / "address"
    if address.exists():
        # short tries first: a service that is ending closes its socket before it removes its
        # address, and a request sent then would get no reply for the whole timeout
        deadline = time.monotonic() + LIVE_TIMEOUT
        wait = 1.0
        while True:
            try:
                timeout = min(wait, max(deadline - time.monotonic(), 0.1))
                return _live(str(dirs[0]), timeout, timeout), True
            except QCGPJMAError:
                if not address.exists():
                    break  # it just ended: fall back to its final status
                if time.monotonic() >= deadline:
                    raise
                wait *= 2
    final = dirs[0] / "final_status.json"
    if not final.exists():
        raise FileNotFoundError(f"{dirs[0]} has neither a running service nor final_status.json")
    return orjson.loads(final.read_bytes()), False


def _live(address: str, connect_timeout: float = 5.0, request_timeout: float = LIVE_TIMEOUT) -> dict:
    manager = Manager(address, {"connect_timeout": connect_timeout, "request_timeout": request_timeout})
    try:
        return manager.system_status()
    finally:
        manager.cleanup()


def summary(data: dict, live: bool, rate: float | None = None) -> dict:
    """The `--json` object: `states` (iterations per state) and `cores`, plus nodes, rate and ETA."""
    system, res = data.get("System") or {}, data.get("Resources") or {}
    states = dict(data.get("States") or {})
    if not states:  # upstream's status has no per-state counts: derive what it has
        it = data.get("IterationStats") or {}
        states = {"QUEUED": it.get("InScheduleIterations", 0), "EXECUTING": it.get("ExecutingIterations", 0),
                  "SUCCEED": it.get("FinishedIterations", 0), "FAILED": it.get("FailedIterations", 0)}
    for state in ("QUEUED", "SCHEDULED", "EXECUTING") + FINAL:
        states.setdefault(state, 0)
    uptime = parse_rtime(system.get("Uptime"))
    done = sum(states[s] for s in FINAL)
    if rate is None and uptime and uptime.total_seconds() > 0:
        rate = done / uptime.total_seconds()
    left = states["QUEUED"] + states["SCHEDULED"] + states["EXECUTING"]
    return {
        "service": system.get("InstanceId"), "live": live, "uptime": uptime.total_seconds() if uptime else None,
        "states": states,
        "cores": {"total": res.get("TotalCores", 0), "used": res.get("UsedCores", 0), "free": res.get("FreeCores", 0)},
        "nodes": data.get("Nodes") or [],
        "rate": rate, "eta": (left / rate) if rate and left else (0.0 if not left else None),
    }


def text(s: dict) -> str:
    st = s["states"]
    lines = [f"service {s['service']} ({'running' if s['live'] else 'finished'})"
             + (f", up {s['uptime']:.1f} s" if s["uptime"] is not None else ""),
             "iterations: " + "  ".join(f"{k} {v}" for k, v in st.items()),
             f"cores: {s['cores']['used']} used, {s['cores']['free']} free of {s['cores']['total']}",
             f"rate: {s['rate']:.1f}/s" if s["rate"] else "rate: -",
             f"ETA: {s['eta']:.0f} s" if s["eta"] is not None else "ETA: -"]
    if s["nodes"]:
        lines.append("nodes:")
        for n in s["nodes"][:64]:
            lines.append(f"  {n['name']:<16} {n['used']:>4}/{n['total']:<4} {n['state']}")
        if len(s["nodes"]) > 64:
            lines.append(f"  ... {len(s['nodes']) - 64} more")
    return "\n".join(lines) + "\n"
