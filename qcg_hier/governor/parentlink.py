"""A child manager's side of its governor (`qcg-pm-service --parent ADDRESS`).

The child registers with upstream's `register` request at the governor's address, then
keeps one DEALER connection to the governor's child link: it takes job descriptions and
ranges of iterations to run, and sends back, in batches, which iterations started, which
ended (with their outcome), and heartbeats with its cores in use. A governor that stays
silent past the timeout is taken for dead: the child kills its tasks and exits.

Leaving: `finishAfterAllTasksDone` sent to a child makes it return its not-started
iterations to the governor, finish what runs, and say bye. Stopped by a signal, it says
bye first, so that the governor re-queues its work instead of taking the kills as cancels.
"""
import asyncio
import logging
import socket
import time
from pathlib import Path

import zmq
import zmq.asyncio

from .. import protocol
from ..api.manager import resolve_address
from ..core.errors import CoreError, SubmitError
from ..core.jobdesc import parse_job
from ..core.scheduler import task_ends
from ..core.states import JobState
from ..auth import client_env, read_service_dir
from ..service.servicedir import PARENT_FILE, find_service_dirs
from ..launch.launcher import FRAMES_PER_TURN, stalled
from ..readagain import ReadAgain
from ..connections import OutgoingConnection, keep_alive
from ..socket_exit import close_delivering
from .childlink import LinkSettings

log = logging.getLogger("qcg_hier")
# Starts and ends go up at most this often: under load they travel in batches (every send wakes the
# governor and its I/O thread), while the first after a quiet spell goes at once. The governor's
# prefetch keeps a busy child's queue filled for longer than this.
FORWARD_INTERVAL = 0.005


class ParentLinkError(Exception):
    pass


def fin_entry(job, it: int, state: JobState, record) -> list:
    """One iteration's end, as the governor needs it for its records and jobs.report."""
    o = record.outcome if record is not None else None
    where = record.allocation if record is not None else ""
    if o is None:  # it never ran here: the record's message says why
        why = record.message if record is not None else None
        return [job.name, it, state.value, None, 0, "", 0.0, 0.0, 0.0, 0, where, why or state.value.lower(), ""]
    # the outcome as the launcher gave it: the governor's core derives the state and message again
    return [job.name, it, state.value, o.rc, o.pid, o.pname, o.start, o.end, o.cpu, o.maxrss_kb, where, o.error,
            o.wd]


class ParentLink:
    def __init__(self, service, parent: str, settings: LinkSettings, tags: list):
        self.service = service
        self.parent = parent
        self.settings = settings
        self.tags = tags
        self.address = None
        self.credentials = None
        self.sock = None
        self.outbox: list = []
        self.exe: dict = {}  # job name -> iterations started since the last frame
        self.fin: list = []
        self.refused: dict = {}  # job name -> why this child cannot run it
        self.leaving = False
        self.detached = False  # bye sent (or the governor is gone): nothing more goes up
        self.last_seen = time.monotonic()
        self.last_sent = 0.0
        self._silence_noted = False
        self.connection = None
        self.last_used = -1  # cores in use as last reported
        self._loop = None
        self._read_again = ReadAgain(self._on_readable)
        self._forward_timer = None
        self._tasks = []

    # ----- joining -----
    async def start(self) -> None:
        # marked a child before it can be found: a governor and its children often share a directory
        (self.service.service_dir / PARENT_FILE).write_text(self.parent)
        try:
            self.address, self.credentials = self._resolve()
        except Exception as exc:
            raise ParentLinkError(f"--parent {self.parent}: {exc}") from None
        if self.credentials is not None and self.credentials.source is None:
            # keys set by hand in the environment: this child's tasks get a file of them, not the keys
            self.credentials = self.credentials.client_file(self.service.service_dir / "governor-keys.json")
        reply = await self._register()
        data = reply.get("data") or {}
        ctx = zmq.asyncio.Context.instance()
        self.sock = zmq.Socket(ctx, zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, f"{data['id']}#{data['token']}".encode())
        keep_alive(self.sock)
        if self.credentials is not None:
            self.credentials.secure_client(self.sock)
        # the governor tells our connection by the address we report at each (re)connection
        self.connection = OutgoingConnection(self.sock, self._report_address)
        self.connection.start()
        self.sock.connect(data["link"])
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.getsockopt(zmq.FD), self._on_readable)
        self.last_seen = time.monotonic()
        self.outbox.append(["hello"])
        self._send_heartbeat()
        self._tasks.append(asyncio.ensure_future(self._watch()))
        (self.service.service_dir / PARENT_FILE).write_text(self.address)
        log.info("registered with governor %s as %s", self.address, data["id"])

    def _resolve(self) -> tuple:
        """The governor's address and keys: from an address (keys from the environment), or from the
        service directories under a directory, never this child's own nor another child's."""
        path = Path(self.parent)
        if "://" in self.parent or not path.is_dir():
            return resolve_address(self.parent)
        for sdir in find_service_dirs(path):
            if sdir.resolve() == self.service.service_dir.resolve() or (sdir / PARENT_FILE).exists():
                continue
            if (sdir / "address").exists():
                address, credentials = read_service_dir(sdir)
                if credentials is None and getattr(self.service.config, "auth", "curve") != "none":
                    raise ParentLinkError(f"the service in {sdir} has no keys (it runs without authentication): "
                                          f"give this child --auth none to join it anyway")
                return address, credentials
        raise ParentLinkError("no running governor found there (no address file in a service directory "
                              "that is not a child's)")

    async def _register(self) -> dict:
        s = self.service
        nodes = [{"name": n.name, "total_cores": n.total, "gpus": list(n.gpus), "mem_mb": n.mem_mb}
                 for n in s.pool.nodes]
        request = {"request": "register", "entity": "manager",
                   "params": {"id": s.instance_id, "address": s.zmq_address, "host": socket.gethostname(),
                              "resources": {"type": "SLURM" if s.slurm else "LOCAL", "nodes": nodes},
                              "tags": self.tags}}
        sock = zmq.asyncio.Context.instance().socket(zmq.REQ)
        sock.linger = 0
        if self.credentials is not None:
            self.credentials.secure_client(sock)
        sock.connect(self.address)
        try:
            await sock.send(protocol.encode(request))
            wait = self.settings.timeout
            if not await sock.poll(wait * 1000):
                raise ParentLinkError(f"governor {self.address} did not answer the registration within "
                                      f"{wait:g} s (--child-timeout; wrong address, or not its credentials?)")
            reply = protocol.decode(await sock.recv())
        finally:
            sock.close(0)
        if reply.get("code") != 0:
            raise ParentLinkError(f"governor {self.address} refused the registration: {reply.get('message')}")
        return reply

    def task_env(self) -> dict:
        """Tasks of a child talk to the governor (one view of the campaign), not to the child."""
        return client_env(self.address, self.credentials)

    # ----- going up -----
    def started(self, tasks) -> None:
        if not self.detached:
            exe = self.exe
            for t in tasks:
                its = exe.get(t.job.name)
                if its is None:
                    exe[t.job.name] = [t.it]
                else:
                    its.append(t.it)

    def forward(self, events) -> None:
        """Iteration ends (and plain jobs' ends) go to the governor."""
        if self.detached:
            return
        self.fin += [fin_entry(job, it, state, record) for job, it, state, record in task_ends(events)]
        self.flush_soon()

    def flush_soon(self) -> None:
        """Starts and ends go up now, or, when a frame went up less than FORWARD_INTERVAL ago, at
        the end of that interval (with whatever else has come by then)."""
        wait = self.last_sent + FORWARD_INTERVAL - time.monotonic()
        if wait <= 0 or self._loop is None:
            self.flush()
        elif self._forward_timer is None:
            self._forward_timer = self._loop.call_later(wait, self._forward_due)

    def _forward_due(self) -> None:
        self._forward_timer = None
        self.flush()

    def flush(self) -> None:
        if self.detached or self.sock is None:
            return
        if self.exe:
            self.outbox.append(["exe", self.exe])
            self.exe = {}
        if self.fin:
            self.outbox.append(["fin", self.fin])
            self.fin = []
        if self.outbox:
            used = self.service.pool.used_cores
            if used != self.last_used:  # the governor's live totals follow every change
                self.last_used = used
                self.outbox.append(["hb", used])
            frame = protocol.encode(self.outbox)
            self.outbox = []
            self.last_sent = time.monotonic()
            try:
                self.sock.send(frame, flags=zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                log.warning("cannot send to the governor: %s", exc)
        if self._loop is not None:
            self._read_again()

    def _send_heartbeat(self) -> None:
        self.last_used = self.service.pool.used_cores
        self.outbox.append(["hb", self.last_used])

    # ----- coming down -----
    def _on_readable(self) -> None:
        sock = self.sock
        if sock is None or sock.closed:
            return
        got = False
        for _ in range(FRAMES_PER_TURN):
            if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                break
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.last_seen = time.monotonic()
            self._silence_noted = False
            try:
                messages = protocol.decode(frame)
            except Exception:
                log.warning("the governor sent an undecodable frame")
                continue
            for msg in messages:
                self._dispatch(msg)
            got = True
        else:
            self._read_again()  # more may wait
        if got:
            self.service.kick()

    def _dispatch(self, msg: list) -> None:
        kind = msg[0]
        s = self.service
        now = time.time()
        if kind == "give":
            name, runs = msg[1], msg[2]
            its = [it for a, b in runs for it in range(a, b)]
            if self.leaving:
                self.outbox.append(["back", {name: its}])  # crossed our leaving on the way
            elif name in self.refused:
                self._refuse(name, its)
            elif s.core.give(name, its, now) != len(its):
                log.warning("governor gave iterations of %s this child cannot take", name)
        elif kind == "job":
            self._adopt(msg[1], now)
        elif kind == "cancel":
            name, its = msg[1], msg[2]
            job = s.core.jobs.get(name)
            for it in its:
                try:
                    s.cancel(f"{name}:{it}" if job is not None and job.iterative else name)
                except CoreError:
                    pass  # it ended meanwhile: its end is on its way up
        elif kind == "forget":
            job = s.core.jobs.get(msg[1])
            if job is not None and not job.running:
                s.core.forget(job)
        elif kind == "exit":
            log.info("the governor says exit (%s)", msg[1] if len(msg) > 1 else "finished")
            self.detached = True
            s.stop_now()

    def _adopt(self, desc: dict, now: float) -> None:
        name = desc.get("name")
        self.refused.pop(name, None)
        try:
            self.service.core.adopt(parse_job(desc), now)
        except (SubmitError, CoreError, ValueError) as exc:
            log.error("cannot run job %s here: %s", name, exc)
            self.refused[name] = str(exc)

    def _refuse(self, name: str, its: list) -> None:
        why = self.refused[name]
        self.fin.extend([name, it, JobState.FAILED.value, None, 0, "", 0.0, 0.0, 0.0, 0, "", why, ""] for it in its)

    # ----- liveness and leaving -----
    async def _watch(self) -> None:
        s = self.settings
        tick = time.monotonic()
        while not self.detached:
            await asyncio.sleep(min(s.heartbeat, 0.5))
            self._on_readable()  # what waits unread is not silence
            if self.detached:
                return
            now = time.monotonic()
            if stalled(now, tick, s.timeout):
                self.last_seen = now  # this process was stopped, not the governor silent: a fresh window
            tick = now
            if now - self.last_seen > s.timeout and self._governor_gone(now - self.last_seen):
                return
            if now - self.last_sent > s.heartbeat:
                self._send_heartbeat()
            self.flush()

    def _governor_gone(self, silent: float) -> bool:
        """A silent governor is gone only if the connection to it is down: one that is busy, or
        stopped and continued later, is waited for (our tasks go on meanwhile)."""
        if self.connection.up:
            if not self._silence_noted:
                self._silence_noted = True
                log.warning("the governor has been silent for %.1f s but its connection is up: waiting for it "
                            "(stopped or busy, not gone)", silent)
            return False
        log.error("the governor has been silent for %.1f s and its connection is down: stopping (tasks are killed)",
                  silent)
        self.detached = True
        self.service.stop_now(code=1)
        return True

    def _report_address(self, address: str) -> None:
        self.outbox.append(["addr", address])
        self.flush()

    def leave(self) -> None:
        """Return the not-started iterations to the governor; the running ones finish here first."""
        if self.leaving:
            return
        self.leaving = True
        back = self.service.core.take_back()
        self.outbox.append(["back", back])
        log.info("leaving the governor: %d not-started iterations returned", sum(len(v) for v in back.values()))
        self.flush()

    def say_bye(self, how: str) -> None:
        if self.detached or self.sock is None:
            return
        self.flush()
        self.outbox.append(["bye", how])
        self.flush()
        self.detached = True

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._forward_timer is not None:
            self._forward_timer.cancel()
        if self.sock is not None:
            self._loop.remove_reader(self.sock.getsockopt(zmq.FD))
            self.connection.close()
            close_delivering(self.sock)  # the last frames (bye) still go out
