#!/usr/bin/env python3
"""Fault injection: kill -9 (or stop) a part of a running campaign at a random moment, recover, check.

This is not a test (it takes minutes); it prints one line per round and a summary.

    python scripts/fault_injection.py [--rounds N] [--seed S] [--kinds agent,manager]
                                      [--jobs 20] [--iterations 100] [--nodes 4,4] [--keep]

For each round and each fault kind, in a fresh working directory:

* a campaign of jobs x iterations short tasks (default 20 x 100 = 2,000) with dependencies:
  job k runs after `j<k-1>:${it}` (iteration by iteration), every fifth job after the whole
  previous job; every task is `sleep 0.01` and then appends its name to names.txt;
* when a random number of tasks (seeded RNG) have written their name, kill -9 of
  - `agent`:   the local node agent: the service notices, its watchdog kills the agent's tasks,
               the service restarts the agent and re-queues them (automatic recovery);
  - `manager`: the service itself: the agent gets SIGTERM (parent death) and kills its tasks;
               then `qcg-pm-service --resume WD` finishes the rest;
  - `child`:   one child manager of a governor (`--governor --partition-nodes 1` over --nodes):
               its agent gets SIGTERM and kills its tasks, the governor notices, re-queues the
               child's work on the others and starts the child again (automatic recovery);
  - `governor`: the governor: its children notice the silence (--child-timeout 2 s), kill their
               tasks and exit; then `qcg-pm-service --resume WD` finishes the rest;
  - `stall-manager`, `stall-child`, `stall-governor`: not a kill but SIGSTOP of the service, of
               one child manager, of the governor, for a random --stall time (5-30 s), then SIGCONT:
               the campaign goes on by itself;
  - `agent-slurm`: one node agent of a manager inside a real allocation (`salloc -N2` on the
               local Slurm cluster, `eval "$(scripts/slurm-cluster.sh env)"` first): the manager
               notices, re-runs the node's tasks and the campaign goes on;
* checks:
  - every task ended SUCCEED (final_status.json, and jobs.report's last entry per iteration);
  - no task whose success had been journaled ran again (its name appears once in names.txt);
  - any name twice must belong to a task that was running at the fault (its report history
    shows the retry: SCHEDULED, ..., QUEUED, SCHEDULED): it may have written its name just
    before being killed; no name three times, no SUCCEED task without its name;
  - no process left: nothing whose command line holds the round's marker (tasks, agent,
    watchdog, service) is alive afterwards.

A round is bounded (--round-timeout, default 60 s): on timeout
everything of the round is killed (by PID) and the round fails.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

import benchlib as bl

SERVICE_ID = "fi"
SDIR = f".qcgpjm-service-{SERVICE_ID}"
KINDS = ["agent", "manager", "child", "governor", "stall-manager", "stall-child", "stall-governor", "agent-slurm"]
GOVERNED = ("child", "governor", "stall-child", "stall-governor")
STALLS = ("stall-manager", "stall-child", "stall-governor")
IN_ALLOCATION = ("agent-slurm",)
GOVERNOR_ARGS = ["--governor", "--partition-nodes", "1", "--child-heartbeat", "0.3", "--child-timeout", "2"]


def service_command() -> list[str]:
    return bl.our_service()


def local_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SRUN_", "SALLOC_", "SBATCH_"))}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def allocation_env() -> dict:
    """For salloc: the local Slurm cluster's configuration (scripts/slurm-cluster.sh env)."""
    env = local_env()
    if "SLURM_CONF" in os.environ:
        env["SLURM_CONF"] = os.environ["SLURM_CONF"]
    return env


def campaign(marker: str, names: Path, jobs: int, iterations: int) -> list:
    descs = []
    for k in range(jobs):
        desc = {"name": f"j{k}", "iteration": {"stop": iterations},
                "execution": {"script": f": {marker}; sleep 0.01; echo j{k}:${{it}} >> {names}"}}
        if k:
            desc["dependencies"] = {"after": [f"j{k - 1}" if k % 5 == 0 else f"j{k - 1}:${{it}}"]}
        descs.append(desc)
    return [{"request": "submit", "jobs": descs}, {"request": "control", "command": "finishAfterAllTasksDone"}]


def marked(marker: str) -> list[psutil.Process]:
    """Live processes of this round: their command line holds the marker (tasks' scripts, or the
    working directory's path for the service, the agent and its watchdog)."""
    out = []
    me = os.getpid()
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.pid != me and proc.info["status"] != psutil.STATUS_ZOMBIE and \
                    any(marker in arg for arg in proc.info["cmdline"] or ()):
                out.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def kill_marked(marker: str) -> None:
    for proc in marked(marker):
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def journal(sdir: Path) -> list[dict]:
    out = []
    path = sdir / "journal"
    if path.exists():
        for line in path.read_bytes().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                break
    return out


def journaled(records: list[dict], kind: str, state: str | None = None) -> set[str]:
    """Task names `job:it` of the journal's `run` or `fin` records."""
    out = set()
    for rec in records:
        if kind in rec:
            groups = [rec["run"]] if kind == "run" else [jobs for st, jobs in rec["fin"].items()
                                                          if state is None or st == state]
            for jobs in groups:
                for job, ranges in jobs.items():
                    out.update(f"{job}:{i}" for a, b in ranges for i in range(a, b))
    return out


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def start(argv: list, wd: Path, log: Path, env: dict | None = None) -> subprocess.Popen:
    out = open(log, "ab")
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env or local_env(), cwd=wd.parent, start_new_session=True)
    finally:
        out.close()


def wait_exit(proc: subprocess.Popen, deadline: float) -> int | None:
    try:
        return proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return None


def child_pids(marker: str) -> list[int]:
    """The child managers of the round's governor (their command line holds the marker and --parent)."""
    found = []
    for proc in marked(marker):
        try:
            if "--parent" in proc.cmdline():
                found.append(proc.pid)
        except psutil.NoSuchProcess:
            continue  # a task that ended meanwhile
    return found


def node_agent_pids(marker: str) -> list[int]:
    """Node agents inside the allocation (started by srun; their command line names the round's
    service directory)."""
    found = []
    for proc in marked(marker):
        try:
            # not its watchdog: a fork of the agent, with the same command line
            if "qcg_hier_agent" in " ".join(proc.cmdline()) and \
                    "qcg_hier_agent" not in " ".join(proc.parent().cmdline()):
                found.append(proc.pid)
        except (psutil.NoSuchProcess, AttributeError):
            continue
    return found


def service_pid(svc: subprocess.Popen, kind: str, marker: str) -> int | None:
    """The manager (or governor) process: under salloc, salloc's child."""
    if kind not in IN_ALLOCATION:
        return svc.pid
    for proc in marked(marker):
        try:
            if proc.name() != "salloc" and "--file-path" in proc.cmdline() and "--parent" not in proc.cmdline():
                return proc.pid
        except psutil.NoSuchProcess:
            continue
    return None


def stall(pid: int, seconds: float) -> None:
    """SIGSTOP for `seconds`, then SIGCONT: a manager, child or governor that stands still (a busy
    node, a debugger, a suspended job step) must not lose work when it goes on."""
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


def agent_pid(sdir: Path) -> int | None:
    import re
    try:
        found = re.findall(r"agent \S+ \(pid (\d+)\)", (sdir / "agent-local.log").read_text())
    except FileNotFoundError:
        return None
    return int(found[-1]) if found else None


def one_round(n: int, kind: str, rng: random.Random, args, base: Path) -> tuple[bool, str]:
    t0 = time.monotonic()
    deadline = t0 + args.round_timeout + (args.stall[1] if kind in STALLS else 0)
    marker = f"qhfi{os.getpid()}r{n}{kind}"
    root = base / marker
    wd = root / "wd"
    wd.mkdir(parents=True)
    names = wd / "names.txt"
    sdir = wd / SDIR
    total = args.jobs * args.iterations
    reqs = root / "reqs.json"
    reqs.write_text(json.dumps(campaign(marker, names, args.jobs, args.iterations)))
    target = rng.randint(max(1, total // 40), total - total // 40)
    problems = []
    info = {}
    try:
        extra = GOVERNOR_ARGS if kind in GOVERNED else []
        argv = service_command() + ["--file-path", str(reqs), "--wd", str(wd), "--id", SERVICE_ID]
        if kind in IN_ALLOCATION:  # the allocation's nodes, one agent per node started by srun
            svc = start(["salloc", "-Q", "-N", str(args.alloc_nodes), "--ntasks-per-node=2"] + argv, wd,
                        root / "service.out", env=allocation_env())
        else:
            svc = start(argv + ["--nodes", args.nodes] + extra, wd, root / "service.out")
        # ---- the fault
        while count_lines(names) < target and svc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.003)
        done_at_fault = count_lines(names)
        info["fault"] = f"at {done_at_fault}/{total}"
        at_fault = journal(sdir)  # what had succeeded when the fault began (a stall lasts a while)
        if svc.poll() is not None:
            problems.append("campaign ended before the fault: no fault injected")
        elif time.monotonic() >= deadline:
            problems.append("fault point not reached in time")
        elif kind in STALLS:
            targets = child_pids(marker) if kind == "stall-child" else [service_pid(svc, kind, marker)]
            seconds = rng.uniform(*args.stall)
            info["fault"] += f" stop {seconds:.0f}s"
            stall(rng.choice(targets), seconds)
        elif kind == "agent-slurm":
            agents = node_agent_pids(marker)
            if not agents:
                problems.append("no node agent found in the allocation")
            else:
                os.kill(rng.choice(agents), signal.SIGKILL)
        elif kind == "agent":
            pid = agent_pid(sdir)
            if pid is None:
                problems.append("no agent pid in agent-local.log")
            else:
                os.kill(pid, signal.SIGKILL)
        elif kind == "child":
            children = child_pids(marker)
            if not children:
                problems.append("no child manager process found")
            else:
                pid = rng.choice(children)
                info["fault"] += f" child {pid}"
                os.kill(pid, signal.SIGKILL)
        else:
            os.kill(svc.pid, signal.SIGKILL)
        if kind not in STALLS:
            at_fault = journal(sdir)  # the journal at the kill (a dead manager cannot add more)
        succeeded_before = journaled(at_fault, "fin", "SUCCEED")
        info["journaled"] = len(succeeded_before)

        # ---- recovery
        if kind in ("manager", "governor") and not problems:
            svc.wait()
            # a governor's children wait --child-timeout before they give up on it
            gone_by = time.monotonic() + (5 if kind == "manager" else 8)
            while marked(marker) and time.monotonic() < gone_by:
                time.sleep(0.05)
            survivors = marked(marker)
            if survivors:
                problems.append(f"{len(survivors)} processes alive {'5' if kind == 'manager' else '8'} s after the "
                                f"{kind}'s death")
                kill_marked(marker)
            svc = start(service_command() + ["--resume", str(wd)], wd, root / "resume.out")
        rc = wait_exit(svc, deadline)
        if rc is None:
            problems.append(f"not finished within the round's {args.round_timeout:g} s")
            svc.kill()
            svc.wait()
        elif rc != 0:
            problems.append(f"service exit code {rc}")

        # ---- checks
        final = {}
        try:
            final = json.loads((sdir / "final_status.json").read_text())
        except (OSError, ValueError) as exc:
            problems.append(f"no final_status.json ({exc})")
        succeed = final.get("States", {}).get("SUCCEED", 0)
        info["SUCCEED"] = f"{succeed}/{total}"
        if final and (succeed != total or final["JobStats"]["FinishedJobs"] != args.jobs):
            problems.append(f"final status: {final.get('States')}")
        last = {}
        try:
            for line in (sdir / "jobs.report").read_text().splitlines():
                entry = json.loads(line)
                last[entry["name"]] = entry
        except (OSError, ValueError) as exc:
            problems.append(f"jobs.report unreadable ({exc})")
        its = {k: e for k, e in last.items() if ":" in k}
        not_ok = [k for k, e in its.items() if e["state"] != "SUCCEED"]
        if len(its) != total or not_ok:
            problems.append(f"jobs.report: {len(its)} iterations, not SUCCEED: {not_ok[:5]}")

        def retried(name):
            hist = [h["state"] for h in its.get(name, {}).get("history", ())]
            return any(a == "QUEUED" and b == "SCHEDULED" for a, b in zip(hist, hist[1:]))

        seen = collections.Counter(names.read_text().split()) if names.exists() else collections.Counter()
        dups = {k: c for k, c in seen.items() if c > 1}
        reran = sorted(k for k in dups if k in succeeded_before)
        unexplained = sorted(k for k, c in dups.items() if c > 2 or not retried(k))
        missing = [f"j{k}:{i}" for k in range(args.jobs) for i in range(args.iterations) if not seen[f"j{k}:{i}"]]
        info["retried"] = sum(1 for k in its if retried(k))
        info["dup"] = len(dups)
        if reran:
            problems.append(f"tasks whose success was journaled ran again: {reran[:5]}")
        if unexplained:
            problems.append(f"names written twice without a retry: {unexplained[:5]}")
        if missing:
            problems.append(f"{len(missing)} tasks never wrote their name: {missing[:5]}")
        gone_by = time.monotonic() + 5
        while marked(marker) and time.monotonic() < gone_by:
            time.sleep(0.05)
        left = marked(marker)
        info["leftover"] = len(left)
        if left:
            problems.append(f"processes left: {[' '.join(p.cmdline())[:80] for p in left[:3]]}")
    finally:
        kill_marked(marker)
    elapsed = time.monotonic() - t0
    if elapsed > deadline - t0:
        problems.append(f"round took {elapsed:.1f} s")
    ok = not problems
    line = (f"round {n:>3}/{args.rounds} {kind:<8} fault {info.get('fault', '?'):<11} "
            f"journaled-ok {info.get('journaled', '?'):>5} | SUCCEED {info.get('SUCCEED', '?'):>9} | "
            f"retried {info.get('retried', '?'):>3} | written twice {info.get('dup', '?'):>2} | "
            f"leftover {info.get('leftover', '?')} | {elapsed:5.1f} s  {'PASS' if ok else 'FAIL'}")
    if problems:
        line += "\n    " + "\n    ".join(problems) + f"\n    (kept: {root})"
    elif not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return ok, line


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--jobs", type=int, default=20)
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--nodes", default="4,4")
    p.add_argument("--round-timeout", type=float, default=60.0, help="seconds a round may take (a stall round: "
                                                                      "plus the stall)")
    p.add_argument("--stall", type=lambda text: tuple(float(x) for x in text.split(",")), default=(5.0, 30.0),
                   metavar="MIN,MAX", help="seconds a stall-* round stops its target (random in the range)")
    p.add_argument("--alloc-nodes", type=int, default=2, help="nodes of an agent-slurm round's allocation")
    p.add_argument("--keep", action="store_true", help="keep the working directories of passed rounds too")
    p.add_argument("--base", default=None, help="where the rounds' directories go (default: a temporary one)")
    args = p.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        p.error(f"unknown kinds {unknown}; known: {KINDS}")
    base = Path(args.base or tempfile.mkdtemp(prefix="qh-fault-"))
    base.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    print(f"fault injection: {args.rounds} rounds x {kinds}, campaign "
          f"{args.jobs} jobs x {args.iterations} iterations on --nodes {args.nodes}, seed {args.seed}, in {base}",
          flush=True)
    passed = failed = 0
    t0 = time.monotonic()
    for n in range(1, args.rounds + 1):
        for kind in kinds:
            try:
                ok, line = one_round(n, kind, rng, args, base)
            except Exception as exc:  # a broken round is a failed round, the others still run
                ok, line = False, f"round {n:>3}/{args.rounds} {kind:<8} FAIL: {type(exc).__name__}: {exc}"
            passed += ok
            failed += not ok
            print(line, flush=True)
    if not args.keep and not failed and not args.base:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{passed} passed, {failed} failed ({time.monotonic() - t0:.0f} s)")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
