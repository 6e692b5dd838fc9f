"""Launchers: hand tasks to node agents (or pretend to, for benchmarks) and report exits.

A launcher is told `launch(tasks, now)` and `cancel(task, grace)`; it calls back
`on_finished([(tid, Outcome), ...])` in batches, `on_node_ready(node)` / `on_node_lost(node,
permanent)` as agents come and go, and `on_ready()` once enough agents are up to schedule.
"""
import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import zmq
import zmq.asyncio

from .. import protocol
from ..readagain import ReadAgain
from ..auth import Credentials
from ..core.job import Outcome
from ..service.naming import AGENT_LOG
from ..connections import keep_alive
from ..socket_exit import close_delivering
from . import early_agent
from .pipelink import PipeChannel
from .taskspec import TaskContext, build, program_name

log = logging.getLogger("qcg_hier")
AGENT_DOMAIN = "qcg-hier-agents"
FRAMES_PER_TURN = 64  # frames handled per turn of the event loop (an endless drain starves timers)
PIPE_ADDRESS = "stdio"  # the agent's --manager when it talks over its stdin/stdout


@dataclass
class Callbacks:
    on_ready: object
    on_finished: object
    on_node_lost: object  # (node name, permanent)
    on_node_ready: object = None  # (node name)
    on_fatal: object = None  # (message): the launcher cannot work (agents never came up)


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

    async def stop(self) -> None:
        pass


class Agent:
    """The manager's view of one node agent."""

    __slots__ = ("name", "outbox", "last_seen", "last_sent", "info", "alive")

    def __init__(self, name: str):
        self.name = name
        self.outbox: list = []
        self.last_seen = time.monotonic()  # heard from it
        self.last_sent = 0.0  # sent to it: the agent gives up on a silent manager
        self.info = None
        self.alive = False


@dataclass
class AgentSettings:
    heartbeat: float = 2.0  # seconds between pings
    timeout: float = 10.0  # an agent silent this long is lost
    ready_threshold: float = 1.0  # fraction of agents ready before scheduling starts
    init_timeout: float = 600.0  # seconds to wait for that fraction


class LocalAgents:
    """Agent processes on this machine, each serving some of the (virtual) nodes and talking over its
    stdin and stdout (see early_agent.agent_count for how many); one that dies is restarted."""

    pipes = True  # the link is the process's stdin/stdout (see pipelink.py)
    restartable = True

    def __init__(self, names=("local",)):
        self.processes: dict = dict.fromkeys(names)  # agent name -> its process

    def start(self, argv: list, name: str):
        options = argv[3:] + ["--node", name]  # after `python -m qcg_hier_agent`
        process = early_agent.hand_over(options)  # one started with the service, if any waits
        if process is None:
            process = subprocess.Popen(argv[:3] + ["--parent-death-signal"] + options,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        self.processes[name] = process
        return process

    def exited(self, name: str) -> bool:
        process = self.processes.get(name)
        return process is not None and process.poll() is not None


def open_link(credentials, zap, domain: str, bind_host: str, advertise_host: str, on_readable) -> tuple:
    """A ROUTER socket for many peers (agents, or a governor's children), CURVE-secured when there are
    credentials, on a random port; returns (socket, advertised address).

    A plain socket read by a loop reader: every frame waiting is drained in one callback (no future
    per frame), so task ends turn into new starts with the least delay."""
    sock = zmq.Socket(zmq.asyncio.Context.instance(), zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    keep_alive(sock)  # a dead peer's node is found out by the kernel, whatever our loop does
    if credentials is not None:
        credentials.secure_server(sock, domain)
        zap.allow(domain, credentials.client_public)
    port = sock.bind_to_random_port(f"tcp://{bind_host}")
    asyncio.get_running_loop().add_reader(sock.getsockopt(zmq.FD), on_readable)
    return sock, f"tcp://{advertise_host}:{port}"


def stalled(now: float, last_tick: float, timeout: float) -> bool:
    """Whether this process itself stood still (SIGSTOP, Slurm's job suspend, swapping, a long
    blocking step) for half a timeout between two ticks of its watch: then the peers' silence over
    that time proves nothing."""
    return now - last_tick > timeout / 2


class AgentLauncher:
    """Tasks go to node agents over one CURVE-secured ROUTER socket: batched frames, heartbeats."""

    def __init__(self, callbacks: Callbacks, ctx: TaskContext, service_dir, routes: dict, starter,
                 settings: AgentSettings | None = None, zap=None, bind_host: str = "127.0.0.1",
                 advertise_host: str = "127.0.0.1"):
        self.cb = callbacks
        self.ctx = ctx
        # absolute: the agents of an srun step start in the working directory (srun -D), not in ours
        self.service_dir = os.path.abspath(service_dir)
        self.routes = routes  # node name -> agent name
        self.starter = starter
        self.settings = settings or AgentSettings()
        self.zap = zap
        self.bind_host, self.advertise_host = bind_host, advertise_host
        self.agents: dict[str, Agent] = {name: Agent(name) for name in set(routes.values())}
        self.ready = False
        self._launched: dict[int, tuple] = {}  # tid -> (program name, wd)
        self._sock = None
        self._loop = None
        self._read_again = ReadAgain(self._on_readable)
        self._restarts: list[float] = []
        self.pipes = getattr(starter, "pipes", False)  # a local agent: its stdin/stdout, not a socket
        self._channels: dict[str, PipeChannel] = {}  # local agents: agent name -> its pipes
        self.address = PIPE_ADDRESS if self.pipes else None
        self._tasks = []
        self._started_at = time.monotonic()
        self.credentials = Credentials.generate() if zap is not None and not self.pipes else None

    # ----- lifecycle -----
    async def start(self) -> None:
        if not self.pipes:
            self._sock, self.address = open_link(self.credentials, self.zap, AGENT_DOMAIN, self.bind_host,
                                                 self.advertise_host, self._on_readable)
        self._loop = asyncio.get_running_loop()
        self._tasks.append(asyncio.ensure_future(self._watch()))
        self._started_at = time.monotonic()
        self._start_agents()

    def _start_agents(self) -> None:
        if not self.pipes:
            self.starter.start(self._agent_argv())
            return
        for agent in self.agents.values():
            self._start_local(agent)

    def _start_local(self, agent: Agent) -> None:
        """(Re)start a local agent; its pipes are its link."""
        old = self._channels.pop(agent.name, None)
        if old is not None:
            old.close()  # the pipes of an agent that died
        proc = self.starter.start(self._agent_argv(), agent.name)
        self._channels[agent.name] = PipeChannel(proc.stdin, proc.stdout,
                                                 lambda frames: self._on_frames(agent, frames))

    def _agent_argv(self) -> list:
        s = self.settings
        argv = [sys.executable, "-m", "qcg_hier_agent", "--manager", self.address,
                "--log-file", os.path.join(self.service_dir, AGENT_LOG),
                "--heartbeat-interval", str(s.heartbeat), "--manager-timeout", str(s.timeout)]
        if self.credentials is not None:
            keys = self.credentials.keys_file(os.path.join(self.service_dir, "agent-keys.json"))
            # `=`: a Z85 key may begin with '-', which would read as an option
            argv += [f"--curve-server-key={self.credentials.server_public}", f"--curve-keys-file={keys}"]
        return argv

    async def stop(self) -> None:
        """Agents get `exit` (they kill their tasks); the agent processes are then reaped."""
        for task in self._tasks:
            task.cancel()  # first: no agent that exits now is taken for lost, or restarted
        for agent in self.agents.values():
            # a local agent reads its pipe once it is up, ready or not yet
            if agent.alive or self.pipes:
                agent.outbox.append(["exit"])
        self.flush()
        procs = list(self.starter.processes.values()) if self.pipes else [self.starter.process]
        procs = [p for p in procs if p is not None]
        deadline = time.monotonic() + 5
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.002 if all(not a.alive for a in self.agents.values()) else 0.01)
            if not self.pipes and all(a.info is None for a in self.agents.values()):
                break  # nobody ever connected: no exit message can arrive
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                log.warning("agents did not exit: killing them")
                proc.kill()
                proc.wait()
        for channel in self._channels.values():
            channel.close()
        if self._sock is not None:
            self._loop.remove_reader(self._sock.getsockopt(zmq.FD))
            close_delivering(self._sock)  # the agents' "exit" still goes out

    # ----- outgoing -----
    def launch(self, tasks, now: float) -> None:
        routes, agents = self.routes, self.agents
        unprepared = []
        for task in tasks:
            try:
                spec = build(task, self.ctx)
            except Exception as exc:  # its hostfile, rankfile or working directory cannot be written, ...
                log.error("task %s: cannot prepare it: %s", task.label, exc)
                unprepared.append((task.tid, Outcome(None, 0, "", now, now, 0.0, 0, None,
                                                     f"cannot prepare the task: {exc}", "")))
                continue
            agent = routes[task.alloc.shares[0][0].name]
            self._launched[task.tid] = (program_name(spec), spec["wd"])
            agents[agent].outbox.append(["run", task.tid, spec])
        self.flush()
        if unprepared:
            # ended FAILED with the reason, their cores freed: on the next turn, not inside the pass
            self._loop.call_soon(self.cb.on_finished, unprepared)

    def cancel(self, task, grace: float) -> None:
        agent = self.agents.get(self.routes.get(task.alloc.shares[0][0].name))
        if agent is not None and agent.alive:
            agent.outbox.append(["cancel", task.tid, grace])
            self.flush()

    def flush(self) -> None:
        now = time.monotonic()
        for agent in self.agents.values():
            if agent.outbox:
                frame = protocol.encode(agent.outbox)
                agent.outbox = []
                agent.last_sent = now
                if self.pipes:
                    channel = self._channels.get(agent.name)
                    if channel is not None:
                        channel.send(frame)
                    continue
                try:
                    self._sock.send_multipart([agent.name.encode(), frame], flags=zmq.NOBLOCK)
                except zmq.ZMQError as exc:
                    log.warning("cannot send to agent %s: %s", agent.name, exc)
        if self._sock is not None:
            self._read_again()  # after a send

    # ----- incoming -----
    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None or sock.closed:
            return
        finished = []
        now = time.monotonic()
        for _ in range(FRAMES_PER_TURN):
            if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                break
            try:
                ident, frame = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            agent = self.agents.get(ident.decode(errors="replace"))
            if agent is None:
                log.warning("a connection from unknown agent %r ignored", ident)
                continue
            agent.last_seen = now
            self._on_frame(agent, frame, finished)
        else:
            self._read_again()  # busy agents keep the socket full: on in the next turn, after timers
        if finished:
            self.cb.on_finished(finished)

    def _on_frames(self, agent: Agent, frames: list) -> None:
        """Frames from a local agent's pipe."""
        agent.last_seen = time.monotonic()
        finished = []
        for frame in frames:
            self._on_frame(agent, frame, finished)
        if finished:
            self.cb.on_finished(finished)

    def _on_frame(self, agent: Agent, frame, finished: list) -> None:
        try:
            messages = protocol.decode(frame)
        except Exception:
            log.warning("agent %s sent an undecodable frame", agent.name)
            return
        for msg in messages:
            kind = msg[0]
            if kind == "done":
                finished.append((msg[1], self._outcome(msg)))
            elif kind == "ready":
                self._agent_ready(agent, msg[1])
            elif kind == "bye":
                agent.alive = False

    def _outcome(self, msg) -> Outcome:
        _, tid, pid, rc, start, end, cpu, maxrss, reason, error = msg
        pname, wd = self._launched.pop(tid, ("", ""))
        return Outcome(rc, pid, pname, start, end, cpu, maxrss, reason, error, wd)

    def _nodes_of(self, agent: Agent) -> list[str]:
        return [node for node, name in self.routes.items() if name == agent.name]

    def _agent_ready(self, agent: Agent, info: dict) -> None:
        agent.info = info
        agent.alive = True
        cpus = info.get("cpus") or []
        for node in self._nodes_of(agent):
            if self.ctx.binding:
                self.ctx.set_node_cpus(node, cpus)
            if self.cb.on_node_ready:
                self.cb.on_node_ready(node)
        log.info("agent %s ready on %s (pid %s, cpus %s)", agent.name, info.get("host"), info.get("pid"), cpus)
        self._check_ready()

    def _check_ready(self) -> None:
        if self.ready:
            return
        up = sum(1 for a in self.agents.values() if a.alive)
        if up >= max(1, int(len(self.agents) * self.settings.ready_threshold + 1e-9)):
            self.ready = True
            log.info("%d of %d agents ready after %.2f s: scheduling starts", up, len(self.agents),
                     time.monotonic() - self._started_at)
            self.cb.on_ready()

    async def _watch(self) -> None:
        """Ping every agent; one that stays silent too long is lost; a dead local agent is restarted."""
        s = self.settings
        tick = time.monotonic()
        while True:
            await asyncio.sleep(min(s.heartbeat, 0.5))
            self._on_readable()  # what waits unread is not silence
            now = time.monotonic()
            if stalled(now, tick, s.timeout):
                log.warning("this service stood still for %.1f s (suspended?): the agents' silence over "
                            "that time is not held against them", now - tick)
                for agent in self.agents.values():
                    agent.last_seen = now
            tick = now
            if not self.ready and now - self._started_at > s.init_timeout:
                up = sum(1 for a in self.agents.values() if a.alive)
                self.cb.on_fatal(f"only {up} of {len(self.agents)} node agents ready within --nl-init-timeout "
                                 f"{s.init_timeout:g} s (see agent-*.log and agents.out in the service directory)")
                return
            if not self.starter.restartable and self._step_ended():
                return
            # a local agent's exit is its death; agents of an srun step are judged by their heartbeats
            # (srun outlives a killed agent, and Slurm ends the others soon after srun itself dies)
            for agent in self.agents.values():
                exited = self.starter.restartable and self.starter.exited(agent.name)
                if agent.alive and (exited or now - agent.last_seen > s.timeout):
                    self._lose(agent, "its process ended" if exited else f"silent for {now - agent.last_seen:.1f} s")
                elif agent.alive and now - agent.last_sent > s.heartbeat:
                    agent.outbox.append(["ping", now])
                if exited and not self._restart(agent, now):
                    return
            self.flush()

    def _step_ended(self) -> bool:
        """Before the agents are up, the end of their srun step means none can come up any more:
        waiting for --nl-init-timeout would be futile."""
        code = self.starter.poll()
        if self.ready or code is None:
            return False
        up = sum(1 for a in self.agents.values() if a.alive)
        self.cb.on_fatal(f"the node agents' srun step exited (code {code}) with only {up} of "
                         f"{len(self.agents)} agents ready (see agent-*.log and agents.out in the "
                         f"service directory)")
        return True

    def _restart(self, agent: Agent, now: float) -> bool:
        """Restart a local agent that died, unless agents keep dying."""
        self._restarts.append(now)
        self._restarts = [t for t in self._restarts if now - t < 60]
        if len(self._restarts) > 5:
            self.cb.on_fatal("the node agent keeps dying (6 times within a minute): see agent-*.log")
            return False
        log.warning("restarting the node agent %s", agent.name)
        self._start_local(agent)
        return True

    def _lose(self, agent: Agent, why: str) -> None:
        agent.alive = False
        agent.info = None
        permanent = not self.starter.restartable
        log.error("agent %s lost (%s): its running tasks are re-queued%s", agent.name, why,
                  "" if not permanent else " and its nodes get no more work")
        for node in self._nodes_of(agent):
            self.cb.on_node_lost(node, permanent)
