#!/usr/bin/env python3
"""Throughput / overhead benchmark of the governor (``qcg-governor``, i.e.
``qcg-pm-service --governor``) through the file interface.

This is not a test: it prints figures and exits 0.

    python scripts/bench_governor.py [--case scale|real|all] [options]

Cases (each run in a fresh temporary working dir, the service run as
``CMD --file-path F --wd WD --nodes ... --log info``; info is needed for the
governor's "N children connected after X s: scheduling starts" line):

  scale   a governor over --nodes (1,000) virtual nodes x --cores (128) cores,
          --partition-nodes (16) nodes per child (63 local child managers),
          --fake-launch, --tasks (1,000,000) tasks as --jobs (100) jobs of
          tasks/jobs iterations.  Timed from the spawn of the governor to its
          exit.  Prints the aggregate tasks/s (target >= 20,000), the wall
          time, the time until scheduling starts, the governor's own CPU per
          task (its process alone: /proc/<pid>/stat of the exited, not yet
          reaped governor; the children are other processes), the governor's
          peak RSS (sampled every --sample s), and checks the governor's
          jobs.report (tasks + jobs lines, every iteration once, all SUCCEED)
          and final_status.json (FinishedIterations == tasks); a child lost
          or started again (the governor's service.log) or a process left
          behind after the governor's exit counts as a problem too.  Log lines
          that look wrong (governor, children, partition-*.log) are printed,
          grouped by kind.
  real    --real-tasks (20,000) /bin/true tasks (--real-jobs jobs) through a
          governor over --real-nodes (8,8,8,8, the nodes of bench_manager's
          throughput cases) with --real-partition-nodes (1) (4 local children),
          against ONE manager ``qcg-pm-service --nodes 8,8,8,8`` (the same
          virtual cores, the same tasks; --manager-arg adds options to it),
          alternating the two --repeat (3) times.  Rate = tasks / (first EXECUTING date ->
          last final-state date) from the iteration lines of jobs.report;
          wall-clock rates (with start-up) are printed too.  The figure is
          the median over the pairs of governor rate / manager rate (target
          >= 0.85).  A raw posix_spawn loop of /bin/true (as many in flight as
          virtual cores) is printed for reference (--raw-each: before every
          pair, for a shared machine).

The machine may be shared (other benchmarks or tests running): the load
average is printed next to every figure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib as bl  # noqa: E402
import orjson  # noqa: E402

CASES = ["scale", "real"]
SCALE_TARGET = 20_000.0     # tasks/s aggregate
REAL_TARGET = 0.85          # governor rate / manager rate

SERVICE_PREFIX = ".qcgpjm-service-"
CHILD_PREFIX = SERVICE_PREFIX + "partition-"
SCHED_RE = re.compile(r"^(\S+ \S+): (\d+)(?: of \d+)? (children connected|agents ready) after "
                      r"([\d.]+) s: scheduling starts")
FINISHED_RE = re.compile(r"^(\S+ \S+): service \S+ finished$")
LOST_RE = re.compile(r": child \S+ lost \(")
RESTART_RE = re.compile(r": starting child \S+ again")
PROBLEM_RE = re.compile(r"lost|again|error|fail|timeout|traceback|keeps dying|killed|exception", re.I)


# --------------------------------------------------------------------------
# what a run left behind
# --------------------------------------------------------------------------


@dataclass
class ReportScan:
    lines: int = 0
    job_lines: int = 0
    iter_lines: int = 0
    unique_iters: int = 0
    not_succeeded: int = 0          # iteration lines whose state is not SUCCEED
    bad_lines: int = 0              # unparsable
    first_exec: Optional[float] = None  # epoch s of the first EXECUTING date
    last_end: Optional[float] = None    # epoch s of the last final-state date
    missing_exec: int = 0           # iteration lines without an EXECUTING entry

    @property
    def window(self) -> Optional[float]:
        if self.first_exec is None or self.last_end is None:
            return None
        return self.last_end - self.first_exec


def scan_report(path: str) -> Optional[ReportScan]:
    """Count the lines of a jobs.report (JSON format) and find the window
    from the first task start to the last task end."""
    if not os.path.exists(path):
        return None
    scan = ReportScan()
    names: set = set()
    cache: dict = {}

    def epoch(s: str) -> float:
        v = cache.get(s)
        if v is None:
            v = cache[s] = dt.datetime.fromisoformat(s).timestamp()
        return v

    first = float("inf")
    last = float("-inf")
    with open(path, "rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            scan.lines += 1
            try:
                rec = orjson.loads(raw)
            except orjson.JSONDecodeError:
                scan.bad_lines += 1
                continue
            if "execution" in rec:          # a job line
                scan.job_lines += 1
                continue
            scan.iter_lines += 1
            names.add(rec.get("name"))
            if rec.get("state") != "SUCCEED":
                scan.not_succeeded += 1
            hist = rec.get("history") or []
            start = None
            for h in hist:
                if h.get("state") == "EXECUTING":
                    start = epoch(h["date"])
                    break
            if start is None:
                scan.missing_exec += 1
            elif start < first:
                first = start
            if hist:
                end = epoch(hist[-1]["date"])
                if end > last:
                    last = end
    scan.unique_iters = len(names)
    if first != float("inf"):
        scan.first_exec = first
    if last != float("-inf"):
        scan.last_end = last
    return scan


@dataclass
class Outcome:
    """A run and what its service directories say."""
    run: bl.ServiceRun
    tasks: int
    jobs: int
    spawn_epoch: float
    service_dir: Optional[str] = None
    child_dirs: list = field(default_factory=list)
    final: Optional[dict] = None
    scan: Optional[ReportScan] = None
    sched_after: Optional[float] = None     # the "after X s" of the log line
    sched_since_spawn: Optional[float] = None
    sched_what: str = ""
    finished_since_spawn: Optional[float] = None    # the "service X finished" log line
    lost: int = 0           # "child X lost (...)" lines of the governor
    restarts: int = 0       # "starting child X again" lines of the governor
    problems: list = field(default_factory=list)
    cpu_at_sched: Optional[float] = None    # governor own CPU when scheduling started (sampled)
    cpu_samples: list = field(default_factory=list)

    # ----- figures
    @property
    def wall_rate(self) -> float:
        return self.tasks / self.run.wall if self.run.wall > 0 else float("nan")

    @property
    def report_rate(self) -> Optional[float]:
        w = self.scan.window if self.scan else None
        return self.tasks / w if w else None

    @property
    def sched_rate(self) -> Optional[float]:
        """Tasks per second from the scheduling start to the exit."""
        if self.sched_since_spawn is None:
            return None
        d = self.run.wall - self.sched_since_spawn
        return self.tasks / d if d > 0 else None

    def check(self) -> list[str]:
        """Correctness problems ([] = all good): exit status, stray processes, children lost
        (the governor's log), final_status.json counts, jobs.report lines."""
        bad = []
        r = self.run
        if r.timed_out:
            bad.append("TIMEOUT")
        elif r.killed:
            bad.append(f"stopped: {r.stop_reason}")
        elif r.returncode != 0:
            bad.append(f"exit {r.returncode}")
        if r.leftovers:
            bad.append(f"{r.leftovers} stray process(es)")
        if self.lost or self.restarts:
            # no fault is injected: a lost child is a malfunction even if the counts end right
            bad.append(f"{self.lost} \"child lost\" / {self.restarts} \"starting child again\" log lines")
        if self.final is None:
            bad.append("no final_status.json")
        else:
            it = self.final.get("IterationStats", {})
            js = self.final.get("JobStats", {})
            if it.get("FinishedIterations") != self.tasks:
                bad.append(f"FinishedIterations {it.get('FinishedIterations')} != {self.tasks}")
            if it.get("FailedIterations"):
                bad.append(f"FailedIterations {it.get('FailedIterations')}")
            if js.get("FinishedJobs") != self.jobs:
                bad.append(f"FinishedJobs {js.get('FinishedJobs')} != {self.jobs}")
        s = self.scan
        if s is None:
            bad.append("no jobs.report")
        else:
            if s.lines != self.tasks + self.jobs:
                bad.append(f"jobs.report {s.lines:,} lines != tasks + jobs = {self.tasks + self.jobs:,} "
                           f"({s.iter_lines:,} iteration, {s.job_lines:,} job lines)")
            if s.unique_iters != s.iter_lines:
                bad.append(f"{s.iter_lines - s.unique_iters:,} duplicated iteration lines")
            if s.not_succeeded:
                bad.append(f"{s.not_succeeded:,} iterations not SUCCEED")
            if s.bad_lines:
                bad.append(f"{s.bad_lines} unparsable lines")
        return bad


def _log_epoch(stamp: str) -> Optional[float]:
    try:
        return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except ValueError:
        return None


def inspect(out: Outcome, wd: str, governor: bool) -> None:
    """Fill ``out`` from the service directories in ``wd``."""
    try:
        dirs = [os.path.join(wd, d) for d in os.listdir(wd) if d.startswith(SERVICE_PREFIX)]
    except OSError:
        dirs = []
    out.child_dirs = sorted(d for d in dirs if os.path.basename(d).startswith(CHILD_PREFIX))
    mine = [d for d in dirs if d not in out.child_dirs]
    if not mine:
        out.problems.append("no service directory")
        return
    mine.sort(key=os.path.getmtime, reverse=True)
    sdir = out.service_dir = mine[0]
    fs = os.path.join(sdir, "final_status.json")
    if os.path.exists(fs):
        try:
            with open(fs, "rb") as f:
                out.final = orjson.loads(f.read())
        except (OSError, orjson.JSONDecodeError) as exc:
            out.problems.append(f"final_status.json unreadable: {exc}")
    out.scan = scan_report(os.path.join(sdir, "jobs.report"))
    # service.log: the scheduling start, and anything that looks wrong
    try:
        with open(os.path.join(sdir, "service.log"), "r", errors="replace") as f:
            for line in f:
                line = line.rstrip("\n")
                m = SCHED_RE.match(line)
                if m and out.sched_after is None:
                    out.sched_after = float(m.group(4))
                    out.sched_what = f"{m.group(2)} {m.group(3)}"
                    ep = _log_epoch(m.group(1))
                    if ep is not None:
                        out.sched_since_spawn = ep - out.spawn_epoch
                    continue
                m = FINISHED_RE.match(line)
                if m:
                    ep = _log_epoch(m.group(1))
                    if ep is not None:
                        out.finished_since_spawn = ep - out.spawn_epoch
                out.lost += bool(LOST_RE.search(line))
                out.restarts += bool(RESTART_RE.search(line))
                body = line.split(": ", 1)[-1]
                if PROBLEM_RE.search(body) and not body.startswith("service arguments"):
                    out.problems.append(f"{os.path.basename(sdir)}/service.log: {line[:300]}")
    except OSError:
        out.problems.append("no service.log")
    if governor:
        # the children's stdout/stderr and their own logs
        try:
            names = sorted(n for n in os.listdir(sdir) if n.startswith("partition-") and n.endswith(".log"))
        except OSError:
            names = []
        for n in names:
            p = os.path.join(sdir, n)
            if os.path.getsize(p):
                with open(p, "r", errors="replace") as f:
                    tail = f.read()[-1500:].strip().splitlines()[-6:]
                out.problems.append(f"{n} ({os.path.getsize(p)} B): " + " | ".join(tail))
        for cd in out.child_dirs:
            p = os.path.join(cd, "service.log")
            try:
                with open(p, "r", errors="replace") as f:
                    for line in f:
                        body = line.rstrip("\n").split(": ", 1)[-1]
                        if PROBLEM_RE.search(body) and not body.startswith("service arguments"):
                            out.problems.append(f"{os.path.basename(cd)}/service.log: {line.strip()[:300]}")
            except OSError:
                out.problems.append(f"{os.path.basename(cd)}: no service.log")
    # the governor's own CPU when scheduling started (from the samples)
    if out.sched_since_spawn is not None and out.cpu_samples:
        before = [c for t, c in out.cpu_samples if t <= out.sched_since_spawn]
        if before:
            out.cpu_at_sched = before[-1]


class CountVerdict(bl.Verdict):
    """A verdict whose figure is a count."""

    def value_str(self) -> str:
        return "-" if self.value is None else f"{self.value:.0f}"


def cpu_recorder(samples: list) -> bl.Stopper:
    """A stopper that never stops: it records (t, own CPU s) of the service
    process at every sample (psutil's view of the same /proc figures)."""
    def rec(run: bl.ServiceRun, s: bl.Sample, ps, kids) -> Optional[str]:
        pt = bl.proc_times(ps.pid)
        if pt is not None:
            samples.append((s.t, pt.own))
        return None
    return rec


# --------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.service = bl.resolve_service(args.service)
        self.governor = (bl.resolve_service(args.governor_cmd, "qcg-governor") if args.governor_cmd
                         else self.service + ["--governor"])
        self.verdicts: list[bl.Verdict] = []
        self.passfail: list[str] = []

    # ---------------------------------------------------------------- utils
    def record(self, v: bl.Verdict, details: str = "") -> None:
        self.verdicts.append(v)
        print(v.line(), flush=True)
        load = os.getloadavg()[0]
        details = f"{details}\nloadavg {load:.2f}" if details else f"loadavg {load:.2f}"
        for line in details.splitlines():
            print("    " + line, flush=True)

    def run(self, name: str, governor: bool, requests: list, nodes: str, tasks: int, jobs: int,
            extra=(), track_tree: bool = False) -> Outcome:
        cmd = self.governor if governor else self.service
        with bl.temp_workdir(prefix=f"qcgbench-{name}-", keep=self.args.keep) as wd:
            reqfile = bl.write_requests(os.path.join(wd, "reqs.json"), requests)
            argv = bl.service_argv(cmd, reqfile, wd, nodes, "info", extra)
            samples: list = []
            bl.reap_zombies()
            spawn = time.time()
            run = bl.run_service(argv, wd, timeout=self.args.timeout, sample_interval=self.args.sample,
                                 track_tree=track_tree, stopper=cpu_recorder(samples))
            out = Outcome(run, tasks, jobs, spawn, cpu_samples=samples)
            inspect(out, wd, governor)
            bad = out.check()
            if bad or out.problems or run.returncode != 0:
                self.diagnose(out, bad)
            if self.args.keep:
                print(f"    (kept {wd})", flush=True)
        return out

    def diagnose(self, out: Outcome, bad: list) -> None:
        r = out.run
        if bad:
            print(f"    ! {'; '.join(bad)}", flush=True)
        if r.returncode != 0 or r.timed_out:
            print("    ! output tail:\n" + _indent(r.output_tail(), 6), flush=True)
        if r.leftovers:
            print("    ! stray: " + "; ".join(c[:100] for c in r.leftover_cmds[:5]), flush=True)
        # suspicious log lines, grouped by kind (digits and times folded): count, first example
        kinds: dict = {}
        for p in out.problems:
            key = re.sub(r"\d+(\.\d+)?", "N", p.split(": ", 1)[0] + ": " + p.split(": ", 2)[-1])
            kinds.setdefault(key, []).append(p)
        for key, ps in sorted(kinds.items(), key=lambda kv: out.problems.index(kv[1][0]))[:15]:
            print(f"    ! {len(ps)} x {ps[0]}", flush=True)
        if len(kinds) > 15:
            print(f"    ! ... {len(kinds) - 15} more kinds of log lines", flush=True)
        if bad and out.service_dir:
            try:
                with open(os.path.join(out.service_dir, "service.log"), "r", errors="replace") as f:
                    tail = f.read().splitlines()[-12:]
                print("    ! governor/service service.log tail:\n"
                      + _indent("\n".join(x[:300] for x in tail), 6), flush=True)
            except OSError:
                pass

    @staticmethod
    def split_jobs(tasks: int, jobs: int, prefix: str) -> list[dict]:
        jobs = max(1, min(jobs, tasks))
        base, extra = divmod(tasks, jobs)
        return [bl.job(f"{prefix}{i}", "/bin/true", iterations=base + (1 if i < extra else 0))
                for i in range(jobs)]

    # ---------------------------------------------------------------- scale
    def case_scale(self) -> None:
        a = self.args
        nodes = bl.nodes_spec(a.nodes, a.cores)
        children = -(-a.nodes // a.partition_nodes)
        jobs = self.split_jobs(a.tasks, a.jobs, "j")
        reqs = [bl.submit_req(jobs), bl.finish_req()]
        print(f"scale: governor over {a.nodes:,} nodes x {a.cores} cores = {a.nodes * a.cores:,} cores, "
              f"--partition-nodes {a.partition_nodes} ({children} children), --fake-launch, "
              f"{a.tasks:,} tasks in {len(jobs)} jobs", flush=True)
        out = self.run("scale", True, reqs, nodes, a.tasks, len(jobs),
                       extra=["--partition-nodes", str(a.partition_nodes), "--fake-launch"],
                       track_tree=a.track_tree)
        r = out.run
        bad = out.check()
        rate = out.wall_rate
        ok = not r.timed_out and rate >= SCALE_TARGET
        lines = [f"wall {r.wall:.2f} s from the spawn of the governor to its exit, exit {r.returncode}"
                 + (f"; its \"finished\" log line {out.finished_since_spawn:.2f} s after the spawn "
                    f"({r.wall - out.finished_since_spawn:.2f} s before the exit)"
                    if out.finished_since_spawn is not None else "")]
        if out.sched_after is not None:
            lines.append(f"scheduling starts {out.sched_since_spawn:.2f} s after the spawn "
                         f"(log: \"{out.sched_what} after {out.sched_after:.2f} s\"); "
                         f"from then to the exit {r.wall - out.sched_since_spawn:.2f} s = "
                         f"{out.sched_rate:,.0f} tasks/s")
        else:
            lines.append("no \"scheduling starts\" line in the governor's service.log")
        if out.report_rate:
            lines.append(f"jobs.report: first EXECUTING -> last end {out.scan.window:.2f} s = "
                         f"{out.report_rate:,.0f} tasks/s")
        us = r.own_cpu / a.tasks * 1e6
        lines.append(f"governor own CPU {r.own_cpu:.2f} s ({r.own_user:.2f}u+{r.own_sys:.2f}s) = {us:.2f} us/task"
                     + (f"; of which {out.cpu_at_sched:.2f} s before scheduling started, "
                        f"{(r.own_cpu - out.cpu_at_sched) / a.tasks * 1e6:.2f} us/task after"
                        if out.cpu_at_sched is not None else ""))
        lines.append(f"CPU of the governor + its waited-for children {r.total_cpu:.2f} s = "
                     f"{r.total_cpu / a.tasks * 1e6:.2f} us/task ({os.cpu_count()} CPUs: at most "
                     f"{(os.cpu_count() or 1) * r.wall:.0f} CPU s)")
        lines.append(f"governor peak RSS {bl.fmt_bytes(r.peak_rss)} ({len(r.samples)} samples every "
                     f"{a.sample:g} s)" + (f"; whole tree peak {bl.fmt_bytes(r.peak_tree_rss)}"
                                           if a.track_tree else ""))
        lines.append(f"children: {len(out.child_dirs)} service dirs; governor log: {out.lost} \"child lost\", "
                     f"{out.restarts} \"starting child again\" lines; {r.leftovers} stray process(es) "
                     f"after the governor's exit")
        self.record(bl.Verdict("scale", None if r.timed_out else rate, "tasks/s", f">= {SCALE_TARGET:,.0f}",
                               None, ok, "" if not bad else "see scale-check"), "\n".join(lines))
        details = []
        if out.scan:
            sc = out.scan
            details.append(f"jobs.report of the governor: {sc.lines:,} lines ({sc.iter_lines:,} iterations, "
                           f"{sc.unique_iters:,} distinct, {sc.not_succeeded} not SUCCEED, {sc.job_lines} jobs), "
                           f"expected {a.tasks + len(jobs):,}")
        it = (out.final or {}).get("IterationStats", {})
        details.append(f"final_status.json: FinishedIterations {it.get('FinishedIterations')} (expected "
                       f"{a.tasks:,}), FailedIterations {it.get('FailedIterations')}")
        self.record(CountVerdict("scale-check", len(bad), "problems", "0", None, not bad,
                               "; ".join(bad)), "\n".join(details))
        self.passfail.append(f"scale: {'PASS' if ok else 'FAIL'} ({rate:,.0f} tasks/s, target >= "
                             f"{SCALE_TARGET:,.0f})")
        self.passfail.append(f"scale correctness: {'PASS' if not bad else 'FAIL (' + '; '.join(bad) + ')'}")
        print("    " + "\n    ".join(self.passfail[-2:]), flush=True)

    # ---------------------------------------------------------------- real
    def case_real(self) -> None:
        a = self.args
        nodes = a.real_nodes
        ncores = sum(int(x.split(":")[-1]) for x in nodes.split(","))
        nnodes = len(nodes.split(","))
        children = -(-nnodes // a.real_partition_nodes)
        n = a.real_tasks
        jobs = self.split_jobs(n, a.real_jobs, "t")
        reqs = [bl.submit_req(jobs), bl.finish_req()]
        print(f"real: {n:,} x /bin/true in {len(jobs)} job(s) on --nodes {nodes} ({ncores} virtual cores, "
              f"{os.cpu_count()} CPUs); governor with --partition-nodes {a.real_partition_nodes} "
              f"({children} children) vs one manager{' ' + ' '.join(a.manager_arg) if a.manager_arg else ''}; "
              f"{a.repeat} alternating pairs", flush=True)
        raw = bl.raw_spawn_rate(n, ncores)
        print(f"    raw posix_spawn loop, {ncores} in flight: {raw.rate:,.0f} tasks/s "
              f"({n:,} in {raw.seconds:.2f} s); loadavg {os.getloadavg()[0]:.2f}", flush=True)
        pairs = []
        extra_gov = ["--partition-nodes", str(a.real_partition_nodes)]
        for i in range(a.repeat):
            raw_i = None
            if a.raw_each:
                raw_i = bl.raw_spawn_rate(n, ncores).rate if i else raw.rate
                print(f"    [pair {i + 1}] raw {raw_i:,.0f} tasks/s", flush=True)
            order = ("gov", "mgr") if i % 2 == 0 else ("mgr", "gov")
            res = {}
            for who in order:
                if who == "gov":
                    res[who] = self.run(f"real-gov{i}", True, reqs, nodes, n, len(jobs), extra=extra_gov)
                else:
                    res[who] = self.run(f"real-mgr{i}", False, reqs, nodes, n, len(jobs), extra=a.manager_arg)
                o = res[who]
                print(f"    [pair {i + 1}] {'governor' if who == 'gov' else 'manager '}: "
                      f"{_rate(o.report_rate)} tasks/s in the task window ({_sec(o.scan.window if o.scan else None)}), "
                      f"wall {o.run.wall:.2f} s = {o.wall_rate:,.0f} tasks/s with start-up, "
                      f"scheduling starts at {_sec(o.sched_since_spawn)}; own CPU {o.run.own_cpu:.2f} s, "
                      f"with waited-for descendants {o.run.total_cpu:.2f} s; "
                      + (f"{o.lost} child lost, {o.restarts} started again; " if who == "gov" else "")
                      + f"{'OK' if not o.check() else 'BAD: ' + '; '.join(o.check())}; "
                      f"loadavg {os.getloadavg()[0]:.2f}", flush=True)
            g, m = res["gov"], res["mgr"]
            if g.report_rate and m.report_rate:
                print(f"    [pair {i + 1}] governor / manager {g.report_rate / m.report_rate:.3f} (task window), "
                      f"{g.wall_rate / m.wall_rate:.3f} (wall)"
                      + (f"; vs paired raw: governor {g.report_rate / raw_i:.2f}, manager "
                         f"{m.report_rate / raw_i:.2f}" if raw_i else ""), flush=True)
            pairs.append((g, m, raw_i))
        good = [(g, m) for g, m, _ in pairs if g.report_rate and m.report_rate]
        ratios = [g.report_rate / m.report_rate for g, m in good]
        wall_ratios = [g.wall_rate / m.wall_rate for g, m in good]
        all_ok = all(not g.check() and not m.check() for g, m, _ in pairs)
        med = statistics.median(ratios) if ratios else None
        ok = med is not None and med >= REAL_TARGET

        def med_of(xs):
            xs = [x for x in xs if x]
            return statistics.median(xs) if xs else None

        g_rate = med_of([g.report_rate for g, _, _ in pairs])
        m_rate = med_of([m.report_rate for _, m, _ in pairs])
        g_wall = med_of([g.wall_rate for g, _, _ in pairs])
        m_wall = med_of([m.wall_rate for _, m, _ in pairs])
        details = [
            f"task-window rates, median: governor {_rate(g_rate)}, manager {_rate(m_rate)} tasks/s; "
            f"ratio per pair {', '.join(f'{x:.3f}' for x in ratios)}",
            f"wall-clock rates with start-up, median: governor {_rate(g_wall)}, manager {_rate(m_wall)} tasks/s; "
            f"ratio per pair {', '.join(f'{x:.3f}' for x in wall_ratios)} (median "
            f"{statistics.median(wall_ratios) if wall_ratios else float('nan'):.3f})",
            f"vs raw loop {raw.rate:,.0f} tasks/s: governor {(g_rate or 0) / raw.rate:.2f}, "
            f"manager {(m_rate or 0) / raw.rate:.2f}",
        ]
        self.record(bl.Verdict("real", med, "gov/mgr", f">= {REAL_TARGET:.2f}", None, ok,
                               f"median of {len(ratios)} pairs"), "\n".join(details))
        problems = [f"{who} run {i + 1}: {'; '.join(o.check())}"
                    for i, (g, m, _) in enumerate(pairs) for who, o in (("governor", g), ("manager", m))
                    if o.check()]
        self.record(CountVerdict("real-check", len(problems), "problems", "0", None, not problems,
                               " | ".join(problems)),
                    f"every run: exit 0, no stray process, jobs.report tasks + jobs lines, every iteration "
                    f"once and SUCCEED, FinishedIterations == tasks ({2 * len(pairs)} runs)")
        self.passfail.append(f"real: {'PASS' if ok else 'FAIL'} (median ratio "
                             f"{'-' if med is None else f'{med:.3f}'}, target >= {REAL_TARGET:.2f})")
        self.passfail.append(f"real correctness: {'PASS' if all_ok else 'FAIL (' + ' | '.join(problems) + ')'}")
        print("    " + "\n    ".join(self.passfail[-2:]), flush=True)

    # ---------------------------------------------------------------- main
    def main(self, cases: list[str]) -> None:
        print(f"governor: {' '.join(self.governor)}")
        print(f"manager:  {' '.join(self.service)}")
        print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}; started {time.strftime('%F %T')}")
        print(f"package: {package_version()}")
        bl.print_load()
        bl.run_cases(self, cases, lambda name, exc: self.passfail.append(f"{name}: FAIL (error: {exc!r})"))
        print(bl.verdict_table(self.verdicts))
        print(f"package at the end: {package_version()}; ended {time.strftime('%F %T')}")
        for line in self.passfail:
            print(line)


def package_version() -> str:
    """Where qcg_hier is imported from and, in a git work tree, its commit (the
    code under test may change while a long benchmark runs)."""
    import subprocess
    try:
        import qcg_hier
    except ImportError:
        return "qcg_hier not importable"
    where = os.path.dirname(os.path.abspath(qcg_hier.__file__))
    desc = f"qcg_hier {getattr(qcg_hier, '__version__', '?')} from {where}"
    try:
        head = subprocess.run(["git", "-C", where, "log", "-1", "--format=%h %cd", "--date=format:%F %T"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if head:
            desc += f", git {head}" + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return desc


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())


def _rate(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _sec(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f} s"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", choices=["scale", "real", "all"], default="all", help="which case (default all)")
    ap.add_argument("--service", default=None, help="manager command (default: qcg-hier-service on PATH)")
    ap.add_argument("--governor-cmd", default=None,
                    help="governor command (default: the manager command with --governor)")
    g = ap.add_argument_group("scale")
    g.add_argument("--tasks", type=int, default=1_000_000, help="tasks (default 1,000,000)")
    g.add_argument("--jobs", type=int, default=100, help="jobs the tasks are split into (default 100)")
    g.add_argument("--nodes", type=int, default=1000, help="virtual nodes (default 1,000)")
    g.add_argument("--cores", type=int, default=128, help="cores per node (default 128)")
    g.add_argument("--partition-nodes", type=int, default=16, help="nodes per child (default 16)")
    g.add_argument("--track-tree", action="store_true",
                   help="also sample the RSS of the whole process tree (costs CPU on a small machine)")
    g = ap.add_argument_group("real")
    g.add_argument("--real-tasks", type=int, default=20_000, help="/bin/true tasks (default 20,000)")
    g.add_argument("--real-jobs", type=int, default=1, help="jobs the tasks are split into (default 1)")
    g.add_argument("--real-nodes", default="8,8,8,8", help="--nodes of both services (default 8,8,8,8)")
    g.add_argument("--real-partition-nodes", type=int, default=1, help="nodes per child (default 1)")
    g.add_argument("--repeat", type=int, default=3, help="alternating governor/manager pairs (default 3)")
    g.add_argument("--manager-arg", action="append", default=[], metavar="ARG",
                   help="one more argument for the single manager (repeatable), e.g. --manager-arg=--local-agents=1 "
                        "(one agent, as each child has here)")
    g.add_argument("--raw-each", action="store_true",
                   help="re-measure the raw posix_spawn loop before every pair (shared machine)")
    ap.add_argument("--sample", type=float, default=0.2, help="RSS / CPU sampling interval, s (default 0.2)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="per service run timeout, s (default 1800)")
    ap.add_argument("--keep", action="store_true", help="keep the working dirs")
    args = ap.parse_args(argv)
    for name in ("tasks", "jobs", "nodes", "cores", "partition_nodes", "real_tasks", "real_jobs",
                 "real_partition_nodes", "repeat"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cases = CASES if args.case == "all" else [args.case]
    return bl.run_bench(Bench, args, cases)


if __name__ == "__main__":
    sys.exit(main())
