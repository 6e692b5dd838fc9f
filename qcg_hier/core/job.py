"""Run-time state of one job and of its iterations, kept compact.

An iteration is a number in a range until it starts: never-started iterations are
`next_it .. stop` (minus a `skip` set of individually cancelled/omitted ones), plus
deques of iterations to re-run or made ready by per-iteration dependencies. Finished
iterations are counted; their state is one byte in `it_states` (allocated when the
first iteration starts) and their details are a tuple in `records`, up to a limit.
"""
from collections import deque

from .states import CODE_OF, STATE_CODES, JobState

NO_TASKS: dict = {}  # never written to: replaced by a dict of its own on the first start
NO_COUNTS = (0,) * len(STATE_CODES)


class Outcome:
    """What the launch layer reports about one finished task."""

    __slots__ = ("rc", "pid", "pname", "start", "end", "cpu", "maxrss_kb", "reason", "error", "wd", "where")

    def __init__(self, rc=0, pid=0, pname="", start=0.0, end=0.0, cpu=0.0, maxrss_kb=0, reason=None,
                 error=None, wd="", where=""):
        self.rc, self.pid, self.pname = rc, pid, pname
        self.start, self.end, self.cpu, self.maxrss_kb = start, end, cpu, maxrss_kb
        self.reason, self.error, self.wd = reason, error, wd
        self.where = where  # under a governor: the allocation text the child reported


class Record:
    """The details of one iteration run (or of a plain job's run), for jobInfo and reports."""

    __slots__ = ("state", "history", "alloc", "outcome", "message", "attempts")

    def __init__(self, state, history, alloc, outcome, message, attempts):
        self.state = state
        self.history = history  # [(JobState, time), ...]
        self.alloc = alloc  # resources.Allocation (formatted only when asked for)
        self.outcome = outcome
        self.message = message
        self.attempts = attempts

    @property
    def allocation(self) -> str:
        o = self.outcome
        if o is not None and o.where:
            return o.where
        return self.alloc.describe() if self.alloc is not None else ""

    @property
    def nodes(self) -> dict:
        """{node name: [slots]}"""
        if self.alloc is None:
            return {}
        return {share[0].name: list(share[1]) for share in self.alloc.shares}

    def runtime(self) -> dict:
        """Upstream's `runtime` dict (string values) plus our resource usage."""
        o = self.outcome
        if o is None:
            return {}
        out = {"allocation": self.allocation, "wd": o.wd}
        manager = getattr(self.alloc, "manager", None)
        if manager:
            out["manager"] = manager  # under a governor: the child manager it ran in
        if o.start and o.end:
            out["rtime"] = format_timedelta(o.end - o.start)
        if o.rc is not None:
            out["exit_code"] = str(o.rc)
        if o.pid:
            out["pid"] = str(o.pid)
            out["pname"] = o.pname
        out["cpu_time"] = f"{o.cpu:.6f}"
        out["max_rss_kb"] = str(o.maxrss_kb)
        return out


def format_timedelta(seconds: float) -> str:
    """str(timedelta) without building one: `0:00:00.022843`."""
    if seconds < 0:
        seconds = 0.0
    whole = int(seconds)
    micro = int(round((seconds - whole) * 1e6))
    if micro == 1000000:
        whole, micro = whole + 1, 0
    h, rem = divmod(whole, 3600)
    m, s = divmod(rem, 60)
    days, h = divmod(h, 24)
    text = f"{h}:{m:02d}:{s:02d}" + (f".{micro:06d}" if micro else "")
    return f"{days} day{'s' if days != 1 else ''}, {text}" if days else text


class Task:
    """A running iteration: what was started, where, and since when."""

    __slots__ = ("tid", "job", "it", "alloc", "request", "attempt", "history", "cancel")

    def __init__(self, tid, job, it, alloc, request, attempt, history):
        self.tid = tid
        self.job = job
        self.it = it  # absolute iteration index (0 for a plain job)
        self.alloc = alloc
        self.request = request
        self.attempt = attempt
        self.history = history  # [(JobState, t), ...] of this iteration so far
        self.cancel = False

    @property
    def label(self) -> str:
        return f"{self.job.name}:{self.it}" if self.job.iterative else self.job.name


class Job:
    __slots__ = (
        "spec", "name", "seq", "state", "_history", "iterative", "start", "stop", "next_it", "skip",
        "requeue", "ready", "sizer", "size_on_nodes", "queued_under", "running",
        "counts", "it_states", "records", "pending_deps", "it_deps", "dep_cursor", "it_waits",
        "cancel_requested", "messages", "overtaken", "has_it_waiters", "attempts", "base_request",
    )

    def __init__(self, spec, seq: int, queued_entry: tuple):
        self.spec = spec
        self.name = spec.name
        self.seq = seq
        self.state = JobState.QUEUED
        # while only queued, the history is the (QUEUED, time) entry a whole submit batch shares
        # (no object of its own); it becomes a list at the first change of state: see `states`
        self._history = queued_entry
        it = spec.iteration
        self.iterative = it is not None
        self.start, self.stop = (it.start, it.stop) if it is not None else (0, 1)
        self.next_it = self.start
        self.skip = None  # set of never-started iterations that must not start
        self.requeue = None  # deque of iterations to run again
        self.ready = None  # deque of iterations freed by per-iteration dependencies
        self.sizer = None
        self.size_on_nodes = False
        self.queued_under = None  # the ready-queue bucket the job sits in
        # Shared empty placeholders until first use: a queued job must stay small.
        self.running = NO_TASKS  # iteration -> Task
        self.counts = NO_COUNTS  # finished iterations per state code
        self.it_states = None
        self.records = None  # iteration -> Record
        self.pending_deps = 0
        self.it_deps = ()
        self.dep_cursor = self.start
        self.it_waits = None  # iteration -> number of unmet per-iteration dependencies
        self.cancel_requested = False
        self.messages = None
        self.overtaken = 0
        self.has_it_waiters = False
        self.attempts = None  # iteration -> number of earlier attempts (retries)
        self.base_request = spec.resources.request()

    @property
    def history(self) -> list:
        """[(JobState, time), ...]"""
        h = self._history
        return h if type(h) is list else [h]

    def add_history(self, state, now: float) -> None:
        if type(self._history) is not list:
            self._history = [self._history]
        self._history.append((state, now))

    # ----- sizes -----
    @property
    def total(self) -> int:
        return self.stop - self.start

    @property
    def finished(self) -> int:
        return sum(self.counts)

    def request_for(self, it: int):
        if self.sizer is None:
            return self.base_request
        size = self.sizer.size(it - self.start)
        res = self.spec.resources
        return res.request(nodes=size) if self.size_on_nodes else res.request(cores=size)

    # ----- iteration states -----
    def iteration_state(self, it: int) -> JobState:
        task = self.running.get(it)
        if task is not None:
            return task.history[-1][0]
        if self.it_states is None:
            return JobState.QUEUED
        return STATE_CODES[self.it_states[it - self.start]]

    def set_final(self, it: int, state: JobState) -> None:
        if self.it_states is None:
            self.it_states = bytearray(self.total)
        self.it_states[it - self.start] = CODE_OF[state]
        self.add_count(state, 1)

    def add_count(self, state: JobState, n: int) -> None:
        if self.counts is NO_COUNTS:
            self.counts = [0] * len(STATE_CODES)
        self.counts[CODE_OF[state]] += n

    def add_message(self, text: str) -> None:
        if self.messages is None:
            self.messages = []
        if len(self.messages) < 100:
            self.messages.append(text)

    # ----- the next ready iteration -----
    def peek(self):
        """(iteration, request) of the next iteration that may start, or None."""
        skip = self.skip
        for source in (self.requeue, self.ready):
            while source and skip and source[0] in skip:
                skip.discard(source.popleft())
            if source:
                return source[0], self.request_for(source[0])
        if self.ready is not None or self.pending_deps:
            return None
        while self.next_it < self.stop and skip and self.next_it in skip:
            skip.discard(self.next_it)
            self.next_it += 1
        if self.next_it < self.stop:
            return self.next_it, self.request_for(self.next_it)
        return None

    def pop(self, it: int) -> None:
        """Take iteration `it` (the one peek() gave) out of the not-started ones."""
        if self.requeue and self.requeue[0] == it:
            self.requeue.popleft()
        elif self.ready is not None:
            self.ready.popleft()
        else:
            self.next_it += 1

    def waiting_to_restart(self) -> list[int]:
        """Iterations queued again or given by a governor, without those that must not start."""
        skip = self.skip
        return [it for source in (self.requeue, self.ready) for it in (source or ()) if not (skip and it in skip)]

    def requeue_iteration(self, it: int) -> None:
        if self.requeue is None:
            self.requeue = deque()
        self.requeue.append(it)
