#!/usr/bin/env python3
"""Throughput / latency / memory benchmark of a QCG-PilotJob-compatible
service (ours, qcg-hier, or upstream 0.14.2) through the file interface.

This is not a test: it prints figures and exits 0.

    python scripts/bench_manager.py [--service CMD] [--only NAME,...] [--quick]

--service   the service command (default: ``qcg-hier-service`` on PATH, i.e.
            ours); e.g. ``/opt/upstream-qcg/bin/qcg-pm-service`` for upstream.
--only      a comma-separated subset of the cases below.
--quick     smaller sizes (targets are scaled where they are absolute).
--pairs N   N runs of each throughput case, each between two raw loops of the same size,
            its ratio taken to their mean; N chain500 runs; the median is shown (default 3).
--gate S    gate duration of the memory cases; --keep keeps the work dirs;
--timeout S per service run.
--service-arg A  one more argument for every service run (repeatable), e.g.
            ``--service-arg=--local-agents=1`` for our figures with a single agent.

Cases (each in a fresh temporary working dir, the service run as
``CMD --file-path F --wd WD --nodes ... --log warning``):

  raw       posix_spawn loop of /bin/true, 32 in flight: the denominator
  iter20k   1 job x 20,000 iterations of /bin/true on 8,8,8,8: tasks/s
  jobs5k    5,000 separate /bin/true jobs in one submit on 8,8,8,8: tasks/s
  empty     start and stop with only finishAfterAllTasksDone: seconds
  chain500  500 jobs, each after the previous one: seconds
  mem20k    RSS held per queued job (median RSS of the second half of the gate,
            when the submit has been parsed) for a gate ``sleep G`` + 20,000 jobs
            after it; the transient peak while parsing the request is printed too
  mem10M    RSS delta of 1 job x 10^7 iterations queued after a gate
  fakecpu   --fake-launch only: 200,000 iterations on 32,32,32,32: service
            CPU per task (minus the CPU of ``empty``)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib as bl  # noqa: E402

CASES = ["raw", "iter20k", "jobs5k", "empty", "chain500", "mem20k", "mem10M", "fakecpu"]

FULL = dict(raw=20000, iter=20000, jobs=5000, chain=500, mem_jobs=20000,
            mem_iters=10_000_000, fake_iters=200_000, gate=8.0, empty_runs=3)
QUICK = dict(raw=5000, iter=5000, jobs=1000, chain=100, mem_jobs=5000,
             mem_iters=1_000_000, fake_iters=20_000, gate=4.0, empty_runs=2)

NODES_8 = bl.nodes_spec(4, 8)
NODES_32 = bl.nodes_spec(4, 32)


class Bench:
    def __init__(self, args):
        self.args = args
        self.sizes = dict(QUICK if args.quick else FULL)
        if args.gate:
            self.sizes["gate"] = args.gate
        self.service = bl.resolve_service(args.service)
        self.fake = bl.service_has_option(self.service, "--fake-launch")
        self.verdicts: list[bl.Verdict] = []
        self.empty_cpu: float | None = None
        self.mem_baseline: bl.ServiceRun | None = None
        self._gate_seq = 0

    # ---------------------------------------------------------------- utils
    def record(self, v: bl.Verdict, details: str = "") -> None:
        self.verdicts.append(v)
        print(v.line(), flush=True)
        load = os.getloadavg()[0]
        details = f"{details}; loadavg {load:.2f}" if details else f"loadavg {load:.2f}"
        if details:
            for line in details.splitlines():
                print("    " + line, flush=True)

    def run(self, name: str, requests: list, nodes: str, *, extra=(), timeout=None,
            **kw) -> bl.ServiceRun:
        """Run the service on a generated request file in a fresh wd."""
        with bl.temp_workdir(prefix=f"qcgbench-{name}-", keep=self.args.keep) as wd:
            reqfile = bl.write_requests(os.path.join(wd, "reqs.json"), requests)
            argv = bl.service_argv(self.service, reqfile, wd, nodes, "warning",
                                   [*extra, *self.args.service_arg])
            run = bl.run_service(argv, wd, timeout=timeout or self.args.timeout, **kw)
            run.final = bl.final_counts(bl.read_final_status(wd))  # type: ignore[attr-defined]
            if self.args.keep:
                print(f"    (kept {wd})")
            if (run.returncode != 0 and not run.killed) or run.timed_out:
                print(f"    ! service exit {run.returncode}, {run.stop_reason or 'no stop'}; "
                      f"output tail:\n" + _indent(run.output_tail(), 6), flush=True)
            if run.leftovers:
                print(f"    ! {run.leftovers} stray process(es) killed after the run: "
                      + "; ".join(c[:100] for c in run.leftover_cmds[:5]))
        return run

    def gate_arg(self) -> str:
        # a unique argument so the gate's sleep is recognisable
        self._gate_seq += 1
        return f"{self.sizes['gate'] + self._gate_seq / 1000:.3f}"

    # ---------------------------------------------------------------- cases
    def case_raw(self) -> None:
        n = self.sizes["raw"]
        res = bl.raw_spawn_rate(n, 32)
        self.record(bl.Verdict("raw", res.rate, "tasks/s", note=f"{n} x /bin/true in {res.seconds:.2f} s"
                               + (f", {res.failures} failed" if res.failures else "")),
                    f"CPU per task: loop {_ms(res.own_cpu / n)}, tasks {_ms(res.children_cpu / n)}")

    def _throughput(self, name: str, requests: list, ntasks: int, target: float,
                    expect_jobs: int) -> None:
        """--pairs N service runs, each between two raw loops of the same size (N + 1 loops): a run's
        ratio is to the mean of the loops right before and right after it, and the figure is the run
        with the median ratio (the machine's speed drifts by tens of per cent within minutes)."""
        raws = [bl.raw_spawn_rate(ntasks, 32).rate]
        pairs = []
        for _ in range(self.args.pairs):
            run = self.run(name, requests, NODES_8)
            raws.append(bl.raw_spawn_rate(ntasks, 32).rate)
            raw = (raws[-2] + raws[-1]) / 2
            pairs.append((ntasks / run.wall / raw, raw, run,
                          f"; raw before/after {raws[-2]:,.0f}/{raws[-1]:,.0f} tasks/s"))
        ratio, raw, run, raw_note = sorted(pairs, key=lambda p: p[0])[len(pairs) // 2]
        rate: float | None = ntasks / run.wall
        ok = all(p[2].ok for p in pairs) and ratio >= target
        if run.timed_out:
            rate = ratio = None     # no meaningful figure
        notes = _final_note(run, expect_jobs)
        details = (f"wall {run.wall:.2f} s, exit {run.returncode}; CPU per task: service own "
                   f"{_ms(run.own_cpu / ntasks)}, with waited-for descendants "
                   f"{_ms(run.total_cpu / ntasks)} (own {run.own_user:.2f}u+{run.own_sys:.2f}s, "
                   f"total {run.total_user:.2f}u+{run.total_sys:.2f}s){raw_note}")
        if len(pairs) > 1:
            details += "\nratios of the pairs: " + ", ".join(f"{p[0]:.2f}" for p in pairs) + " (median shown)"
        self.record(bl.Verdict(name, rate, "tasks/s", f">= {target:.2f}", ratio, ok, notes), details)

    def case_iter20k(self) -> None:
        n = self.sizes["iter"]
        reqs = [bl.submit_req([bl.job("t", "/bin/true", iterations=n)]), bl.finish_req()]
        self._throughput("iter20k", reqs, n, 0.85, 1)

    def case_jobs5k(self) -> None:
        n = self.sizes["jobs"]
        reqs = [bl.submit_req(bl.many_jobs(n)), bl.finish_req()]
        self._throughput("jobs5k", reqs, n, 0.80, n)

    def _empty_runs(self) -> list[bl.ServiceRun]:
        return [self.run("empty", [bl.finish_req()], NODES_8, timeout=120)
                for _ in range(self.sizes["empty_runs"])]

    def case_empty(self) -> None:
        runs = self._empty_runs()
        walls = [r.wall for r in runs]
        self.empty_cpu = statistics.mean(r.total_cpu for r in runs)
        med = statistics.median(walls)
        ok = all(r.ok for r in runs) and med < 0.3
        details = (f"walls {', '.join(f'{w:.3f}' for w in walls)} s (median shown); CPU "
                   f"own {statistics.mean(r.own_cpu for r in runs):.3f} s, total {self.empty_cpu:.3f} s")
        self.record(bl.Verdict("empty", med, "s", "< 0.3 s", None, ok), details)

    def case_chain500(self) -> None:
        n = self.sizes["chain"]
        target = 1.0 * n / 500
        runs = [self.run("chain500", [bl.submit_req(bl.chain_jobs(n)), bl.finish_req()], NODES_8)
                for _ in range(self.args.pairs)]
        run = sorted(runs, key=lambda r: r.wall)[len(runs) // 2]
        ok = all(r.ok for r in runs) and run.wall < target
        details = (f"{n} jobs, {run.wall / n * 1000:.2f} ms per link; CPU own {run.own_cpu:.2f} s, "
                   f"total {run.total_cpu:.2f} s")
        if len(runs) > 1:
            details += "; walls " + ", ".join(f"{r.wall:.2f}" for r in runs) + " s (median shown)"
        self.record(bl.Verdict("chain500", None if run.timed_out else run.wall, "s", f"< {target:g} s", None, ok,
                               _final_note(run, n)), details)

    # memory -----------------------------------------------------------------
    def _mem_run(self, name: str, queued: list, cap: float) -> tuple[bl.ServiceRun, str]:
        gate_arg = self.gate_arg()
        jobs = [bl.job("gate", "/bin/sleep", [gate_arg])] + queued
        stopper = bl.gate_stopper(gate_arg, cap=cap)
        run = self.run(name, [bl.submit_req(jobs), bl.finish_req()], NODES_8,
                       sample_interval=0.05, track_tree=True, stopper=stopper,
                       timeout=cap + 30)
        return run, _gate_note(run)

    def ensure_mem_baseline(self) -> bl.ServiceRun:
        if self.mem_baseline is None:
            run, note = self._mem_run("membase", [], cap=self.sizes["gate"] + 60)
            self.mem_baseline = run
            print(f"    baseline (gate only): peak RSS service {bl.fmt_bytes(run.peak_rss)}, "
                  f"tree {bl.fmt_bytes(run.peak_tree_rss)}; {note}", flush=True)
        return self.mem_baseline

    def _mem_details(self, run: bl.ServiceRun, base: bl.ServiceRun, note: str) -> str:
        t_peak = run.peak_time
        return (f"held RSS service {bl.fmt_bytes(run.held_rss)} (baseline {bl.fmt_bytes(base.held_rss)}); "
                f"peak RSS service {bl.fmt_bytes(run.peak_rss)} (baseline "
                f"{bl.fmt_bytes(base.peak_rss)}), reached at {t_peak:.2f} s; process tree peak "
                f"{bl.fmt_bytes(run.peak_tree_rss)} (baseline {bl.fmt_bytes(base.peak_tree_rss)}); "
                f"{note}; {len(run.window())} samples")

    def case_mem20k(self) -> None:
        n = self.sizes["mem_jobs"]
        base = self.ensure_mem_baseline()
        run, note = self._mem_run("mem20k", bl.many_jobs(n, after=["gate"]),
                                  cap=self.sizes["gate"] + 60)
        # memory the queued jobs hold; the transient peak of parsing the request is printed too
        per_job = (run.held_rss - base.held_rss) / n
        peak_per_job = (run.peak_rss - base.peak_rss) / n
        complete = "gate_end" in run.marks
        ok = complete and per_job <= 1024
        print(f"    mem20k: transient peak while parsing the submit: {peak_per_job:.0f} B/job", flush=True)
        self.record(bl.Verdict("mem20k", per_job, "B/job", "<= 1024 B", None, ok,
                               "" if complete else "gate did not finish: incomplete"),
                    self._mem_details(run, base, note))

    def case_mem10M(self) -> None:
        n = self.sizes["mem_iters"]
        target = 50 * 1024 * 1024 * n / 10_000_000
        base = self.ensure_mem_baseline()
        run, note = self._mem_run("mem10M", [bl.job("big", "/bin/true", iterations=n, after=["gate"])],
                                  cap=60.0)
        delta = max(run.peak_rss - base.peak_rss, run.held_rss - base.held_rss)
        complete = "gate_end" in run.marks
        ok = complete and delta < target
        self.record(bl.Verdict("mem10M", delta / 2**20, "MB", f"< {target / 2**20:g} MB", None, ok,
                               f"{n:,} iterations" + ("" if complete else
                                                      "; gate did not finish within the 60 s cap: "
                                                      "figure is what was seen")),
                    self._mem_details(run, base, note))

    # fake launch --------------------------------------------------------------
    def case_fakecpu(self) -> None:
        if not self.fake:
            self.record(bl.Verdict("fakecpu", None, "us/task", "<= 30 us", None, None,
                                   "skipped: service has no --fake-launch"))
            return
        if self.empty_cpu is None:
            runs = self._empty_runs()
            self.empty_cpu = statistics.mean(r.total_cpu for r in runs)
        n = self.sizes["fake_iters"]
        reqs = [bl.submit_req([bl.job("t", "/bin/true", iterations=n)]), bl.finish_req()]
        run = self.run("fakecpu", reqs, NODES_32, extra=["--fake-launch"])
        us = (run.total_cpu - self.empty_cpu) / n * 1e6
        ok = run.ok and us <= 30
        details = (f"{n:,} iterations, wall {run.wall:.2f} s ({n / run.wall:,.0f} tasks/s); CPU total "
                   f"{run.total_cpu:.2f} s (own {run.own_cpu:.2f} s) minus empty {self.empty_cpu:.3f} s")
        self.record(bl.Verdict("fakecpu", None if run.timed_out else us, "us/task", "<= 30 us", None, ok, _final_note(run, 1)),
                    details)

    # ---------------------------------------------------------------- main
    def main(self, cases: list[str]) -> None:
        print(f"service: {' '.join(self.service)}  (--fake-launch: {'yes' if self.fake else 'no'})")
        print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}; "
              f"{'quick' if self.args.quick else 'full'} sizes; started {time.strftime('%F %T')}")
        bl.print_load(" (try --raw-each)")
        bl.run_cases(self, cases)
        print()
        print(bl.verdict_table(self.verdicts))


def _ms(sec: float) -> str:
    return f"{sec * 1000:.3f} ms"


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())


def _final_note(run: bl.ServiceRun, expect_jobs: int) -> str:
    notes = []
    if run.timed_out:
        notes.append("TIMEOUT")
    elif run.returncode != 0:
        notes.append(f"exit {run.returncode}")
    fin = getattr(run, "final", None)
    if fin is None:
        notes.append("no final_status.json")
    else:
        if fin.get("jobs_finished") != expect_jobs:
            notes.append(f"finished jobs {fin.get('jobs_finished')}/{expect_jobs}")
        if fin.get("jobs_failed") or fin.get("iters_failed"):
            notes.append(f"failed jobs {fin.get('jobs_failed')}, iterations {fin.get('iters_failed')}")
    return "; ".join(notes)


def _gate_note(run: bl.ServiceRun) -> str:
    m = run.marks
    parts = []
    parts.append(f"gate started {m['gate_start']:.2f} s" if "gate_start" in m else "gate never seen")
    if "gate_end" in m:
        parts.append(f"ended {m['gate_end']:.2f} s")
    parts.append(f"stopped: {run.stop_reason or 'service exited'} at {run.wall:.2f} s")
    return ", ".join(parts)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--service", default=None,
                    help="service command (default: qcg-hier-service on PATH)")
    ap.add_argument("--only", default=None, help="comma-separated cases: " + ",".join(CASES))
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    ap.add_argument("--gate", type=float, default=None,
                    help="gate job duration for the memory cases (default 8 s, quick 4 s)")
    ap.add_argument("--timeout", type=float, default=900.0,
                    help="per service run timeout in seconds (default 900)")
    ap.add_argument("--keep", action="store_true", help="keep the working dirs")
    ap.add_argument("--pairs", type=int, default=3,
                    help="run each throughput case (each between two raw loops of its size) and "
                         "chain500 this many times and report the median (default 3)")
    ap.add_argument("--service-arg", action="append", default=[], metavar="ARG",
                    help="one more argument for every service run (repeatable), e.g. "
                         "--service-arg=--local-agents=1")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cases = CASES
    if args.only:
        wanted = [c.strip() for c in args.only.split(",") if c.strip()]
        lower = {c.lower(): c for c in CASES}
        bad = [c for c in wanted if c.lower() not in lower]
        if bad:
            print(f"unknown case(s): {', '.join(bad)}; known: {', '.join(CASES)}", file=sys.stderr)
            return 2
        cases = [lower[c.lower()] for c in wanted]
    return bl.run_bench(Bench, args, cases)


if __name__ == "__main__":
    sys.exit(main())
