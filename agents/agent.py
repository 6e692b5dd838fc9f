"""Node-local launcher agent of qcg-hier.

One agent runs on every compute node.  It talks to the manager over a single
zmq DEALER socket (identity = node name), or, with ``--manager stdio``, over its
stdin and stdout when the manager is its parent; it spawns the tasks it is told to run
(``os.posix_spawn``, one process group per task), binds them to CPUs, enforces
wall time, kills them on cancel, reaps them and reports their exits in batches
together with their resource usage.

Wire format: every zmq message is ONE frame holding an orjson-encoded JSON
array of messages; each message is a JSON array whose first element is its
kind.  Over stdin/stdout each frame comes after its length (4 bytes,
big-endian).  With ``--config-from-stdin`` (an agent started ahead of its
manager) the first line of stdin is a JSON list of further arguments.

manager -> agent::

    ["env", {NAME: value | null}]      update the base environment
    ["run", tid, spec]                 spec: argv, wd, env, tenv, stdin,
                                       stdout, stderr, cpus, wt, grace
                                       (env: changes shared by many tasks,
                                       cached; tenv: this task's own)
    ["cancel", tid, grace]             SIGTERM, SIGKILL after grace seconds
    ["ping", x]                        answered with ["pong", x]
    ["exit"]                           kill everything, report, "bye", exit 0

agent -> manager::

    ["ready", {"node", "pid", "host", "cpus"}]
    ["done", tid, pid, rc, start, end, cpu, maxrss_kb, reason, error]
    ["pong", x]   ["hb", time]   ["bye", node]

How it stays fast (a few tens of microseconds per task on top of the bare
``posix_spawn`` + ``wait4`` cost):

* one thread, one loop: a poller watches the link to the manager and the
  read end of a non-blocking pipe installed with ``signal.set_wakeup_fd``, so
  that SIGCHLD (and SIGTERM/SIGINT) wake the loop up;
* SIGCHLD is blocked while the loop works and unblocked only around the poll:
  the exits of a whole batch cost one signal delivery;
* no per-task objects beyond a small ``__slots__`` record, no per-task
  sockets, threads or logging; everything produced in one iteration is sent in
  one frame (and, in long batches, ended tasks are reported every few
  launches so that the manager can refill the node early);
* the agent's own descriptors 0-2 are /dev/null (its diagnostics go to a
  private copy of stderr), so tasks without redirections need no file actions;
* a task is bound to its CPUs after the spawn (the agent itself never moves),
  and not at all when they are the agent's own set;
* merged environments and PATH look-ups are cached.

Nothing a task starts outlives it (see README, "No orphans"):

* every task is spawned in its own process group, killed (SIGKILL) once its main process has
  ended;
* the agent is a child subreaper (``PR_SET_CHILD_SUBREAPER``): a process that left its task's
  group (``setsid``, a double-forked daemon) and lost its parent becomes the agent's child, so
  it never leaves the agent's process tree.  Every task's environment carries a marker of this
  agent and the task, ``QCG_HIER_TASK_<agent id>=<n>`` (``/proc/<pid>/environ`` survives
  ``setsid`` and ``exec``); an adopted process is killed, with its process group, when its task
  ends;
* the agent notices adoptions cheaply: after task ends (at most every
  ``ORPHAN_CHECK_INTERVAL`` seconds, whatever the task rate), and every
  ``ORPHAN_IDLE_INTERVAL`` seconds while tasks run, it reads the list of its own children
  (``/proc/<pid>/task/<pid>/children``, one read) and compares its length with the number of
  children it knows of; only a difference leads to reading the newcomers' environments.  An
  adopted process without the marker (an emptied environment) belongs to the task whose process
  group it is in, else to none known: it is then killed once every task that was running when
  it was found has ended.  Adopted processes that end are reaped by the same ``wait4(-1)``;
* on its own exit (told to, signal, parent death, manager lost) it kills its tasks and then
  every child it has left, level by level, until only the watchdog remains;
* the watchdog, forked at start, kills when the agent dies (``kill -9`` included) every task
  process group and every process the agent had adopted, with all their descendants (whatever
  group or session they moved to; the agent shares the adopted pids with it as it does the
  groups), and then, in rounds, every process whose environment carries this agent's marker,
  wherever the agent's death reparented it.
"""

from __future__ import annotations

import argparse
import faulthandler
import heapq
import logging
import mmap
import os
import select
import signal
import stat
import socket
import sys
import time

import orjson

log = logging.getLogger("qcg_hier_agent")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_MANAGER_LOST = 3

DEFAULT_GRACE = 5.0
# How long a PATH look-up result stays valid (seconds).
WHICH_TTL = 2.0
# How long to wait for SIGKILLed tasks to be reaped when shutting down.
REAP_ON_EXIT_TIMEOUT = 5.0
# Upper bound of frames read from the socket in one loop iteration, so that a
# flood of requests cannot starve reaping and timers.
MAX_FRAMES_PER_ITERATION = 256
MAX_BATCH_SECONDS = 0.05
# While launching a long batch, look for ended tasks every this many launches
# and report them at once (keeps the manager's pipeline full).
REPORT_EVERY = 16
# Default search path when the task environment has no PATH (glibc's _CS_PATH).
DEFAULT_PATH = "/bin:/usr/bin"
# After task ends, look for adopted processes (see Agent._check_orphans) at most this often.
ORPHAN_CHECK_INTERVAL = 0.1
# The same where the kernel cannot list a process's children (a /proc scan each time).
ORPHAN_SCAN_INTERVAL = 1.0
# While tasks run, look at least this often (a process adopted from a task that still runs).
ORPHAN_IDLE_INTERVAL = 2.0
# The variable that tells a task's processes, prefix of its name (the rest: the agent's id).
MARK_PREFIX = "QCG_HIER_TASK_"
# The watchdog's rounds of killing the marked processes when the agent is gone.
WATCHDOG_ROUNDS = 20

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

# Signals whose "ignored" disposition must not leak from the (Python) agent
# into tasks: Python ignores SIGPIPE and SIGXFSZ at start-up.
_RESET_SIGNALS = tuple(
    s for s in (getattr(signal, "SIGPIPE", None), getattr(signal, "SIGXFSZ", None)) if s is not None
)

# heap actions
_WALLTIME = 0
_KILL = 1

_WFLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
_RFLAGS = os.O_RDONLY | os.O_CLOEXEC


class LaunchError(Exception):
    """A task could not be started; the message is reported to the manager."""


class TaskGuard:
    """The process groups of the running tasks, in memory shared with the watchdog (see
    _start_watchdog): slot i holds a group id, or minus the pid of a process the agent adopted
    (see Agent._adopt), or 0; slot 0 holds the highest slot ever used.

    Plain stores, no system call and no message: a pipe line per start and per end woke the
    watchdog twice per task, and on a small machine those wake-ups slowed every task start."""

    SLOTS = 1 << 20  # tasks alive at once on one node; pages are touched only as slots are used

    def __init__(self):
        self.memory = mmap.mmap(-1, 4 * (self.SLOTS + 1), flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self.slots = memoryview(self.memory).cast("i")
        self.free: list[int] = []
        self.top = 0

    def add(self, pgid: int) -> int:
        if self.free:
            slot = self.free.pop()
        elif self.top < self.SLOTS:
            self.top = slot = self.top + 1
            self.slots[0] = slot
        else:
            return 0  # cannot happen on a real node; the task is then not guarded
        self.slots[slot] = pgid
        return slot

    def remove(self, slot: int) -> None:
        if slot:
            self.slots[slot] = 0
            self.free.append(slot)

    def live(self) -> list[int]:
        slots = self.slots
        return [slots[i] for i in range(1, slots[0] + 1) if slots[i]]


class Task:
    __slots__ = ("tid", "pid", "start", "wt", "grace", "reason", "alive", "slot", "seq", "orphans")

    def __init__(self, tid, pid, start, wt, grace, seq):
        self.tid = tid
        self.pid = pid
        self.start = start
        self.wt = wt
        self.grace = grace
        self.reason = None
        self.alive = True
        self.slot = 0  # in the TaskGuard
        self.seq = seq  # the value of the agent's marker variable in its environment
        self.orphans = None  # pids of its processes adopted by the agent (a set), if any


STDIO = "stdio"  # --manager stdio: the manager is our parent, over our stdin and stdout
_HEADER = 4  # pipe frames: 4-byte big-endian length, then the frame


class ZmqLink:
    """The manager over a zmq DEALER socket (identity = node name), CURVE-secured when given keys."""

    def __init__(self, address, node, linger, server_key=None, public_key=None, secret_key=None):
        import zmq  # here only: a local agent (pipes) never pays for its import

        self._zmq = zmq
        self.ctx = zmq.Context(1)
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, node.encode("utf-8"))
        sock.setsockopt(zmq.LINGER, linger)
        if server_key:
            if not (public_key and secret_key):
                public_key, secret_key = (k.decode("ascii") for k in zmq.curve_keypair())
            sock.setsockopt(zmq.CURVE_SERVERKEY, server_key.encode("ascii"))
            sock.setsockopt(zmq.CURVE_PUBLICKEY, public_key.encode("ascii"))
            sock.setsockopt(zmq.CURVE_SECRETKEY, secret_key.encode("ascii"))
        # TCP keepalive: a dead manager node is found out by the kernel (about 11 s), and a manager
        # that is stopped or busy keeps its connection (the kernel answers for it)
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 5)
        sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 2)
        sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)
        self._monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self._connected = False
        sock.connect(address)
        self.sock = sock
        self.pollable = sock  # what the poller watches for input
        self.out_fd = None  # no output of our own waiting: zmq queues it
        self.eof = False  # a socket has no end: a silent manager is judged by its connection
        self.buffered = False

    def peer_connected(self) -> bool:
        """Whether the connection to the manager is up (its monitor's events, read when asked)."""
        from zmq.utils.monitor import parse_monitor_message

        zmq = self._zmq
        while True:
            try:
                event = parse_monitor_message(self._monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return self._connected
            self._connected = event["event"] == zmq.EVENT_CONNECTED

    def poller(self):
        """(poller, its POLLIN, its POLLOUT): a zmq socket needs zmq's poller."""
        zmq = self._zmq
        return zmq.Poller(), zmq.POLLIN, zmq.POLLOUT

    def next_frame(self):
        zmq = self._zmq
        try:
            return self.sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return None

    def send(self, frame) -> bool:
        zmq = self._zmq
        try:
            self.sock.send(frame, zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def close(self, linger):
        self.sock.disable_monitor()
        self._monitor.close(0)
        self.sock.close(linger=linger)
        self.ctx.term()


class PipeLink:
    """The manager over two pipes (a local agent, child of its manager): length-prefixed frames.

    No I/O thread and no encryption: nobody but our parent holds the other ends. The end of the
    input means the manager is gone."""

    def __init__(self, fd_in, fd_out, initial=b""):
        os.set_blocking(fd_in, False)
        os.set_blocking(fd_out, False)
        self.fd_in, self.fd_out = fd_in, fd_out
        self.pollable = fd_in
        self._in = bytearray(initial)
        self._out = bytearray()
        self.eof = False

    def peer_connected(self) -> bool:
        """Our parent holds the other ends: they close when it dies (the end of input), never while
        it is stopped or busy."""
        return not self.eof

    @staticmethod
    def poller():
        """(poller, its POLLIN, its POLLOUT)."""
        return select.poll(), select.POLLIN, select.POLLOUT

    @property
    def buffered(self) -> bool:
        """A whole frame already read: do not wait for the descriptor to be readable."""
        buf = self._in
        return len(buf) >= _HEADER and len(buf) >= _HEADER + int.from_bytes(buf[:_HEADER], "big")

    @property
    def out_fd(self):
        return self.fd_out if self._out else None  # output waiting for room in the pipe

    def next_frame(self):
        buf = self._in
        while not self.buffered:
            try:
                data = os.read(self.fd_in, 1 << 16)
            except (BlockingIOError, InterruptedError):
                return None
            if not data:
                self.eof = True
                return None
            buf += data
        size = int.from_bytes(buf[:_HEADER], "big")
        frame = bytes(buf[_HEADER:_HEADER + size])
        del buf[:_HEADER + size]
        return frame

    def send(self, frame) -> bool:
        self._out += len(frame).to_bytes(_HEADER, "big")
        self._out += frame
        self.drain()
        return True

    def drain(self) -> None:
        out = self._out
        while out:
            try:
                n = os.write(self.fd_out, out)
            except (BlockingIOError, InterruptedError):
                return
            except BrokenPipeError:
                out.clear()  # the manager is gone: the input's end tells the loop
                return
            del out[:n]

    def close(self, linger):
        if self._out and linger:
            os.set_blocking(self.fd_out, True)  # the last words ("bye", final reports)
            try:
                os.write(self.fd_out, self._out)
            except OSError:
                pass
        for fd in (self.fd_in, self.fd_out):
            try:
                os.close(fd)
            except OSError:
                pass


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _noop_handler(signum, frame):  # pragma: no cover - trivial
    pass


class Agent:
    def __init__(
        self,
        address: str,
        node: str,
        heartbeat_interval: float = 2.0,
        manager_timeout: float = 10.0,
        curve_server_key: str | None = None,
        curve_public_key: str | None = None,
        curve_secret_key: str | None = None,
        linger: int = 1000,
        detach_stdio: bool = False,
        initial_input: bytes = b"",
        mark_name: str | None = None,
    ):
        self.address = address
        self.node = node
        self.heartbeat_interval = float(heartbeat_interval)
        self.manager_timeout = float(manager_timeout)
        self.curve_server_key = curve_server_key
        self.curve_public_key = curve_public_key
        self.curve_secret_key = curve_secret_key
        self.linger = linger
        # True when the agent owns the process (run by main()): its own
        # descriptors 0-2 are then redirected to /dev/null.
        self.detach_stdio = detach_stdio
        self.initial_input = initial_input  # the start of the manager's stream, read with our options

        self.base_env: dict[str, str] = dict(os.environ)
        self._env_cache: dict = {}
        self._which_cache: dict = {}

        self.by_pid: dict[int, Task] = {}  # in launch order
        self.guard = None  # a TaskGuard shared with the watchdog, when main() started one
        # Escaped processes (see the module's docstring). Every task's environment gets
        # mark_name=<its seq>; the agent is a subreaper only when main() made it one.
        self.mark_name = mark_name or new_mark_name()
        self.mark = self.mark_name.encode("ascii") + b"="
        self._launches = 0  # the seq of the last task launched
        self.subreaper = False
        self.others: set[int] = set()  # children that are not tasks: the watchdog
        self.adopted: dict[int, Task | None] = {}  # adopted pid -> its running task; None: killed
        self.unknown: dict[int, int] = {}  # adopted pid of no known task -> _launches when found
        self._slots: dict[int, int] = {}  # adopted pid -> its slot in the guard (as -pid)
        self._check_at = 0.0  # when to look for adopted processes (monotonic; 0: not planned)
        self._last_check = 0.0
        self._check_interval = ORPHAN_CHECK_INTERVAL
        self._children_path = f"/proc/{os.getpid()}/task/{os.getpid()}/children"
        self.by_tid: dict = {}
        self.heap: list = []
        self._seq = 0

        self.orig_cpus = os.sched_getaffinity(0)
        self._checked_cpus = None  # the last CPU list found valid
        self._checked_binding = None  # and what it binds to (None: the agent's own CPUs)
        self.cwd = None  # last directory we chdir()ed into during this batch

        self.now = time.monotonic()
        self.stop_signal = 0
        self._backlog: list = []
        self.report_every = REPORT_EVERY
        self._since_reap = 0

        self.link = None
        self.poller = None
        self._pollout = 0  # the poller's flag for "room to write"
        self._polled_out = None  # the descriptor polled for room to write, if any
        self._wake_r = self._wake_w = -1
        self.null_r = self.null_w = -1
        self.null_actions = None

    # ------------------------------------------------------------------ setup

    def _setup(self):
        _ensure_std_fds()
        if self.address == STDIO:  # before 0 and 1 are pointed at /dev/null
            self.link = PipeLink(os.dup(0), os.dup(1), self.initial_input)
        self.null_r = os.open(os.devnull, _RFLAGS)
        self.null_w = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        d = os.POSIX_SPAWN_DUP2
        if self.detach_stdio:
            # Tasks inherit the agent's descriptors 0-2 unless redirected.
            # main() moved the agent's own diagnostics to a private copy of
            # stderr, so point 0-2 at /dev/null once: tasks without
            # redirections then need no file actions at all (each one costs
            # syscalls and time in posix_spawn).
            os.dup2(self.null_r, 0)
            os.dup2(self.null_w, 1)
            os.dup2(self.null_w, 2)
            self.null_actions = None
        else:
            self.null_actions = [(d, self.null_r, 0), (d, self.null_w, 1), (d, self.null_w, 2)]

        # start from a clean signal mask whatever our parent left us
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_r, self._wake_w = r, w
        signal.signal(signal.SIGCHLD, _noop_handler)
        signal.siginterrupt(signal.SIGCHLD, False)
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)

        if self.link is None:
            self.link = ZmqLink(self.address, self.node, self.linger, self.curve_server_key,
                                self.curve_public_key, self.curve_secret_key)
        self.poller, pollin, self._pollout = self.link.poller()
        self.poller.register(self.link.pollable, pollin)
        self.poller.register(r, pollin)

    def _on_stop_signal(self, signum, frame):
        self.stop_signal = signum

    def _close(self, linger):
        try:
            signal.set_wakeup_fd(-1)
        except (ValueError, OSError):
            pass
        if self.link is not None:
            self.link.close(linger)
            self.link = None
        for fd in (self._wake_r, self._wake_w, self.null_r, self.null_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._wake_r = self._wake_w = self.null_r = self.null_w = -1

    # ------------------------------------------------------------------ loop

    def run(self) -> int:
        self._setup()
        try:
            return self._loop()
        except BaseException:
            log.exception("agent failed, killing all tasks")
            try:
                self._kill_all([])
            finally:
                self._close(0)
            return EXIT_ERROR

    def _loop(self) -> int:
        link = self.link
        pollable = link.pollable
        poll = self.poller.poll
        wake_r = self._wake_r
        next_frame = link.next_frame
        loads = orjson.loads
        monotonic = time.monotonic
        hb = self.heartbeat_interval
        mto = self.manager_timeout
        heap = self.heap
        sigmask = signal.pthread_sigmask
        SIG_BLOCK, SIG_UNBLOCK = signal.SIG_BLOCK, signal.SIG_UNBLOCK
        chld = (signal.SIGCHLD,)
        sigmask(SIG_BLOCK, chld)
        subreaper = self.subreaper

        self.now = now = monotonic()
        self.last_recv = now
        self.waiting_until = 0.0  # a silent manager whose connection is up: judged again then
        self.last_send = now
        ready = {
            "node": self.node,
            "pid": os.getpid(),
            "host": os.uname().nodename,
            "cpus": sorted(self.orig_cpus),
        }
        self._flush([["ready", ready]])
        log.info("agent %s (pid %d) connected to %s", self.node, os.getpid(), self.address)

        while True:
            # ---- wait
            deadline = min(self.last_send + hb, max(self.last_recv + mto, self.waiting_until))
            if heap and heap[0][0] < deadline:
                deadline = heap[0][0]
            if subreaper:
                if not self._check_at and self.by_pid:
                    self._check_at = self._last_check + max(ORPHAN_IDLE_INTERVAL, self._check_interval)
                if self._check_at and self._check_at < deadline:
                    deadline = self._check_at
            if self._backlog:
                deadline = min(deadline, now + 0.05)
            timeout = int((deadline - monotonic()) * 1000.0 + 0.999)
            if timeout < 0 or link.buffered:
                timeout = 0
            self._watch_output()
            # SIGCHLD is blocked while we work so that the exits of a whole
            # batch of tasks cost one signal delivery, not one each; it is
            # unblocked only while waiting (a pending one then writes to the
            # wakeup pipe at once, so no exit is missed).
            before = now
            sigmask(SIG_UNBLOCK, chld)
            events = poll(timeout)
            sigmask(SIG_BLOCK, chld)
            self.now = now = monotonic()
            if now - before - timeout / 1000.0 > mto / 2:
                # this process stood still (SIGSTOP, Slurm's job suspend): the manager's silence over
                # that time proves nothing
                log.warning("the agent stood still for %.1f s (suspended?): waiting for the manager afresh",
                            now - before)
                self.last_recv = now
            out: list = []

            if self.stop_signal:
                log.info("signal %d received: killing tasks and exiting", self.stop_signal)
                self._kill_all(out)
                out.append(["bye", self.node])
                self._flush(out)
                self._close(self.linger)
                return EXIT_OK

            link_ready = link.buffered
            wake = False
            for what, _ in events:
                if what == pollable:
                    link_ready = True
                elif what == wake_r:
                    wake = True
                else:
                    link.drain()  # room in the pipe to the manager

            # ---- requests
            if link_ready:
                self.cwd = None
                limit = now + MAX_BATCH_SECONDS
                for _ in range(MAX_FRAMES_PER_ITERATION):
                    frame = next_frame()
                    if frame is None:
                        break
                    self.last_recv = now
                    self.waiting_until = 0.0
                    try:
                        msgs = loads(frame)
                    except orjson.JSONDecodeError:
                        log.warning("ignoring undecodable frame of %d bytes", len(frame))
                        continue
                    if type(msgs) is not list:
                        log.warning("ignoring frame that is not a JSON array: %.200r", frame)
                        continue
                    if self._handle(msgs, out):
                        log.info("exit requested by the manager")
                        self._kill_all(out)
                        out.append(["bye", self.node])
                        self._flush(out)
                        self._close(self.linger)
                        return EXIT_OK
                    self.now = now = monotonic()
                    if now > limit:
                        break  # more later: timers and heartbeats first

            if link.eof:
                log.error("the manager closed its pipe: killing tasks and exiting")
                self._kill_all([])
                self._close(0)
                return EXIT_MANAGER_LOST

            # ---- exits
            if wake:
                try:
                    while os.read(wake_r, 4096):
                        pass
                except (BlockingIOError, InterruptedError):
                    pass
                self._reap(out)

            # ---- timers
            if heap and heap[0][0] <= now:
                self._expire(now)
            if self._check_at and self._check_at <= now:
                self._check_orphans()

            if now - self.last_recv >= mto and now >= self.waiting_until and link.peer_connected():
                # stopped or busy, not gone: our tasks go on (killing them would run them twice)
                if not self.waiting_until:
                    log.warning("the manager has been silent for %.1f s but its connection is up: waiting "
                                "for it", now - self.last_recv)
                self.waiting_until = now + hb
            elif now - self.last_recv >= mto and now >= self.waiting_until:
                log.error("no message from the manager for %.1f s and its connection is down: killing tasks "
                          "and exiting", now - self.last_recv)
                self._kill_all([])
                self._close(0)
                return EXIT_MANAGER_LOST

            if not out and not self._backlog and now - self.last_send >= hb:
                out.append(["hb", time.time()])
            if out or self._backlog:
                self._flush(out)

    def _watch_output(self) -> None:
        """Wait for room in the pipe to the manager only while output waits for it."""
        fd = self.link.out_fd
        if fd != self._polled_out:
            if self._polled_out is not None:
                self.poller.unregister(self._polled_out)
            if fd is not None:
                self.poller.register(fd, self._pollout)
            self._polled_out = fd

    def _flush(self, out: list) -> bool:
        if self._backlog:
            out = self._backlog + out
            self._backlog = []
        if not self.link.send(orjson.dumps(out)):
            self._backlog = list(out)
            return False
        self.last_send = self.now
        return True

    # ------------------------------------------------------------------ requests

    def _handle(self, msgs, out) -> bool:
        """Process one decoded frame; return True when ``exit`` was requested."""
        if msgs and type(msgs[0]) is str:  # a lone message, not a batch
            msgs = [msgs]
        launch = self._launch
        every = self.report_every
        for m in msgs:
            try:
                kind = m[0]
                if kind == "run":
                    launch(m[1], m[2] if len(m) > 2 else None, out)
                    self._since_reap += 1
                    if self._since_reap >= every:
                        # Long batch: report tasks that already ended now
                        # rather than at the end of the batch, so that the
                        # manager can refill the node sooner.
                        k = len(out)
                        self._reap(out)
                        if len(out) > k:
                            self._flush(out)
                            del out[:]
                elif kind == "ping":
                    out.append(["pong", m[1] if len(m) > 1 else None])
                elif kind == "cancel":
                    self._cancel(m[1], m[2] if len(m) > 2 else None)
                elif kind == "env":
                    self._update_env(m[1])
                elif kind == "exit":
                    return True
                else:
                    log.warning("ignoring message of unknown kind %r", kind)
            except Exception:
                log.exception("ignoring malformed message %r", m)
        return False

    def _update_env(self, changes):
        env = self.base_env
        for k, v in changes.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v if type(v) is str else str(v)
        self._env_cache.clear()

    def _task_env(self, delta):
        key = tuple(delta.items())
        env = self._env_cache.get(key)
        if env is None:
            env = self.base_env.copy()
            for k, v in delta.items():
                if v is None:
                    env.pop(k, None)
                else:
                    env[k] = v if type(v) is str else str(v)
            if len(self._env_cache) >= 256:
                self._env_cache.clear()
            self._env_cache[key] = env
        return env

    def _which(self, name, env, fresh=False):
        path = env.get("PATH")
        if path is None:
            path = DEFAULT_PATH
        key = (name, path)
        if not fresh:
            hit = self._which_cache.get(key)
            if hit is not None and hit[1] > self.now:
                return hit[0]
        denied = False
        found = None
        for d in path.split(":"):
            cand = (d or ".").rstrip("/") + "/" + name
            try:
                st = os.stat(cand)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and os.access(cand, os.X_OK):
                found = cand
                break
            denied = True
        if found is None:
            why = "Permission denied" if denied else "No such file or directory"
            raise LaunchError(f"cannot execute '{name}': {why}")
        if found[0] == "/":
            cache = self._which_cache
            if len(cache) >= 1024:
                cache.clear()
            cache[key] = (found, self.now + WHICH_TTL)
        return found

    def _enter(self, wd):
        if type(wd) is not str or not wd.startswith("/"):
            raise LaunchError(f"working directory must be an absolute path, got {wd!r}")
        try:
            os.chdir(wd)
        except FileNotFoundError:
            try:
                os.makedirs(wd, exist_ok=True)
                os.chdir(wd)
            except OSError as e:
                raise LaunchError(f"cannot create working directory '{wd}': {_why(e)}") from None
        except OSError as e:
            raise LaunchError(f"cannot enter working directory '{wd}': {_why(e)}") from None
        self.cwd = wd

    def _open(self, what, path, flags, opened):
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as e:
            raise LaunchError(f"cannot open {what} '{path}': {_why(e)}") from None
        except (TypeError, ValueError) as e:
            raise LaunchError(f"invalid {what} path {path!r}: {e}") from None
        opened.append(fd)
        return fd

    def _redirect(self, sin, sout, serr, opened):
        """File actions for a task with at least one redirected stream."""
        d = os.POSIX_SPAWN_DUP2
        actions = []
        inherit_null = self.detach_stdio  # the agent's own 0-2 are /dev/null
        if sin is not None:
            actions.append((d, self._open("stdin", sin, _RFLAGS, opened), 0))
        elif not inherit_null:
            actions.append((d, self.null_r, 0))
        f1 = self.null_w
        if sout is not None:
            f1 = self._open("stdout", sout, _WFLAGS, opened)
            actions.append((d, f1, 1))
        elif not inherit_null:
            actions.append((d, f1, 1))
        if serr is not None:
            f2 = f1 if serr == sout else self._open("stderr", serr, _WFLAGS, opened)
            actions.append((d, f2, 2))
        elif not inherit_null:
            actions.append((d, self.null_w, 2))
        return actions

    def _check_cpus(self, cpus):
        """A task's CPU list, checked before anything starts (OS ids this agent may use); None when
        it is the agent's own set, which the task inherits (no binding call needed)."""
        if cpus == self._checked_cpus:
            return self._checked_binding
        try:
            wanted = {int(c) for c in cpus}
        except (TypeError, ValueError, OverflowError):
            raise LaunchError(f"cannot bind to CPUs {cpus!r}: not a list of CPU ids") from None
        if not wanted <= self.orig_cpus:
            raise LaunchError(f"cannot bind to CPUs {sorted(wanted)}: this node's agent may use only "
                              f"{sorted(self.orig_cpus)}")
        self._checked_cpus = cpus
        self._checked_binding = None if wanted == self.orig_cpus else cpus
        return self._checked_binding

    def _launch(self, tid, spec, out):
        if tid in self.by_tid:
            log.warning("task id %r is already running: duplicate run ignored", tid)
            return
        opened = None
        start = 0.0
        try:
            argv = spec["argv"]
            wd = spec["wd"]
            if wd != self.cwd:
                self._enter(wd)
            delta = spec.get("env")
            env = self._task_env(delta) if delta else self.base_env
            own = spec.get("tenv")
            env = env.copy()
            if own:
                env.update(own)
            self._launches = seq = self._launches + 1
            env[self.mark_name] = str(seq)  # tells this task's processes, even those that leave it
            prog = argv[0]
            searched = "/" not in prog
            if searched:
                prog = self._which(prog, env)
            sin = spec.get("stdin")
            sout = spec.get("stdout")
            serr = spec.get("stderr")
            if sin is None and sout is None and serr is None:
                actions = self.null_actions
            else:
                opened = []
                actions = self._redirect(sin, sout, serr, opened)
            cpus = spec.get("cpus") or None
            if cpus is not None:
                cpus = self._check_cpus(cpus)
            wt = spec.get("wt")
            if wt is not None:
                wt = float(wt)
            grace = spec.get("grace")
            grace = DEFAULT_GRACE if grace is None else float(grace)
            start = time.time()
            try:
                pid = os.posix_spawn(prog, argv, env, file_actions=actions, setpgroup=0,
                                     setsigmask=(), setsigdef=_RESET_SIGNALS)
            except OSError as e:
                if not searched:
                    raise LaunchError(f"cannot execute '{argv[0]}': {_why(e)}") from None
                # the cached look-up may be stale: search again once
                prog2 = self._which(argv[0], env, fresh=True)
                if prog2 == prog:
                    raise LaunchError(f"cannot execute '{argv[0]}': {_why(e)}") from None
                start = time.time()
                try:
                    pid = os.posix_spawn(prog2, argv, env, file_actions=actions, setpgroup=0,
                                         setsigmask=(), setsigdef=_RESET_SIGNALS)
                except OSError as e2:
                    raise LaunchError(f"cannot execute '{argv[0]}': {_why(e2)}") from None
        except LaunchError as e:
            err = str(e)
        except KeyError as e:
            err = f"invalid task specification: missing {e.args[0]!r}"
        except Exception as e:
            err = f"invalid task specification: {type(e).__name__}: {e}"
        else:
            if cpus is not None:
                # Bind the new process, not the agent: moving the agent onto the task's CPU made it
                # wait behind busy CPUs (-20% throughput). posix_spawn returns once the child has
                # exec'd, so the program is bound before it does any real work.
                try:
                    os.sched_setaffinity(pid, cpus)
                except OSError:
                    pass  # already gone
            task = Task(tid, pid, start, wt, grace, seq)
            if self.guard is not None:
                task.slot = self.guard.add(pid)
            self.by_pid[pid] = task
            self.by_tid[tid] = task
            if wt is not None:
                heap = self.heap
                self._seq += 1
                heapq.heappush(heap, (self.now + wt, self._seq, _WALLTIME, task))
                if len(heap) > 1024 and len(heap) > 2 * len(self.by_pid):
                    self._compact_heap()
            return
        finally:
            if opened:
                for fd in opened:
                    os.close(fd)
        end = time.time()
        out.append(["done", tid, 0, None, start or end, end, 0.0, 0, None, err])

    def _compact_heap(self):
        heap = [e for e in self.heap if e[3].alive]
        heapq.heapify(heap)
        self.heap[:] = heap

    # ------------------------------------------------------------------ signals, timers

    def _signal(self, task, sig):
        try:
            os.killpg(task.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        if task.orphans is not None:  # its processes the agent adopted go the same way
            adopted = self.adopted
            for pid in task.orphans:
                if adopted.get(pid) is task:
                    _signal_escaped(pid, sig)

    def _cancel(self, tid, grace):
        task = self.by_tid.get(tid)
        if task is None:
            return
        if task.reason is None:
            task.reason = "canceled"
        if grace is None:
            grace = DEFAULT_GRACE
        if grace <= 0:
            self._signal(task, signal.SIGKILL)
        else:
            self._signal(task, signal.SIGTERM)
            self._seq += 1
            heapq.heappush(self.heap, (self.now + grace, self._seq, _KILL, task))

    def _expire(self, now):
        heap = self.heap
        while heap and heap[0][0] <= now:
            _, _, action, task = heapq.heappop(heap)
            if not task.alive:
                continue
            if action == _WALLTIME:
                if task.reason is not None:
                    continue  # already being canceled
                task.reason = "walltime"
                if task.grace > 0:
                    self._signal(task, signal.SIGTERM)
                    self._seq += 1
                    heapq.heappush(heap, (now + task.grace, self._seq, _KILL, task))
                else:
                    self._signal(task, signal.SIGKILL)
            else:
                self._signal(task, signal.SIGKILL)

    # ------------------------------------------------------------------ reaping

    def _reap(self, out):
        self._since_reap = 0
        by_pid = self.by_pid
        by_tid = self.by_tid
        wait4 = os.wait4
        WNOHANG = os.WNOHANG
        killpg = os.killpg
        SIGKILL = signal.SIGKILL
        now = time.time
        exitcode = os.waitstatus_to_exitcode
        guard = self.guard
        ended = False
        while True:
            try:
                pid, status, ru = wait4(-1, WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            task = by_pid.pop(pid, None)
            if task is None:
                self._reaped_other(pid)
                continue
            end = now()
            # nothing of a finished task may survive: kill its process group
            try:
                killpg(pid, SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if task.orphans is not None:
                self._end_orphans(task)
            ended = True
            if guard is not None:
                guard.remove(task.slot)
            del by_tid[task.tid]
            task.alive = False
            reason = task.reason
            err = None
            if reason == "walltime":
                err = f"wall time {task.wt:g}s exceeded: killed"
            out.append(["done", task.tid, pid, exitcode(status), task.start, end,
                        ru.ru_utime + ru.ru_stime, ru.ru_maxrss, reason, err])
        if ended and self.subreaper:
            # the processes of the ended tasks that had left their groups are our children now
            self._check_soon()

    def _check_soon(self):
        """Plan a look for adopted processes: now, or as soon as the last one is far enough."""
        due = self._last_check + self._check_interval
        if due < self.now:
            due = self.now
        if not self._check_at or due < self._check_at:
            self._check_at = due

    def _reaped_other(self, pid):
        """A child that was not a task has ended: an adopted process (reaped: no zombie), or the
        watchdog."""
        slot = self._slots.pop(pid, 0)
        if slot:
            self.guard.remove(slot)
        if pid in self.adopted:
            task = self.adopted.pop(pid)
            if task is not None:
                task.orphans.discard(pid)
        elif pid in self.unknown:
            del self.unknown[pid]
        elif pid in self.others:
            self.others.discard(pid)
            log.warning("the watchdog (pid %d) has exited", pid)
            return
        if self.subreaper:
            self._check_soon()  # a sign of adoptions; and its own children, if any, are ours now

    def _end_orphans(self, task):
        """Its task has ended: kill the processes of it that the agent adopted."""
        adopted = self.adopted
        for pid in task.orphans:
            if adopted.get(pid) is task:
                _kill_escaped(pid)
                adopted[pid] = None  # until reaped
        task.orphans = None

    # ------------------------------------------------------------------ escaped processes

    def _children(self) -> bytes:
        """The agent's children (zombies included) as b"pid pid ... "."""
        path = self._children_path
        if path is not None:
            try:
                fd = os.open(path, _RFLAGS)
            except FileNotFoundError:
                log.warning("%s is missing (a kernel without CONFIG_PROC_CHILDREN): looking for "
                            "adopted processes in /proc, at most every %g s", path, ORPHAN_SCAN_INTERVAL)
                self._children_path = None
                self._check_interval = ORPHAN_SCAN_INTERVAL
            except OSError as e:  # out of descriptors, say: look again next time
                log.warning("cannot read %s: %s", path, _why(e))
                return b""
            else:
                try:
                    data = b""
                    while True:
                        chunk = os.read(fd, 1 << 16)
                        if not chunk:
                            return data
                        data += chunk
                except OSError as e:
                    log.warning("cannot read %s: %s", path, _why(e))
                    return b""
                finally:
                    os.close(fd)
        return _children_by_scan(os.getpid())

    def _check_orphans(self):
        """Look for the processes adopted since the last look (the agent is a subreaper: a process
        that left its task's group becomes our child when its parent ends) and kill those whose
        task has ended. One read of the list of our children, compared by length with the children
        we know of; only newcomers cost more (their environment is read)."""
        self._check_at = 0.0
        self._last_check = self.now
        by_pid, adopted, unknown, others = self.by_pid, self.adopted, self.unknown, self.others
        data = self._children()
        if data.count(b" ") != len(by_pid) + len(adopted) + len(unknown) + len(others):
            new = [pid for pid in map(int, data.split())
                   if pid not in by_pid and pid not in adopted and pid not in unknown and pid not in others]
            if new:
                self._adopt(new)
        if unknown:
            # of no known task: killed once every task that was running when it was found has ended
            oldest = next(iter(by_pid.values())).seq if by_pid else self._launches + 1
            for pid, launches in list(unknown.items()):
                if launches < oldest:
                    log.debug("killing adopted process %d (no task known)", pid)
                    _kill_escaped(pid)
                    del unknown[pid]
                    adopted[pid] = None  # until reaped

    def _adopt(self, pids):
        """Tell the task of each newly adopted process: the marker in its environment, else its
        process group; kill it at once when that task has ended."""
        by_pid, adopted = self.by_pid, self.adopted
        by_seq = None
        for pid in pids:
            value = _environ_value(pid, self.mark)
            if value is not None:
                if by_seq is None:
                    by_seq = {t.seq: t for t in by_pid.values()}
                try:
                    task = by_seq.get(int(value))
                except ValueError:
                    task = None
                if task is None:
                    log.debug("killing adopted process %d: its task has ended", pid)
                    _kill_escaped(pid)
                    adopted[pid] = None  # until reaped
                    continue
            else:  # an emptied or unreadable environment (or a zombie)
                try:
                    task = by_pid.get(os.getpgid(pid))
                except OSError:
                    task = None
                if task is None:
                    self.unknown[pid] = self._launches
            if task is not None:
                adopted[pid] = task
                if task.orphans is None:
                    task.orphans = set()
                task.orphans.add(pid)
            if self.guard is not None:
                # the watchdog kills it and its descendants if the agent dies: they will have lost
                # their links to the tasks, and the descendants perhaps the marker
                self._slots[pid] = self.guard.add(-pid)

    def _sweep(self, deadline):
        """Kill every child of the agent but the watchdog until none is left: what the tasks left
        behind (adopted processes, and those that they leave in turn) dies level by level."""
        others = self.others
        while True:
            pids = [pid for pid in map(int, self._children().split()) if pid not in others]
            if not pids:
                return
            for pid in pids:
                _kill_escaped(pid)
            time.sleep(0.002)
            self._reap([])
            if time.monotonic() > deadline:
                log.warning("processes %s left by tasks still run after SIGKILL", pids[:20])
                return

    def _kill_all(self, out):
        """SIGKILL every running task group and adopted process, reap them and report the tasks as
        canceled; then kill whatever of theirs is left (see _sweep)."""
        by_pid = self.by_pid
        for task in list(by_pid.values()):
            if task.reason is None:
                task.reason = "canceled"
            self._signal(task, signal.SIGKILL)
        deadline = time.monotonic() + REAP_ON_EXIT_TIMEOUT
        while by_pid:
            self._reap(out)
            if not by_pid:
                break
            if time.monotonic() > deadline:
                end = time.time()
                for pid, task in list(by_pid.items()):
                    out.append(["done", task.tid, pid, None, task.start, end, 0.0, 0, task.reason,
                                "task did not terminate after SIGKILL"])
                by_pid.clear()
                self.by_tid.clear()
                break
            time.sleep(0.002)
        if self.subreaper:
            self._sweep(deadline)


# ---------------------------------------------------------------------- helpers

def _ensure_std_fds():
    """Make sure descriptors 0-2 are open so our own files never land on them."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            nfd = os.open(os.devnull, os.O_RDWR)
            if nfd != fd:
                os.dup2(nfd, fd)
                os.close(nfd)


def _prctl(option: int, value: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _set_parent_death_signal(sig=signal.SIGTERM):
    _prctl(PR_SET_PDEATHSIG, int(sig))


def _set_child_subreaper() -> None:
    """Orphaned descendants are reparented to us, not to init: nothing a task starts leaves our
    process tree while we live."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def new_mark_name() -> str:
    """The name of an agent's marker variable: unique on the node (the pid, and random bits against
    its reuse), a valid environment variable name."""
    return f"{MARK_PREFIX}{os.getpid():x}_{os.urandom(4).hex()}"


def _signal_escaped(pid: int, sig) -> None:
    """Signal a process that left its task's group, and its own process group when it leads one
    (setsid): only our own descendants can be in a group that one of them created."""
    try:
        os.killpg(pid, sig)
    except OSError:
        pass
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def _kill_escaped(pid: int) -> None:
    _signal_escaped(pid, signal.SIGKILL)


def _environ_value(pid: int, mark: bytes):
    """The value of the variable `mark` (b"NAME=") in the environment of process `pid` (bytes), or
    None: not there, or not readable."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
    except OSError:
        return None
    if data.startswith(mark):
        i = len(mark)
    else:
        i = data.find(b"\0" + mark)
        if i < 0:
            return None
        i += len(mark) + 1
    j = data.find(b"\0", i)
    return data[i:] if j < 0 else data[i:j]


def _process_table() -> list:
    """(pid, parent pid, process group) of every process, from /proc/<pid>/stat."""
    table = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
                fields = stat[stat.rindex(b")") + 2:].split(None, 3)  # state, ppid, pgrp, ...
                table.append((int(name), int(fields[1]), int(fields[2])))
            except (OSError, ValueError, IndexError):
                pass
    return table


def _children_by_scan(ppid: int) -> bytes:
    """The children of `ppid` as b"pid pid ... ", from a scan of /proc (slow: only where the kernel
    offers no list of a process's children)."""
    return b"".join(b"%d " % pid for pid, parent, _ in _process_table() if parent == ppid)


def _descendants(roots: set, groups: set) -> set:
    """The members of process groups `groups`, the processes `roots`, and all their descendants
    (whatever group or session they moved to)."""
    table = _process_table()
    children: dict = {}
    found = set()
    for pid, parent, pgrp in table:
        children.setdefault(parent, []).append(pid)
        if pgrp in groups or pid in roots:
            found.add(pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _kill_marked(mark: bytes, me: int) -> int:
    """SIGKILL every process (and the process group it leads) whose environment holds the variable
    `mark` (b"NAME="); returns how many were found."""
    inner = b"\0" + mark
    found = 0
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                data = f.read()
        except OSError:
            continue  # gone, or not ours (a zombie or a kernel thread reads as empty)
        if data.startswith(mark) or inner in data:
            _kill_escaped(int(name))
            found += 1
    return found


def _normalize_address(address: str) -> str:
    # The agent changes its working directory for every task: make a relative
    # ipc:// path absolute so that reconnections keep working.
    if address.startswith("ipc://"):
        path = address[len("ipc://"):]
        if path and not path.startswith("/") and not path.startswith("@"):
            return "ipc://" + os.path.abspath(path)
    return address


def _has_curve() -> bool:
    import zmq

    return zmq.has("curve")


def _read_keys(path):
    with open(path, "rb") as f:
        data = orjson.loads(f.read())
    return data["public"], data["secret"]


def _positive(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m qcg_hier_agent", description="qcg-hier node agent")
    p.add_argument("--manager", required=True,
                   help=f"manager address, e.g. tcp://host:5555; '{STDIO}': the manager is our parent, talking "
                        "over our stdin and stdout (length-prefixed frames)")
    p.add_argument("--node", default=None,
                   help="node name, used as the zmq identity (default: $SLURMD_NODENAME, else the host name): "
                        "one srun step starts the agents of every node with the same arguments")
    p.add_argument("--heartbeat-interval", type=_positive, default=2.0,
                   help="send 'hb' after this many idle seconds (default 2)")
    p.add_argument("--manager-timeout", type=_positive, default=10.0,
                   help="kill all tasks and exit (code 3) after this many seconds "
                        "without any message from the manager (default 10)")
    p.add_argument("--curve-server-key", default=None, help="manager's CURVE public key (Z85)")
    p.add_argument("--curve-keys-file", default=None,
                   help='JSON file with the agent\'s CURVE keypair: {"public": Z85, "secret": Z85}')
    p.add_argument("--log-file", default=None, help="log file; %%n in it becomes the node name")
    p.add_argument("--log-level", default="info")
    p.add_argument("--parent-death-signal", action="store_true",
                   help="exit (SIGTERM) when the parent process dies")
    p.add_argument(CONFIG_OPTION, action="store_true",
                   help="wait for the other options: one line on stdin holding a JSON list of arguments "
                        "(an agent started ahead of its service); exit quietly at end of file")
    return p.parse_args(argv)


def _setup_logging(path, level):
    handler = logging.FileHandler(path) if path else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s agent[%(process)d] %(message)s"))
    log.addHandler(handler)
    lvl = logging.getLevelName(str(level).upper())
    log.setLevel(lvl if isinstance(lvl, int) else logging.INFO)
    log.propagate = False


def _private_stderr():
    """Move the agent's diagnostics to a private (close-on-exec) copy of stderr.

    The agent later points its descriptor 2 at /dev/null (tasks inherit it);
    Python-level output (logging, tracebacks, fatal error dumps) keeps going
    to the original stderr through this copy.
    """
    stream = open(os.dup(2), "w", buffering=1, errors="backslashreplace")
    sys.stderr = stream
    faulthandler.enable(file=stream)
    return stream


def _start_watchdog(guard: TaskGuard, mark_name: str) -> int:
    """Fork, before anything else is set up, a small process that cleans up when the agent itself
    disappears (kill -9 included): it sleeps on a pipe whose only writer is the agent, and end of
    file means the agent is gone. It then kills every task process group in `guard` (memory it
    shares with the agent) and every process whose environment carries the agent's marker
    `mark_name` (the tasks' processes that left their groups: the agent's death reparented them
    to some other process, so only their environment tells them), in rounds until none is left.
    Returns its pid; the agent just keeps the pipe's write end open."""
    mark = mark_name.encode("ascii") + b"="
    read_fd, write_fd = os.pipe()  # both close-on-exec: tasks do not inherit them
    pid = os.fork()
    if pid:
        os.close(read_fd)
        return pid
    try:
        os.close(write_fd)
        os.setsid()  # signals aimed at the agent's group must not take the watchdog first
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        while os.read(read_fd, 4096):
            pass
        live = guard.live()
        groups = {v for v in live if v > 0}
        adopted = {-v for v in live if v < 0}  # processes the agent adopted from running tasks
        # the tasks still link their descendants that left their groups: kill them all at once, before
        # the deaths of their parents scatter them
        me = os.getpid()
        for pid in (_descendants(adopted, groups) - {me}) if live else ():
            _kill_escaped(pid)
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
        for _ in range(WATCHDOG_ROUNDS):
            if not _kill_marked(mark, me):
                break
            time.sleep(0.01)  # a process that forked as it was killed: its child, next round
    finally:
        os._exit(0)


CONFIG_OPTION = "--config-from-stdin"


def _options_from_stdin(argv: list):
    """`--config-from-stdin`: the agent was started ahead of its service, which writes the rest of
    the options (a JSON list, one line) to our stdin once it knows them; end of file means it will
    not. Returns (arguments, what followed the line: with `--manager stdio`, the first frames)."""
    data = b""
    while b"\n" not in data:
        chunk = os.read(0, 65536)  # not sys.stdin: its buffer would swallow the frames after the line
        if not chunk:
            break
        data += chunk
    line, _, rest = data.partition(b"\n")
    if not line.strip():
        return None, b""
    try:
        extra = orjson.loads(line)
    except orjson.JSONDecodeError:
        extra = None
    if type(extra) is not list or not all(type(a) is str for a in extra):
        raise SystemExit(f"{CONFIG_OPTION}: expected a JSON list of arguments, got {line[:200]!r}")
    return [a for a in argv if a != CONFIG_OPTION] + extra, rest


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ahead = CONFIG_OPTION in argv
    initial_input = b""
    if ahead:
        argv, initial_input = _options_from_stdin(argv)
        if argv is None:
            return EXIT_OK  # the service did not need us
    args = parse_args(argv)
    if not args.node:
        args.node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    if args.log_file:
        args.log_file = os.path.abspath(args.log_file.replace("%n", args.node))
    _ensure_std_fds()
    _private_stderr()
    _setup_logging(args.log_file, args.log_level)
    if ahead:
        log.info("started ahead of the service: options read from stdin")

    if args.parent_death_signal:
        try:
            _set_parent_death_signal(signal.SIGTERM)
        except OSError as e:
            log.warning("cannot set the parent death signal: %s", e)
        if os.getppid() == 1:
            log.error("parent process already gone: exiting")
            return EXIT_MANAGER_LOST

    pub = sec = None
    if args.curve_keys_file:
        try:
            pub, sec = _read_keys(args.curve_keys_file)
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.error("cannot read CURVE keys from %s: %s", args.curve_keys_file, e)
            return EXIT_USAGE
    if args.curve_server_key and not _has_curve():
        log.error("CURVE requested but libzmq has no CURVE support")
        return EXIT_USAGE

    guard = TaskGuard()
    mark_name = new_mark_name()
    # its pipe stays open in the agent: the pipe's end is the agent's death
    watchdog = _start_watchdog(guard, mark_name)
    agent = Agent(
        _normalize_address(args.manager),
        args.node,
        heartbeat_interval=args.heartbeat_interval,
        manager_timeout=args.manager_timeout,
        curve_server_key=args.curve_server_key,
        curve_public_key=pub,
        curve_secret_key=sec,
        detach_stdio=True,
        initial_input=initial_input,
        mark_name=mark_name,
    )
    agent.guard = guard
    agent.others.add(watchdog)
    try:
        _set_child_subreaper()
        agent.subreaper = True
    except OSError as e:
        log.warning("cannot become a child subreaper (%s): processes that leave their task's process group "
                    "are killed only when the agent ends", e)
    return agent.run()
