#!/usr/bin/env python3
"""What the journal (`--resume`'s record) costs: 20,000 `/bin/true` iterations on --nodes 8,8,8,8
with the journal on and with `--no-journal`, measured in the same run.

This is not a test: it prints figures and exits 0 (1 if a run failed).

    python scripts/bench_journal.py [--rounds 3] [--iterations 20000] [--nodes 8,8,8,8] [--service CMD]

The two variants alternate (on, off, off, on, on, off, ...) so that a change in the machine's
load hits both alike and neither always runs first; each is run --rounds times and the median is taken. Printed per variant:
tasks/s (iterations / wall time of the whole service run, as scripts/bench_manager.py
counts), the service's own CPU per task, and for the journal its size and line count; then
the ratio on/off (target: at least 0.90, i.e. the journal costs at most 10 %).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib as bl  # noqa: E402

TARGET = 0.90


def one(service, n: int, nodes: str, journal: bool) -> dict:
    with bl.temp_workdir("qh-benchjournal-") as wd:
        reqfile = os.path.join(wd, "reqs.json")
        bl.write_requests(reqfile, [bl.submit_req([bl.job("t", "/bin/true", iterations=n)]), bl.finish_req()])
        svc_wd = os.path.join(wd, "run")
        extra = ["--id", "bench"] + ([] if journal else ["--no-journal"])
        run = bl.run_service(bl.service_argv(service, reqfile, svc_wd, nodes, extra=extra), wd, timeout=600)
        sdir = os.path.join(svc_wd, ".qcgpjm-service-bench")
        final = bl.read_final_status(svc_wd)
        path = os.path.join(sdir, "journal")
        size = os.path.getsize(path) if os.path.exists(path) else 0
        lines = 0
        if size:
            with open(path, "rb") as f:
                lines = f.read().count(b"\n")
        succeed = None
        if isinstance(final, dict):
            succeed = final.get("States", {}).get("SUCCEED")
        ok = run.returncode == 0 and not run.timed_out and (succeed is None or succeed == n)
        return {"rate": n / run.wall, "wall": run.wall, "cpu": run.own_user + run.own_sys, "size": size,
                "lines": lines, "ok": ok, "succeed": succeed, "rc": run.returncode}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iterations", type=int, default=20000)
    p.add_argument("--nodes", default="8,8,8,8")
    p.add_argument("--service", default=None, help="the service command (default: qcg-hier-service)")
    args = p.parse_args()
    service = bl.resolve_service(args.service)
    n = args.iterations
    print(f"journal cost: {n:,} x /bin/true on --nodes {args.nodes}, {args.rounds} rounds, alternating",
          flush=True)
    results = {True: [], False: []}
    failed = False
    for r in range(1, args.rounds + 1):
        for journal in ((True, False) if r % 2 else (False, True)):  # no variant always goes first
            res = one(service, n, args.nodes, journal)
            results[journal].append(res)
            failed |= not res["ok"]
            extra = f", journal {res['size'] / 1024:.1f} KiB in {res['lines']} lines" if journal else ""
            bad = "" if res["ok"] else f"  FAILED: exit {res['rc']}, SUCCEED {res['succeed']}"
            print(f"  round {r} journal {'on ' if journal else 'off'}: {res['rate']:8,.0f} tasks/s "
                  f"(wall {res['wall']:.2f} s, service CPU {res['cpu']:.2f} s{extra}){bad}", flush=True)
    med = {j: statistics.median(x["rate"] for x in results[j]) for j in results}
    cpu = {j: statistics.median(x["cpu"] for x in results[j]) for j in results}
    size = statistics.median(x["size"] for x in results[True])
    lines = statistics.median(x["lines"] for x in results[True])
    ratio = med[True] / med[False]
    print(f"journal on : {med[True]:8,.0f} tasks/s (median), service CPU {cpu[True] / n * 1e6:.1f} us/task")
    print(f"journal off: {med[False]:8,.0f} tasks/s (median), service CPU {cpu[False] / n * 1e6:.1f} us/task")
    print(f"ratio on/off: {ratio:.3f} (target >= {TARGET:.2f}: {'met' if ratio >= TARGET else 'NOT met'}); "
          f"CPU on/off {cpu[True] / cpu[False]:.3f}")
    print(f"journal size: {size / 1024:.1f} KiB, {lines:.0f} lines for {n:,} iterations "
          f"({size / n:.1f} bytes per iteration)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
