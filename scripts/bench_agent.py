#!/usr/bin/env python3
"""Throughput check of the node agent (qcg_hier_agent).

Runs N ``/bin/true`` tasks through the agent keeping at most K in flight (new
runs are sent in one frame per returning ``done`` batch) and the same workload
with a bare ``os.posix_spawn`` + ``os.wait4`` loop in this process (same
environment size), then prints both rates and their ratio.

The machine may be shared with other jobs whose load varies over time, so the
two workloads are interleaved in ``--chunks`` slices (agent slice, raw slice,
agent slice, ...) against one long-running agent, and the totals are compared.
CPU time spent per task by the agent, by this driver and by the raw loop is
printed too: unlike rates it hardly depends on the load of other processes.

    python scripts/bench_agent.py [-n 20000] [-k 32] [--chunks 10]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

import orjson
import psutil
import zmq


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def run_raw(n: int, k: int, env: dict) -> tuple[float, float]:
    """Return (elapsed seconds, CPU seconds of this process) for n tasks."""
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
    return time.perf_counter() - t0, _self_cpu() - c0


class AgentDriver:
    def __init__(self, wd: str):
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind("tcp://127.0.0.1:*")
        addr = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qcg_hier_agent", "--manager", addr, "--node", "bench",
             "--manager-timeout", "120", "--log-level", "warning"],
            stdin=subprocess.DEVNULL,
        )
        self.ps = psutil.Process(self.proc.pid)
        if not self.router.poll(30000):
            raise RuntimeError("the agent did not send ready")
        self.ident, frame = self.router.recv_multipart()
        assert orjson.loads(frame)[0][0] == "ready"
        self.spec = {"argv": ["/bin/true"], "wd": wd}
        self.next_tid = 0
        self.failed = 0

    def agent_cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def run(self, n: int, k: int) -> tuple[float, float, float]:
        """Return (elapsed, agent CPU, driver CPU) for n tasks, k in flight."""
        dumps, loads = orjson.dumps, orjson.loads
        send, recv = self.router.send_multipart, self.router.recv_multipart
        ident, spec = self.ident, self.spec
        tid = self.next_tid
        a0 = self.agent_cpu()
        c0 = _self_cpu()
        t0 = time.perf_counter()
        first = min(k, n)
        send([ident, dumps([["run", i, spec] for i in range(tid, tid + first)])])
        tid += first
        started, done = first, 0
        while done < n:
            _, frame = recv()
            got = 0
            for m in loads(frame):
                if m[0] == "done":
                    got += 1
                    if m[3] != 0:
                        self.failed += 1
            done += got
            if got and started < n:
                m = min(got, n - started)
                send([ident, dumps([["run", i, spec] for i in range(tid, tid + m)])])
                tid += m
                started += m
        elapsed = time.perf_counter() - t0
        self.next_tid = tid
        return elapsed, self.agent_cpu() - a0, _self_cpu() - c0

    def close(self):
        try:
            self.router.send_multipart([self.ident, orjson.dumps([["exit"]])])
            self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.router.close(0)
            self.ctx.term()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=20000, help="number of tasks for each side (default 20000)")
    p.add_argument("-k", type=int, default=32, help="tasks in flight (default 32)")
    p.add_argument("--chunks", type=int, default=10, help="interleaved slices (default 10)")
    args = p.parse_args()
    env = dict(os.environ)  # the agent spawns with its own, same-sized environment
    driver = AgentDriver(os.getcwd())
    a_t = a_cpu = d_cpu = r_t = r_cpu = 0.0
    a_n = r_n = 0
    ratios = []
    try:
        # symmetric warm-up (imports, caches, kernel slabs) of both sides
        warm = min(1000, args.n)
        driver.run(warm, args.k)
        run_raw(warm, args.k, env)
        for c in range(args.chunks):
            m = args.n // args.chunks + (1 if c < args.n % args.chunks else 0)
            t, ac, dc = driver.run(m, args.k)
            a_t += t
            a_cpu += ac
            d_cpu += dc
            a_n += m
            t2, rc = run_raw(m, args.k, env)
            r_t += t2
            r_cpu += rc
            r_n += m
            ratios.append(t2 / t)
            print(f"slice {c + 1:2d}: agent {m / t:7.1f}/s  raw {m / t2:7.1f}/s  ratio {t2 / t:.3f}",
                  flush=True)
    finally:
        driver.close()
    if driver.failed:
        print(f"WARNING: {driver.failed} tasks did not exit 0", file=sys.stderr)
    agent_rate, raw_rate = a_n / a_t, r_n / r_t
    print(f"tasks={args.n} in_flight={args.k} env_vars={len(env)} chunks={args.chunks}")
    print(f"raw posix_spawn+wait4 : {raw_rate:8.1f} tasks/s  (loop CPU {r_cpu / r_n * 1e6:6.1f} us/task)")
    print(f"agent                 : {agent_rate:8.1f} tasks/s  (agent CPU {a_cpu / a_n * 1e6:6.1f} us/task,"
          f" driver CPU {d_cpu / a_n * 1e6:6.1f} us/task)")
    print(f"ratio agent/raw       : {agent_rate / raw_rate:.3f}  (median of slice ratios "
          f"{statistics.median(ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
