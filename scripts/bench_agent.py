#!/usr/bin/env python3
"""Throughput check of the node agent (qcg_hier_agent).

Runs N ``/bin/true`` tasks through the agent keeping at most K in flight (new
runs are sent in one frame per returning ``done`` batch), then the same
workload with a bare ``os.posix_spawn`` + ``os.wait4`` loop in this process,
and prints both rates and their ratio.

    python scripts/bench_agent.py [-n 20000] [-k 32] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import orjson
import psutil
import resource
import zmq


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def bench_raw(n: int, k: int, env: dict) -> tuple[float, float]:
    spawn = os.posix_spawn
    wait4 = os.wait4
    argv = ["/bin/true"]
    started = done = inflight = 0
    c0 = _self_cpu()
    t0 = time.perf_counter()
    while done < n:
        while inflight < k and started < n:
            spawn("/bin/true", argv, env)
            started += 1
            inflight += 1
        wait4(-1, 0)
        inflight -= 1
        done += 1
    rate = n / (time.perf_counter() - t0)
    return rate, (_self_cpu() - c0) / n


def bench_agent(n: int, k: int, wd: str) -> tuple[float, int, float, float]:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("tcp://127.0.0.1:*")
    addr = router.getsockopt_string(zmq.LAST_ENDPOINT)
    agent = subprocess.Popen(
        [sys.executable, "-m", "qcg_hier_agent", "--manager", addr, "--node", "bench",
         "--manager-timeout", "60", "--log-level", "warning"],
        stdin=subprocess.DEVNULL,
    )
    try:
        ident, frame = router.recv_multipart()
        assert orjson.loads(frame)[0][0] == "ready"
        spec = {"argv": ["/bin/true"], "wd": wd}
        dumps, loads = orjson.dumps, orjson.loads
        send, recv = router.send_multipart, router.recv_multipart
        started = done = failed = 0
        proc = psutil.Process(agent.pid)
        a0 = sum(proc.cpu_times()[:2])
        c0 = _self_cpu()
        t0 = time.perf_counter()
        first = min(k, n)
        send([ident, dumps([["run", i, spec] for i in range(first)])])
        started = first
        while done < n:
            _, frame = recv()
            got = 0
            for m in loads(frame):
                if m[0] == "done":
                    got += 1
                    if m[3] != 0:
                        failed += 1
            done += got
            if got and started < n:
                m = min(got, n - started)
                send([ident, dumps([["run", i, spec] for i in range(started, started + m)])])
                started += m
        rate = n / (time.perf_counter() - t0)
        agent_cpu = (sum(proc.cpu_times()[:2]) - a0) / n
        driver_cpu = (_self_cpu() - c0) / n
        send([ident, dumps([["exit"]])])
        agent.wait(10)
        return rate, failed, agent_cpu, driver_cpu
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        router.close(0)
        ctx.term()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=20000, help="number of tasks (default 20000)")
    p.add_argument("-k", type=int, default=32, help="tasks in flight (default 32)")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternate agent/raw measurements this many times (default 3)")
    args = p.parse_args()
    wd = os.getcwd()
    env = dict(os.environ)  # the agent spawns with its own (same-sized) environment
    rows = []
    for r in range(args.rounds):
        rate, failed, acpu, dcpu = bench_agent(args.n, args.k, wd)
        if failed:
            print(f"WARNING: {failed} tasks did not exit 0", file=sys.stderr)
        raw, rcpu = bench_raw(args.n, args.k, env)
        rows.append((rate / raw, rate, raw, acpu, dcpu, rcpu))
        print(f"round {r + 1}: agent {rate:7.1f}/s  raw {raw:7.1f}/s  ratio {rate / raw:.3f}  "
              f"| CPU per task: agent {acpu * 1e6:5.1f} us, driver {dcpu * 1e6:5.1f} us, "
              f"raw parent {rcpu * 1e6:5.1f} us", flush=True)
    rows.sort()
    med = rows[len(rows) // 2]
    print(f"tasks={args.n} in_flight={args.k} env_vars={len(env)} rounds={args.rounds}")
    print(f"median round: raw posix_spawn+wait4 {med[2]:.1f} tasks/s, agent {med[1]:.1f} tasks/s, "
          f"ratio {med[0]:.3f}")
    print(f"best agent {max(r[1] for r in rows):.1f} tasks/s, best raw {max(r[2] for r in rows):.1f} tasks/s, "
          f"ratio of bests {max(r[1] for r in rows) / max(r[2] for r in rows):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
