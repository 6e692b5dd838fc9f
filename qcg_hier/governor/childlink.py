"""The governor's side of its children: one ROUTER socket, a batched link per child, heartbeats.

It is the governor's launcher: `launch(tasks)` hands iterations to the children the pool
chose (a job's description once per child, then ranges of iteration numbers), `cancel`
forwards cancels, and the children's reports come back as `on_finished` batches. A child
that stops answering (or whose process ends) is reported lost, so that the scheduling core
re-queues its work; a child the governor started itself is started again.

Identities: a child connects as `<id>#<token>`; the token comes from its registration, so
messages of an earlier incarnation of the same id (one declared lost) are recognised and
that process is told to exit.
"""
import asyncio
import logging
import secrets
import time
from dataclasses import dataclass

import zmq

from .. import protocol
from ..core.job import Outcome
from ..core.nodespec import NodeSpec
from ..core.states import JobState
from ..launch.launcher import FRAMES_PER_TURN, open_link, stalled
from ..readagain import ReadAgain
from ..connections import AcceptedConnections
from ..socket_exit import close_delivering
from ..service.journal import to_ranges

log = logging.getLogger("qcg_hier")
CHILD_DOMAIN = "qcg-hier-children"

ENDS_PER_TURN = 8192  # task ends handled per turn of the loop (then timers and requests get a turn)
FAILED_STATES = {JobState.FAILED.value, JobState.OMITTED.value}


@dataclass
class LinkSettings:
    heartbeat: float = 2.0  # seconds between heartbeats, both ways
    timeout: float = 10.0  # a child silent this long, its connection closed, is lost
    register_timeout: float = 300.0  # children the governor started must register within this


class ChildEntry:
    """The governor's view of one child manager."""

    __slots__ = ("name", "token", "identity", "outbox", "gives", "cancels", "last_seen", "last_sent",
                 "connected", "jobs_sent", "address", "silence_noted")

    def __init__(self, name: str):
        self.name = name
        self.token = secrets.token_hex(4)
        self.identity = f"{name}#{self.token}".encode()
        self.outbox: list = []
        self.gives: dict = {}  # job name -> iterations handed out in this turn
        self.cancels: dict = {}
        self.last_seen = time.monotonic()
        self.last_sent = 0.0
        self.connected = False
        self.jobs_sent: set = set()
        self.address = None  # of its connection, as it reports it (see connections.py)
        self.silence_noted = False


def node_specs(resources: dict) -> list[NodeSpec]:
    """A child's registered resources (upstream's `register` shape plus gpus/mem) as NodeSpecs."""
    nodes = resources.get("nodes") if isinstance(resources, dict) else None
    if not isinstance(nodes, list) or not nodes:
        raise ValueError("'resources.nodes' must be a non-empty list")
    specs = []
    for node in nodes:
        if not isinstance(node, dict) or not isinstance(node.get("name"), str):
            raise ValueError("every node needs a 'name'")
        cores = node.get("total_cores")
        if not isinstance(cores, int) or cores < 1:
            raise ValueError(f"node {node['name']}: 'total_cores' must be a positive integer")
        specs.append(NodeSpec(node["name"], cores, (), tuple(node.get("gpus") or ()), int(node.get("mem_mb") or 0)))
    return specs


class ChildLauncher:
    def __init__(self, callbacks, service, credentials, zap, settings: LinkSettings, starter=None,
                 bind_host: str = "127.0.0.1", advertise_host: str = "127.0.0.1"):
        self.cb = callbacks
        self.service = service  # for the core's jobs (descriptions, running iterations)
        self.credentials = credentials
        self.zap = zap
        self.settings = settings
        self.starter = starter  # children this governor starts (and restarts), or None
        self.bind_host, self.advertise_host = bind_host, advertise_host
        self.children: dict[str, ChildEntry] = {}
        self.address = None
        self.ready = starter is None  # with children of its own: once they all are connected
        self._sock = None
        self._loop = None
        self._read_again = ReadAgain(self._on_readable)
        self._tasks = []
        self._started_at = time.monotonic()
        self._descriptions: dict = {}  # job name -> description sent to children
        self._ended: list = []  # (tid, Outcome) reported in the current turn
        self.stopping = False
        self._flush_pending = False

    # ----- lifecycle -----
    async def start(self) -> None:
        self._sock, self.address = open_link(self.credentials, self.zap, CHILD_DOMAIN, self.bind_host,
                                             self.advertise_host, self._on_readable)
        self.connections = AcceptedConnections(self._sock)
        self.connections.start()
        self._loop = asyncio.get_running_loop()
        self._tasks.append(asyncio.ensure_future(self._watch()))

    def start_children(self, governor_address: str) -> None:
        """Called once the governor answers requests: its children register there."""
        self._started_at = time.monotonic()
        if self.starter is not None:
            self.starter.start_all(governor_address)

    async def stop(self) -> None:
        self.stopping = True  # children exiting now are not lost, and are not started again
        for entry in self.children.values():
            if entry.connected:
                entry.outbox.append(["exit"])
        self.flush()
        if self.starter is not None:
            await self.starter.stop_all(grace=10.0)
        for task in self._tasks:
            task.cancel()
        self._loop.remove_reader(self._sock.getsockopt(zmq.FD))
        self.connections.close()
        close_delivering(self._sock)  # the children's "exit" still goes out

    # ----- registration -----
    def register(self, params: dict) -> dict:
        """A child asks to join: returns where to connect and its token. Raises ValueError."""
        name = params.get("id")
        if not isinstance(name, str) or not name:
            raise ValueError("'id' must be a non-empty string")
        specs = node_specs(params.get("resources"))
        tags = params.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ValueError("'tags' must be a list of strings")
        old = self.children.get(name)
        if old is not None and old.connected:
            self._lose(old, "registered again")  # a restarted child, or a duplicate id: the newest wins
        entry = ChildEntry(name)
        self.children[name] = entry
        self.service.child_attached(name, specs, tuple(dict.fromkeys([name, *tags])))
        log.info("child %s registered: %d cores on %d nodes, tags %s, requests at %s", name,
                 sum(s.cores for s in specs), len(specs), ",".join(tags) or "-", params.get("address"))
        return {"id": name, "link": self.address, "token": entry.token}

    # ----- outgoing -----
    def launch(self, tasks, now: float) -> None:
        children = self.children
        unsendable = []
        for task in tasks:
            entry = children[task.alloc.child.name]
            job = task.job
            if job.name not in entry.jobs_sent:
                desc = self._description(job)
                if isinstance(desc, str):  # why it cannot travel
                    unsendable.append((task.tid, Outcome(None, 0, "", now, now, 0.0, 0, None, desc, "")))
                    continue
                entry.jobs_sent.add(job.name)
                entry.outbox.append(["job", desc])
            entry.gives.setdefault(job.name, []).append(task.it)
        self.flush()
        if unsendable:
            # FAILED with the reason, on the next turn (not inside the scheduling pass); no child sees it
            self._loop.call_soon(self.cb.on_finished, unsendable)

    def _description(self, job) -> dict | str:
        """The job as a child takes it, or why it cannot be sent (checked once, in the shape it
        travels in: a description the encoder refuses, e.g. nested too deep, would stop every
        frame to that child, heartbeats too)."""
        desc = self._descriptions.get(job.name)
        if desc is None:
            desc = job.spec.to_dict()
            desc.pop("dependencies", None)  # met at the governor before any iteration is handed out
            try:
                protocol.encode([["job", desc]])
            except (TypeError, ValueError) as exc:
                desc = f"the job description cannot be sent to a child: {exc}"
                log.error("job %s: %s", job.name, desc)
            self._descriptions[job.name] = desc
        return desc

    def cancel(self, task, grace: float) -> None:
        entry = self.children.get(task.alloc.child.name)
        if entry is not None and entry.connected:
            entry.cancels.setdefault(task.job.name, []).append(task.it)
            if not self._flush_pending and self._loop is not None:
                self._flush_pending = True  # cancelling a big job: one frame per child, not per task
                self._loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_pending = False
        self.flush()

    def forget(self, name: str) -> None:
        """A job was removed at the governor: children drop their copy (its name may come back)."""
        self._descriptions.pop(name, None)
        for entry in self.children.values():
            if name in entry.jobs_sent:
                entry.jobs_sent.discard(name)
                entry.outbox.append(["forget", name])
        self.flush()

    def flush(self) -> None:
        now = time.monotonic()
        sent = False
        for entry in self.children.values():
            if entry.gives:
                entry.outbox.extend(["give", name, to_ranges(its)] for name, its in entry.gives.items())
                entry.gives = {}
            if entry.cancels:
                entry.outbox.extend(["cancel", name, its] for name, its in entry.cancels.items())
                entry.cancels = {}
            if entry.outbox:
                frame = _encode_outbox(entry)
                entry.outbox = []
                entry.last_sent = now
                self._send(entry.identity, frame)
                sent = True
        if sent and self._loop is not None:
            self._read_again()

    def _send(self, identity: bytes, frame: bytes) -> None:
        try:
            self._sock.send_multipart([identity, frame], flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("cannot send to child %s: %s", identity.decode(errors="replace"), exc)

    # ----- incoming -----
    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None or sock.closed:
            return
        now = time.monotonic()
        self._ended = []
        for _ in range(FRAMES_PER_TURN):
            if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                break
            if len(self._ended) >= ENDS_PER_TURN:
                self._read_again()  # a big child's frames hold thousands of ends each
                break
            try:
                ident, frame = sock.recv_multipart(zmq.NOBLOCK)
            except (zmq.Again, ValueError):
                break
            name, _, token = ident.decode(errors="replace").partition("#")
            entry = self.children.get(name)
            if entry is None or entry.token != token:
                self._send(ident, protocol.encode([["exit", "superseded"]]))  # an incarnation declared lost
                continue
            entry.last_seen = now
            entry.silence_noted = False
            try:
                messages = protocol.decode(frame)
            except Exception:
                log.warning("child %s sent an undecodable frame", name)
                continue
            for msg in messages:
                self._dispatch(entry, msg)
        else:
            self._read_again()  # more may wait
        if self._ended:  # one scheduling pass for everything that ended in this turn
            ended, self._ended = self._ended, []
            self.cb.on_finished(ended)
        self.flush()

    def _dispatch(self, entry: ChildEntry, msg: list) -> None:
        kind = msg[0]
        if kind == "fin":
            self._finished(entry, msg[1])
        elif kind == "exe":
            self.service.child_executing(msg[1])
        elif kind == "hb":
            self.service.child_usage(entry.name, msg[1])
        elif kind == "addr":
            entry.address = msg[1]
        elif kind == "hello":
            entry.connected = True
            log.info("child %s connected", entry.name)
            self.cb.on_node_ready(entry.name)
            self._check_ready()
        elif kind == "back":
            self.service.child_gave_back(entry.name, msg[1])
        elif kind == "bye":
            self._bye(entry, msg[1])

    def _finished(self, entry: ChildEntry, reports: list) -> None:
        find = self.service.running_task
        observe = self.service.pool.observe
        finished = self._ended
        for name, it, state, rc, pid, pname, start, end, cpu, maxrss, where, error, wd in reports:
            task = find(name, it)
            if task is None or task.alloc.child.name != entry.name:
                continue  # re-queued meanwhile (the child was lost): the new run counts
            reason = "canceled" if state == "CANCELED" else None
            # the core derives the state from rc and error: an end the child calls FAILED must not
            # read as a success
            if state in FAILED_STATES and not error and rc == 0:
                error = state.lower()
            if start and end:
                observe(task.alloc.child, end - start)
            finished.append((task.tid, Outcome(rc, pid, pname, start, end, cpu, maxrss, reason, error, wd, where)))

    def _bye(self, entry: ChildEntry, how: str) -> None:
        entry.connected = False
        if how == "done":
            log.info("child %s left", entry.name)
            del self.children[entry.name]
            self.cb.on_node_lost(entry.name, True)
        else:
            self._lose(entry, f"it stopped ({how})")

    def _check_ready(self) -> None:
        if self.ready or self.starter is None:
            return
        up = sum(1 for e in self.children.values() if e.connected)
        if up >= self.starter.count:
            self.ready = True
            log.info("%d children connected after %.2f s: scheduling starts", up, time.monotonic() - self._started_at)
            self.cb.on_ready()

    # ----- failures -----
    async def _watch(self) -> None:
        s = self.settings
        tick = time.monotonic()
        while not self.stopping:
            await asyncio.sleep(min(s.heartbeat, 0.5))
            if self.stopping:
                return
            self._on_readable()  # what waits unread is not silence
            now = time.monotonic()
            if stalled(now, tick, s.timeout):
                for entry in self.children.values():
                    entry.last_seen = now  # the governor was stopped, not its children silent
            tick = now
            if not self.ready and self.starter is not None and now - self._started_at > s.register_timeout:
                up = sum(1 for e in self.children.values() if e.connected)
                self.cb.on_fatal(f"only {up} of {self.starter.count} children connected within "
                                 f"{s.register_timeout:g} s (see partition-*.log in the service directory)")
                return
            for entry in list(self.children.values()):
                exited = self.starter is not None and self.starter.exited(entry.name)
                if entry.connected and exited:
                    self._lose(entry, "its process ended")
                elif entry.connected and now - entry.last_seen > s.timeout:
                    self._silent(entry, now - entry.last_seen)
                elif entry.connected and now - entry.last_sent > s.heartbeat:
                    entry.outbox.append(["hb"])
            if self.starter is not None:
                self.starter.restart_dead(self.children)
            self.flush()

    def _silent(self, entry: ChildEntry, silent: float) -> None:
        """A silent child is lost only if its connection is not up: one that is busy, or stopped and
        continued later, is waited for (its tasks go on; re-running them would run them twice)."""
        up = self.connections.is_up(entry.address)
        if up:
            if not entry.silence_noted:
                entry.silence_noted = True
                log.warning("child %s has been silent for %.1f s but its connection is up: waiting for it "
                            "(stopped or busy, not gone)", entry.name, silent)
            return
        self._lose(entry, f"silent for {silent:.1f} s" + (", its connection closed" if up is False else ""))

    def _lose(self, entry: ChildEntry, why: str) -> None:
        was_connected = entry.connected
        entry.connected = False
        entry.token = secrets.token_hex(4)  # whatever that process still sends is ignored
        entry.jobs_sent.clear()
        entry.gives.clear()
        entry.cancels.clear()
        entry.outbox = []
        restartable = self.starter is not None and self.starter.restartable(entry.name)
        log.error("child %s lost (%s): its work is re-queued%s", entry.name, why,
                  "; it is started again" if restartable else "")
        self._send(entry.identity, protocol.encode([["exit", "lost"]]))
        entry.identity = f"{entry.name}#{entry.token}".encode()
        if was_connected:
            self.cb.on_node_lost(entry.name, not restartable)


def _encode_outbox(entry) -> bytes:
    """One frame of the child's messages. A message the encoder refuses is dropped with an error in
    the log, never the frame: heartbeats and every other message still go."""
    try:
        return protocol.encode(entry.outbox)
    except (TypeError, ValueError):
        kept = []
        for message in entry.outbox:
            try:
                protocol.encode(message)
                kept.append(message)
            except (TypeError, ValueError) as exc:
                log.error("child %s: dropped a message that cannot be encoded (%s): %s", entry.name, exc,
                          str(message)[:200])
        return protocol.encode(kept)
