#!/usr/bin/env python3
"""qcg-pm-service inside Slurm allocations of the local test cluster (scripts/slurm-cluster.sh).

This is not a test: it prints figures and exits 0 (also when a case fails; the failure
is printed).

    python scripts/bench_slurm.py [--iters N] [--repeat R] [--only a,b] [--upstream CMD] [--upstream-cap S]
                                  [--agents-nodes 16] [--agents-runs 3] [--restart-shared] [--keep]

(a) throughput: one job of N (20,000) iterations of /bin/true
    * local mode, `--nodes 4,4,4,4` (16 slots);
    * in a 4-node allocation, `salloc -N4 --ntasks-per-node=4` (16 slots: one srun step
      of node agents);
    rate = N / wall time of the service process (inside salloc a small wrapper measures
    the service process alone, so the allocation's own cost is not counted; salloc's
    wall time is printed as well). --repeat (2) rounds, alternating local and allocation;
    the best run of each counts. Ratio allocation / local, target >= 0.80.
    If /opt/upstream-qcg/bin/qcg-pm-service exists, upstream 0.14.2 runs the same
    workload in the same kind of allocation, capped at --upstream-cap (300) s; what
    happens is reported (rate, or how far it got and why it stopped).
(b) agent start-up: the service in `salloc -N16` on a cluster of 16 virtual nodes x 4
    CPUs with a one-task request file; X of the "16 of 16 agents ready after X s" line
    of service.log (the time from the launcher's start, i.e. the agents' srun, to the
    last agent ready), median of --agents-runs. Also printed: the time from the first
    line of service.log to that line.
    By default this uses a PRIVATE second cluster (own state dir and ports, stopped
    afterwards), so the shared 4-node cluster other sessions use is not restarted.
    --restart-shared does what the plain procedure says instead: `slurm-cluster.sh
    start 16 4` on the shared cluster, then `start 4 4` to restore it.

All services run with `--log warning` in (a) (as scripts/bench_manager.py) and `--log info`
in (b) (the ready line is an info line). The machine has 2 cores: every figure
includes the Slurm daemons, srun and the agents competing for them.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import glob
import os
import re
import shutil
import statistics
import subprocess
import sys
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib as bl  # noqa: E402
import orjson  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(REPO, "scripts", "slurm-cluster.sh")
UPSTREAM = "/opt/upstream-qcg/bin/qcg-pm-service"
PRIVATE = {"QCG_SLURM_DIR": "/tmp/qcg-hier-slurm-bench16", "QCG_SLURM_CTLD_PORT": "16947",
           "QCG_SLURM_SLURMD_PORT": "17400"}

# runs the service and writes its own wall time (spawn to exit) and CPU: salloc's part is not counted
WRAPPER = r"""
import json, os, subprocess, sys, time
out, argv = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
p = subprocess.Popen(argv)
_, status, ru = os.wait4(p.pid, 0)
wall = time.perf_counter() - t0
rc = os.waitstatus_to_exitcode(status)
with open(out, "w") as f:
    json.dump({"wall": wall, "rc": rc, "cpu": ru.ru_utime + ru.ru_stime}, f)
sys.exit(rc if rc >= 0 else 128 - rc)
"""


# ------------------------------------------------------------------ cluster
@contextlib.contextmanager
def not_subreaper():
    """Slurm daemons started now must not be re-parented to us (benchlib makes this process a
    subreaper, and its orphan sweep would then kill the cluster)."""
    libc = ctypes.CDLL(None, use_errno=True)
    was = bl._subreaper_done
    libc.prctl(36, 0, 0, 0, 0)
    try:
        yield
    finally:
        if was:
            libc.prctl(36, 1, 0, 0, 0)


def cluster(*args, extra_env=None, timeout=240) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(extra_env or {})
    with not_subreaper():
        return subprocess.run(["bash", CLUSTER, *args], env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)


def slurm_conf(extra_env=None) -> str:
    out = cluster("env", extra_env=extra_env).stdout
    m = re.search(r"SLURM_CONF=(\S+)", out)
    if not m:
        raise RuntimeError(f"slurm-cluster.sh env printed no SLURM_CONF: {out!r}")
    return m.group(1)


def slurm_env(conf: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SRUN_", "SALLOC_", "SBATCH_"))}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env["SLURM_CONF"] = conf
    return env


def ensure_cluster(nodes: int, cpus: int, extra_env=None) -> str:
    proc = cluster("start", str(nodes), str(cpus), extra_env=extra_env)
    if proc.returncode != 0:
        raise RuntimeError(f"slurm-cluster.sh start {nodes} {cpus} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}")
    return slurm_conf(extra_env)


def scancel(name: str, conf: str) -> None:
    subprocess.run(["scancel", "--name", name], env=slurm_env(conf), capture_output=True, timeout=30)


# ------------------------------------------------------------------ runs
def our_service() -> list[str]:
    return bl.our_service()


def iter_requests(path: str, iters: int) -> None:
    bl.write_requests(path, [bl.submit_req([bl.job("t", "/bin/true", iterations=iters)]), bl.finish_req()])


def failed(wd: str) -> int:
    counts = bl.final_counts(bl.read_final_status(wd))
    return int(counts.get("iters_failed") or 0) if counts else 0


def succeeded(wd: str) -> int:
    """Finished iterations: from final_status.json, else by counting SUCCEED lines of jobs.report."""
    counts = bl.final_counts(bl.read_final_status(wd))
    if counts and counts.get("iters_finished") is not None:
        return int(counts["iters_finished"])
    n = 0
    for report in glob.glob(os.path.join(wd, ".qcgpjm-service-*", "jobs.report")):
        with open(report, "rb") as f:
            for line in f:
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(entry, dict) and ":" in str(entry.get("name")) and entry.get("state") == "SUCCEED":
                    n += 1
    return n


def run_local(service, iters: int, keep: bool) -> dict:
    with bl.temp_workdir("qcgbench-slurm-local-", keep) as base:
        req = os.path.join(base, "reqs.json")
        iter_requests(req, iters)
        wd = os.path.join(base, "wd")
        os.makedirs(wd)
        argv = bl.service_argv(service, req, wd, bl.nodes_spec(4, 4), log="warning")
        run = bl.run_service(argv, wd, timeout=600, env=slurm_env("/nonexistent"))
        done = succeeded(wd)
        return {"wall": run.wall, "rc": run.returncode, "done": done, "ok": run.ok and done == iters,
                "cpu": run.own_cpu, "tail": run.output_tail(), "leftovers": run.leftovers}


def run_in_allocation(service, iters: int, conf: str, cap: float, keep: bool, salloc_args, extra=(),
                      requests=None, log="warning", label="bench") -> dict:
    """The service under `salloc ...`; wall/CPU of the service process from the wrapper."""
    with bl.temp_workdir(f"qcgbench-slurm-{label}-", keep) as base:
        req = os.path.join(base, "reqs.json")
        if requests is None:
            iter_requests(req, iters)
        else:
            bl.write_requests(req, requests)
        wd = os.path.join(base, "wd")
        os.makedirs(wd)
        timing = os.path.join(base, "timing.json")
        name = f"qcgbench-{os.getpid()}-{label}"
        argv = (["salloc", "-Q", *salloc_args, "-J", name, sys.executable, "-c", WRAPPER, timing]
                + bl.service_argv(service, req, wd, None, log=log, extra=extra))
        run = bl.run_service(argv, wd, timeout=cap, env=slurm_env(conf))
        if run.killed:
            scancel(name, conf)
        result = {"salloc_wall": run.wall, "rc": run.returncode, "killed": run.killed, "reason": run.stop_reason,
                  "tail": run.output_tail(25), "leftovers": run.leftovers}
        try:
            with open(timing) as f:
                result.update(orjson.loads(f.read()))
        except (OSError, ValueError):
            result["wall"] = None
        result["done"] = succeeded(wd)
        result["failed"] = failed(wd)
        result["ok"] = not run.killed and run.returncode == 0 and (requests is not None or result["done"] == iters)
        logs = glob.glob(os.path.join(wd, ".qcgpjm-service-*", "service.log"))
        result["log"] = open(logs[0], errors="replace").read() if logs else ""
        aux = glob.glob(os.path.join(wd, ".qcgpjm*"))
        result["aux"] = sorted(os.listdir(aux[0])) if aux else []
        return result


def rate(iters, wall):
    return iters / wall if wall else None


def case_a(args) -> None:
    print(f"== (a) {args.iters:,} iterations of /bin/true, 16 slots", flush=True)
    conf = ensure_cluster(4, 4)
    service = our_service()
    locals_, allocs = [], []
    for i in range(args.repeat):  # alternated, so a burst of load from elsewhere hits both alike
        locals_.append(run_local(service, args.iters, args.keep))
        allocs.append(run_in_allocation(service, args.iters, conf, 600, args.keep, ["-N4", "--ntasks-per-node=4"],
                                        label=f"alloc{i}"))
        if args.repeat > 1:
            print(f"  round {i + 1}: local {locals_[-1]['wall']:.2f} s, allocation "
                  f"{allocs[-1].get('wall') or float('nan'):.2f} s", flush=True)
    # the best of each: the least disturbed by other load on the 2 cores
    local = min(locals_, key=lambda r: r["wall"] if r["ok"] else float("inf"))
    alloc = min(allocs, key=lambda r: r["wall"] if r["ok"] and r.get("wall") else float("inf"))
    r_local = rate(args.iters, local["wall"]) if local["ok"] else None
    r_alloc = rate(args.iters, alloc["wall"]) if alloc["ok"] and alloc.get("wall") else None
    print(f"local mode --nodes 4,4,4,4    : {local['wall']:.2f} s service wall, "
          f"{r_local or 0:,.0f} tasks/s, service CPU {local['cpu']:.1f} s"
          + ("" if local["ok"] else f"  FAILED rc={local['rc']} done={local['done']}\n{local['tail']}"))
    if alloc.get("wall"):
        print(f"allocation salloc -N4 x 4     : {alloc['wall']:.2f} s service wall "
              f"(salloc {alloc['salloc_wall']:.2f} s), {r_alloc or 0:,.0f} tasks/s"
              + ("" if alloc["ok"] else f"  FAILED rc={alloc['rc']} done={alloc['done']}\n{alloc['tail']}"))
    else:
        print(f"allocation salloc -N4 x 4     : FAILED rc={alloc['rc']} {alloc['reason']}\n{alloc['tail']}")
    m = re.search(r"(\d+) of (\d+) agents ready after ([\d.]+) s", alloc["log"])
    if m:
        print(f"  (agents: {m.group(0)})")
    if r_local and r_alloc:
        ratio = r_alloc / r_local
        verdict = bl.Verdict("allocation / local rate", r_alloc, "tasks/s", ">= 0.80", ratio, ratio >= 0.80)
        print(verdict.line())
    if os.path.exists(args.upstream):
        print(f"upstream {args.upstream} in salloc -N4 --ntasks-per-node=4, cap {args.upstream_cap:.0f} s:",
              flush=True)
        up = run_in_allocation([args.upstream], args.iters, conf, args.upstream_cap, args.keep,
                               ["-N4", "--ntasks-per-node=4"], label="upstream")
        ended = up["done"] + up["failed"]
        if not up["killed"] and up["rc"] == 0 and up.get("wall") and ended == args.iters:
            up_rate = rate(args.iters, up["wall"])
            print(f"  upstream 0.14.2             : {up['wall']:.2f} s service wall, {up_rate:,.0f} tasks/s "
                  f"(every iteration ended: {up['done']:,} SUCCEED, {up['failed']:,} FAILED); "
                  f"ours / upstream = {(r_alloc or 0) / up_rate:.1f}")
            if up["failed"] and (os.cpu_count() or 0) < 4:
                print(f"  why FAILED: upstream runs each task as `taskset -c <slot>` (binding slot i to CPU i);"
                      f" the virtual nodes claim 4 CPUs, this host has {os.cpu_count()}, so tasks on slots"
                      f" >= {os.cpu_count()} exit 1 (`taskset -c 2 /bin/true` fails here)")
        else:
            how = (f"stopped after {up['salloc_wall']:.0f} s ({up['reason']})" if up["killed"]
                   else f"exited {up['rc']} after {up['salloc_wall']:.1f} s")
            print(f"  upstream did not complete: {how}; of {args.iters:,} iterations {up['done']:,} SUCCEED, "
                  f"{up['failed']:,} FAILED" + (f" (~{ended / up['salloc_wall']:,.0f} ended/s)" if ended else ""))
            print("  files in its service dir: " + ", ".join(up["aux"]))
            tail = [line for line in up["log"].splitlines() if re.search(r"ERROR|rror|agent|launcher", line)][-8:]
            if tail:
                print("  service.log: \n    " + "\n    ".join(line[:300] for line in tail))
            if up["tail"].strip():
                print("  output tail:\n    " + "\n    ".join(up["tail"].splitlines()[-10:]))
    else:
        print(f"upstream: {args.upstream} not found, not run")


def case_b(args) -> None:
    n = args.agents_nodes
    extra_env = None if args.restart_shared else PRIVATE
    where = "the shared cluster" if args.restart_shared else f"a private cluster in {PRIVATE['QCG_SLURM_DIR']}"
    print(f"== (b) agents ready on {n} virtual nodes x 4 CPUs ({where}), median of {args.agents_runs}", flush=True)
    conf = ensure_cluster(n, 4, extra_env)
    xs, whole = [], []
    try:
        for i in range(args.agents_runs):
            res = run_in_allocation(our_service(), 1, conf, 120, args.keep, [f"-N{n}"], label=f"agents{i}",
                                    requests=[bl.submit_req([bl.job("one", "/bin/true")]), bl.finish_req()],
                                    log="info")
            m = re.search(r"^(\S+ \S+): (\d+) of (\d+) agents ready after ([\d.]+) s", res["log"], re.M)
            first = re.match(r"^(\S+ \S+): ", res["log"])
            if not res["ok"] or not m:
                print(f"  run {i + 1}: no ready line (rc={res['rc']} {res['reason']})\n{res['tail']}\n{res['log'][-2000:]}")
                continue
            x = float(m.group(4))
            fmt = "%Y-%m-%d %H:%M:%S,%f"
            since_start = (datetime.strptime(m.group(1), fmt) - datetime.strptime(first.group(1), fmt)).total_seconds()
            xs.append(x)
            whole.append(since_start)
            print(f"  run {i + 1}: {m.group(2)} of {m.group(3)} agents ready after {x:.2f} s "
                  f"({since_start:.2f} s after the service's first log line; service wall {res.get('wall') or 0:.2f} s)")
            if (res.get("wall") or 0) > since_start + 3:
                print("    slow end; service.log tail:\n      " + "\n      ".join(res["log"].splitlines()[-6:]))
    finally:
        if args.restart_shared:
            proc = cluster("start", "4", "4")
            print("restored the shared cluster to 4 x 4" if proc.returncode == 0
                  else f"RESTORING THE SHARED CLUSTER FAILED:\n{proc.stderr[-2000:]}")
        else:
            proc = cluster("stop", extra_env=extra_env)
            if proc.returncode != 0:
                print(f"stopping the private cluster failed:\n{proc.stderr[-2000:]}")
            shutil.rmtree(PRIVATE["QCG_SLURM_DIR"], ignore_errors=True)
    if xs:
        print(f"agents ready on {n} nodes: median {statistics.median(xs):.2f} s "
              f"(runs {', '.join(f'{x:.2f}' for x in xs)}); from the service's first log line: "
              f"median {statistics.median(whole):.2f} s")
    else:
        print(f"agents ready on {n} nodes: no successful run")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=20000)
    p.add_argument("--repeat", type=int, default=2, help="(a) rounds of local + allocation; the best of each counts")
    p.add_argument("--only", default="a,b", help="comma-separated subset of a,b")
    p.add_argument("--upstream", default=UPSTREAM)
    p.add_argument("--upstream-cap", type=float, default=300.0)
    p.add_argument("--agents-nodes", type=int, default=16)
    p.add_argument("--agents-runs", type=int, default=3)
    p.add_argument("--restart-shared", action="store_true",
                   help="(b) restart the shared cluster as 16 x 4, then restore it to 4 x 4")
    p.add_argument("--keep", action="store_true", help="keep the working directories")
    args = p.parse_args()
    print(f"bench_slurm: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, {datetime.now():%Y-%m-%d %H:%M}",
          flush=True)
    cases = {"a": case_a, "b": case_b}
    for name in args.only.split(","):
        try:
            cases[name.strip()](args)
        except Exception as exc:  # a failed case is reported, the others still run
            print(f"case ({name}) failed: {type(exc).__name__}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
