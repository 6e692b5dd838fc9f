"""`qcg-hier report`: statistics, job lists and efficiency of a run, from its files."""
import fnmatch
import statistics
from collections import Counter, defaultdict
from datetime import datetime

from .runlog import Run

STATES = ("QUEUED", "SCHEDULED", "EXECUTING", "SUCCEED", "FAILED", "CANCELED", "OMITTED")


def _summary(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"count": len(values), "min": min(values), "max": max(values), "mean": statistics.fmean(values),
            "median": statistics.median(values), "stdev": statistics.pstdev(values) if len(values) > 1 else 0.0}


def busy_core_seconds(run: Run) -> float:
    return sum(t.runtime * len(t.cores) for t in run.tasks if t.runtime)


def stats(run: Run) -> dict:
    """Jobs, iterations and states (OMITTED and CANCELED included), times, utilisation, overheads."""
    job_states = Counter(j.state for j in run.jobs.values())
    task_states = Counter(t.state for t in run.tasks)
    # iterations that never ran (OMITTED, CANCELED while queued) have no line of their own
    fs = (run.final_status or {}).get("States")
    iteration_states = dict(fs) if fs else dict(task_states)
    out = {
        "service_dir": str(run.service_dir),
        "jobs": len(run.jobs), "job_states": {s: job_states.get(s, 0) for s in STATES if job_states.get(s)},
        "iterations": sum(iteration_states.values()),
        "iteration_states": {s: iteration_states.get(s, 0) for s in STATES if iteration_states.get(s)},
        "tasks_run": sum(1 for t in run.tasks if t.started), "retries": sum(t.attempts - 1 for t in run.tasks),
        "cores": run.total_cores, "nodes": run.total_nodes,
        "runtime": _summary([t.runtime for t in run.tasks if t.runtime is not None]),
        "queue_time": _summary([t.wait for t in run.tasks if t.wait is not None]),
    }
    span = run.span
    if span:
        begin, end = span
        starts = [t.started for t in run.tasks if t.started]
        ends = [t.finished for t in run.tasks if t.finished]
        out["service_start"] = datetime.fromtimestamp(begin).isoformat()
        out["service_end"] = datetime.fromtimestamp(end).isoformat()
        out["service_runtime"] = end - begin
        if starts:
            out["init_overhead"] = min(starts) - begin
            out["finish_overhead"] = end - max(ends)
        if run.total_cores and end > begin:
            out["core_utilisation"] = busy_core_seconds(run) / (run.total_cores * (end - begin))
    return out


def efficiency(run: Run) -> dict:
    """Busy core-seconds over available core-seconds, overall and per node."""
    span = run.span
    if not span or span[1] <= span[0]:
        return {"overall": None, "nodes": {}}
    wall = span[1] - span[0]
    busy = defaultdict(float)
    slots = defaultdict(set)
    for task in run.tasks:
        for node, slot in task.cores:
            slots[node].add(slot)
            if task.runtime:
                busy[node] += task.runtime
    nodes_status = {n["name"]: n["total"] for n in (run.final_status or {}).get("Nodes", [])}
    per_node = {}
    for node in sorted(set(slots) | set(nodes_status)):
        cores = nodes_status.get(node) or len(slots[node]) or 1
        per_node[node] = {"cores": cores, "busy_core_seconds": busy[node], "efficiency": busy[node] / (cores * wall)}
    total = run.total_cores or sum(v["cores"] for v in per_node.values())
    return {"wall": wall, "cores": total, "busy_core_seconds": busy_core_seconds(run),
            "overall": busy_core_seconds(run) / (total * wall) if total else None, "nodes": per_node}


SORT_KEYS = {
    "start": lambda t: t.started or 0.0, "finish": lambda t: t.finished or 0.0,
    "runtime": lambda t: t.runtime or 0.0, "name": lambda t: t.name, "state": lambda t: t.state,
}


def jobs(run: Run, state=None, node=None, name=None, sort="start") -> list:
    tasks = run.tasks
    if state:
        wanted = {s.upper() for s in state}
        tasks = [t for t in tasks if t.state in wanted]
    if node:
        tasks = [t for t in tasks if node in t.nodes]
    if name:
        tasks = [t for t in tasks if fnmatch.fnmatchcase(t.name, name) or fnmatch.fnmatchcase(t.job, name)]
    # jobs that never ran have no task line: list them when their state is asked for
    ran = {t.job for t in run.tasks}
    extra = [j for j in run.jobs.values() if j.name not in ran and not node
             and (not state or j.state in {s.upper() for s in state})
             and (not name or fnmatch.fnmatchcase(j.name, name))]
    rows = sorted(tasks, key=SORT_KEYS[sort])
    return rows + sorted(extra, key=lambda j: j.name)


def _fmt_time(t) -> str:
    return datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3] if t else "-"


def jobs_table(rows) -> str:
    lines = [f"{'name':<30} {'state':<9} {'start':>12} {'finish':>12} {'runtime':>9} {'cores':>5}  nodes / message"]
    for r in rows:
        if hasattr(r, "cores"):
            rt = f"{r.runtime:.3f}" if r.runtime is not None else "-"
            lines.append(f"{r.name:<30} {r.state:<9} {_fmt_time(r.started):>12} {_fmt_time(r.finished):>12} "
                         f"{rt:>9} {len(r.cores):>5}  {','.join(r.nodes)}{'  ' + r.message if r.message else ''}")
        else:
            lines.append(f"{r.name:<30} {r.state:<9} {'-':>12} {_fmt_time(r.finished):>12} {'-':>9} {'-':>5}  "
                         f"{r.message or ''}")
    return "\n".join(lines) + "\n"


def stats_text(s: dict) -> str:
    lines = [f"service directory: {s['service_dir']}",
             f"jobs: {s['jobs']}  " + "  ".join(f"{k} {v}" for k, v in s["job_states"].items()),
             f"iterations: {s['iterations']}  " + "  ".join(f"{k} {v}" for k, v in s["iteration_states"].items()),
             f"tasks run: {s['tasks_run']}  retries: {s['retries']}",
             f"resources: {s['cores']} cores on {s['nodes']} nodes"]
    if "service_runtime" in s:
        lines.append(f"service: {s['service_start']} .. {s['service_end']}  ({s['service_runtime']:.2f} s)")
    for key in ("init_overhead", "finish_overhead"):
        if key in s:
            lines.append(f"{key.replace('_', ' ')}: {s[key]:.3f} s")
    if "core_utilisation" in s:
        lines.append(f"core utilisation: {100 * s['core_utilisation']:.1f} %")
    for key in ("runtime", "queue_time"):
        v = s[key]
        if v:
            lines.append(f"{key.replace('_', ' ')} (s): min {v['min']:.3f}  median {v['median']:.3f}  "
                         f"mean {v['mean']:.3f}  max {v['max']:.3f}  stdev {v['stdev']:.3f}")
    return "\n".join(lines) + "\n"


def efficiency_text(e: dict) -> str:
    if e["overall"] is None:
        return "no task has run: efficiency undefined\n"
    lines = [f"overall: {100 * e['overall']:.1f} % of {e['cores']} cores over {e['wall']:.2f} s "
             f"({e['busy_core_seconds']:.1f} busy core-seconds)"]
    for node, v in e["nodes"].items():
        lines.append(f"  {node:<16} {100 * v['efficiency']:6.1f} %  ({v['cores']} cores, "
                     f"{v['busy_core_seconds']:.1f} busy core-seconds)")
    return "\n".join(lines) + "\n"
