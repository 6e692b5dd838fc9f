"""Launchers: hand tasks to node agents (or pretend to, for benchmarks) and report exits.

A launcher is told `launch(tasks, now)` and `cancel(task, grace)`; it calls back
`on_finished([(tid, Outcome), ...])` in batches, `on_ready()` once it can launch,
and `on_node_lost(node name)` when an agent stops answering.
"""
import asyncio
import logging
import os
import signal
import subprocess
import sys
import time

import zmq
import zmq.asyncio

from .. import protocol
from ..core.job import Outcome
from .taskspec import TaskContext, build, program_name

log = logging.getLogger("qcg_hier")


class Callbacks:
    def __init__(self, on_ready, on_finished, on_node_lost):
        self.on_ready = on_ready
        self.on_finished = on_finished
        self.on_node_lost = on_node_lost


class FakeLauncher:
    """Benchmark only (`--fake-launch`): every task succeeds at once, no process is started."""

    def __init__(self, callbacks: Callbacks):
        self.cb = callbacks
        self.ready = True

    async def start(self) -> None:
        self.cb.on_ready()

    def launch(self, tasks, now: float) -> None:
        self.cb.on_finished([(t.tid, Outcome(0, 0, "fake", now, now, 0.0, 0, None, None, "")) for t in tasks])

    def cancel(self, task, grace: float) -> None:
        self.cb.on_finished([(task.tid, Outcome(None, 0, "fake", 0, 0, 0.0, 0, "canceled", None, ""))])

    async def stop(self, kill_grace: float = 0) -> None:
        pass


class Agent:
    """The manager's view of one node agent."""

    __slots__ = ("name", "outbox", "last_seen", "info", "alive", "process")

    def __init__(self, name: str, process=None):
        self.name = name
        self.outbox: list = []
        self.last_seen = time.monotonic()
        self.info = None
        self.alive = True
        self.process = process


class AgentLauncher:
    """Tasks go to node agents over one ROUTER socket: batched frames, heartbeats both ways."""

    def __init__(self, callbacks: Callbacks, ctx: TaskContext, service_dir, routes: dict,
                 heartbeat: float = 2.0, agent_timeout: float = 15.0):
        self.cb = callbacks
        self.ctx = ctx
        self.service_dir = service_dir
        self.routes = routes  # node name -> agent name
        self.heartbeat = heartbeat
        self.agent_timeout = agent_timeout
        self.agents: dict[str, Agent] = {}
        self.ready = False
        self._launched: dict[int, tuple] = {}  # tid -> (program name, wd)
        self._zctx = zmq.asyncio.Context.instance()
        self._sock = None
        self.address = None
        self._tasks = []
        self._expected = set(routes.values())

    # ----- lifecycle -----
    async def start(self) -> None:
        self._sock = self._zctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # loopback TCP: no socket-path length limit (deep working directories), and remote agents
        # in an allocation use the same kind of endpoint
        port = self._sock.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self._tasks.append(asyncio.ensure_future(self._receive()))
        self._tasks.append(asyncio.ensure_future(self._watch()))
        for name in sorted(self._expected):
            self._spawn_local_agent(name)

    def _spawn_local_agent(self, name: str) -> None:
        log_file = os.path.join(self.service_dir, f"agent-{name}.log")
        argv = [sys.executable, "-m", "qcg_hier_agent", "--manager", self.address, "--node", name,
                "--parent-death-signal", "--log-file", log_file,
                "--heartbeat-interval", str(self.heartbeat), "--manager-timeout", str(self.agent_timeout)]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, close_fds=True)
        self.agents[name] = Agent(name, proc)

    async def stop(self, kill_grace: float = 0) -> None:
        """Connected agents get `exit` (they kill their tasks); the others a SIGTERM at once."""
        for agent in self.agents.values():
            if agent.alive and agent.info is not None:
                agent.outbox.append(["exit"])
            elif agent.process is not None and agent.process.poll() is None:
                agent.process.send_signal(signal.SIGTERM)
        self.flush()
        deadline = time.monotonic() + 5
        for agent in self.agents.values():
            proc = agent.process
            if proc is None:
                continue
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.002)
            if proc.poll() is None:
                log.warning("agent %s did not exit: killing it", agent.name)
                proc.kill()
                proc.wait()
        for task in self._tasks:
            task.cancel()
        self._sock.close(0)

    # ----- outgoing -----
    def launch(self, tasks, now: float) -> None:
        routes, agents = self.routes, self.agents
        for task in tasks:
            spec = build(task, self.ctx)
            self._launched[task.tid] = (program_name(spec), spec["wd"])
            agents[routes[task.alloc.shares[0][0].name]].outbox.append(["run", task.tid, spec])
        self.flush()

    def cancel(self, task, grace: float) -> None:
        agent = self.agents.get(self.routes.get(task.alloc.shares[0][0].name))
        if agent is not None and agent.alive:
            agent.outbox.append(["cancel", task.tid, grace])
            self.flush()

    def flush(self) -> None:
        for agent in self.agents.values():
            if agent.outbox:
                frame = protocol.encode(agent.outbox)
                agent.outbox = []
                try:
                    self._sock.send_multipart([agent.name.encode(), frame], flags=zmq.NOBLOCK)
                except zmq.ZMQError as exc:
                    log.warning("cannot send to agent %s: %s", agent.name, exc)

    # ----- incoming -----
    async def _receive(self) -> None:
        sock = self._sock
        while True:
            ident, frame = await sock.recv_multipart()
            name = ident.decode()
            agent = self.agents.get(name)
            if agent is None:
                agent = self.agents[name] = Agent(name)
            agent.last_seen = time.monotonic()
            try:
                messages = protocol.decode(frame)
            except Exception:
                log.warning("agent %s sent an undecodable frame", name)
                continue
            finished = []
            for msg in messages:
                kind = msg[0]
                if kind == "done":
                    finished.append((msg[1], self._outcome(msg)))
                elif kind == "ready":
                    self._agent_ready(agent, msg[1])
                elif kind == "bye":
                    agent.alive = False
            if finished:
                self.cb.on_finished(finished)

    def _outcome(self, msg) -> Outcome:
        _, tid, pid, rc, start, end, cpu, maxrss, reason, error = msg
        pname, wd = self._launched.pop(tid, ("", ""))
        return Outcome(rc, pid, pname, start, end, cpu, maxrss, reason, error, wd)

    def _agent_ready(self, agent: Agent, info: dict) -> None:
        agent.info = info
        agent.alive = True
        cpus = info.get("cpus") or []
        for node, agent_name in self.routes.items():
            if agent_name == agent.name and self.ctx.binding:
                self.ctx.cpu_maps[node] = cpus
        log.info("agent %s ready on %s (pid %s, cpus %s)", agent.name, info.get("host"), info.get("pid"), cpus)
        if not self.ready and all(self.agents.get(n) and self.agents[n].info for n in self._expected):
            self.ready = True
            self.cb.on_ready()

    async def _watch(self) -> None:
        """Ping every agent; one that stays silent too long is lost."""
        while True:
            await asyncio.sleep(self.heartbeat)
            now = time.monotonic()
            for agent in self.agents.values():
                if not agent.alive:
                    continue
                if agent.info is not None and now - agent.last_seen > self.agent_timeout:
                    agent.alive = False
                    log.error("agent %s silent for %.1f s: lost", agent.name, now - agent.last_seen)
                    for node, name in self.routes.items():
                        if name == agent.name:
                            self.cb.on_node_lost(node)
                    continue
                agent.outbox.append(["ping", now])
            self.flush()
