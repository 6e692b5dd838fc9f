"""Run-time state of one job and of its iterations, kept compact.

An iteration is a number in a range until it starts: never-started iterations are
`next_it .. stop` (minus a `skip` set of individually cancelled/omitted ones), plus
deques of iterations to re-run or made ready by per-iteration dependencies. Finished
iterations are counted; their state is a one-byte code in `it_states` (from the first
end on) and their details are a tuple in `records`, up to a limit.

`it_states` costs memory for the iterations that ended, never for the range: a bytearray
of one byte per iteration for a job of up to PAGE iterations, else an `IterStates`
(pages of PAGE codes that exist only where iterations ended, compacted when complete).
"""
from bisect import bisect_right
from collections import deque

from .states import CODE_OF, STATE_CODES, JobState

NO_TASKS: dict = {}  # never written to: replaced by a dict of its own on the first start
NO_COUNTS = (0,) * len(STATE_CODES)

PAGE_BITS = 12
PAGE = 1 << PAGE_BITS  # iterations per page of IterStates; a job of up to PAGE iterations keeps a plain bytearray
LONE_LIMIT = 16  # iterations of a page without an array that end one by one, before it gets one
_NO_HOT = -(1 << 80)  # hot_lo without a hot page: no iteration is on it
# bytes.translate tables: "not ended" (code 0, QUEUED) becomes code c, every other code stays
_ZERO_TO = [bytes([c]) + bytes(range(1, 256)) for c in range(len(STATE_CODES))]


class IterStates:
    """The state codes of iterations 0 .. size-1 (relative to the job's start) of a large job.

    0 (QUEUED) means "not ended" (a running iteration's state is its task's); an iteration ends
    with a final code, once (a later code replaces it). Memory follows the iterations that
    ended, never `size`: 10^12 iterations cost what 10 cost until they run.

    * Iterations are grouped in pages of PAGE. A page where iterations ended has a bytearray of
      codes in `pages`, or, once they all ended in one state, that code (an int). Pages with an
      array that may hold iterations not ended yet are `open`; `hot` is the one written last
      (an end there is one store: Job.set_final has it inlined).
    * Pages below `low` all ended; those not in `pages` are runs: pages run_ends[k-1] ..
      run_ends[k]-1 ended in code run_codes[k]. `low` moves on (and an ended page of one code
      joins the runs) each time a page gets its array: a job finishing in order keeps one run and
      the two or three pages its running iterations are in, however many it has.
    * A page without an array where a few iterations ended alone (single iterations cancelled far
      ahead, say) keeps them in `lone[p]` ({iteration: code}), up to LONE_LIMIT of them.
    * Pages from `fill_page` on without an array ended in `fill_code` (but their `lone` entries):
      the never-started iterations ended in bulk (cancel, omit). Before that, every iteration of
      a page without an array or a lone entry has not ended.

    Nothing here costs time or memory per iteration that has not ended: fill() and set_range()
    work on the pages that have arrays.
    """

    __slots__ = ("size", "origin", "bits", "page", "mask", "npages", "pages", "open", "hot_p", "hot_lo", "hot",
                 "low", "run_ends", "run_codes", "lone", "fill_page", "fill_code")

    def __init__(self, size: int, origin: int = 0, bits: int = PAGE_BITS):
        self.size = size
        self.origin = origin  # the job's first iteration: hot_lo is an iteration number, for Job.set_final
        self.bits, self.page, self.mask = bits, 1 << bits, (1 << bits) - 1  # (tests take small pages)
        self.npages = (size + self.mask) >> bits
        self.pages = {}  # page -> bytearray of codes, or the code (int) every iteration of it ended in
        self.open = set()  # pages whose array may hold iterations not ended
        self.hot_p = -1  # an open page, or -1
        self.hot_lo = _NO_HOT  # origin + (hot_p << bits): the iteration the hot page starts at
        self.hot = None  # pages[hot_p]
        self.low = 0
        self.run_ends = []
        self.run_codes = bytearray()
        self.lone = None
        self.fill_page = self.npages
        self.fill_code = 0

    # ----- reading -----
    def get(self, i: int) -> int:
        p = i >> self.bits
        page = self.pages.get(p)
        if page is not None:
            return page if type(page) is int else page[i & self.mask]
        if p < self.low:
            return self.run_codes[bisect_right(self.run_ends, p)]
        lone = self.lone
        if lone:
            ended = lone.get(p)
            if ended and i in ended:
                return ended[i]
        return self.fill_code if p >= self.fill_page else 0

    def __getitem__(self, i: int) -> int:
        if not 0 <= i < self.size:
            raise IndexError(i)
        return self.get(i)

    def __len__(self) -> int:
        return self.size

    # ----- one iteration ends -----
    def set(self, i: int, code: int) -> None:
        o = i + self.origin - self.hot_lo
        if not o >> self.bits:  # on the hot page (inlined in Job.set_final)
            self.hot[o] = code
        else:
            self.set_rare(i, code)

    def set_rare(self, i: int, code: int) -> None:
        """set() off the hot page."""
        p = i >> self.bits
        page = self.pages.get(p)
        if type(page) is bytearray:
            page[i & self.mask] = code
            if p in self.open:
                self.hot_p, self.hot_lo, self.hot = p, self.origin + (p << self.bits), page
            return
        if page is None and p >= self.low:
            lone = self.lone
            ended = lone.get(p) if lone else None
            if not (p == self.low or p - 1 in self.pages or (ended is not None and len(ended) >= LONE_LIMIT)):
                # alone, away from where iterations end: a dict entry, not a page of PAGE codes
                if lone is None:
                    lone = self.lone = {}
                if ended is None:
                    ended = lone[p] = {}
                ended[i] = code
                return
            page = self._array(p)
            page[i & self.mask] = code
            if p in self.open:
                self.hot_p, self.hot_lo, self.hot = p, self.origin + (p << self.bits), page
            self._advance()  # once a page: the pages that ended below join the runs
            return
        self._array(p)[i & self.mask] = code  # an ended page: only this iteration's code changes

    def _array(self, p: int) -> bytearray:
        """Page p as an array of codes, made from what it implied if it had none."""
        page = self.pages.get(p)
        if type(page) is bytearray:
            return page
        n = min(self.page, self.size - (p << self.bits))
        if page is not None:
            page = bytearray([page]) * n
        elif p < self.low:
            page = bytearray([self.run_codes[bisect_right(self.run_ends, p)]]) * n
        else:
            page = bytearray([self.fill_code]) * n if p >= self.fill_page else bytearray(n)
            ended = self.lone.pop(p, None) if self.lone else None
            if ended:
                base = p << self.bits
                for i, code in ended.items():
                    page[i - base] = code
            if p < self.fill_page:
                self.open.add(p)  # (it may end whole later: `_advance` looks)
        self.pages[p] = page
        return page

    def _advance(self) -> None:
        """Move `low` over the ended pages above it: an array that holds one code becomes the code,
        and a page of one code joins the runs."""
        pages, is_open, ends, codes = self.pages, self.open, self.run_ends, self.run_codes
        low = self.low
        while low < self.npages:
            page = pages.get(low)
            if page is None:
                break  # not ended (or, from fill_page on, implied: it stays so)
            if low in is_open:
                if page.count(0):
                    break
                is_open.discard(low)
                if low == self.hot_p:
                    self.hot_p, self.hot_lo, self.hot = -1, _NO_HOT, None
                if page.count(page[0]) == len(page):
                    page = page[0]
            if type(page) is int:
                del pages[low]
                if ends and ends[-1] == low and codes[-1] in (page, 0):  # (0: the run only passed arrays)
                    ends[-1] = low + 1
                    codes[-1] = page
                else:
                    ends.append(low + 1)
                    codes.append(page)
            elif ends:
                ends[-1] = low + 1  # an array of mixed codes stays in pages: the run only passes it
            else:
                ends.append(low + 1)
                codes.append(0)
            low += 1
        self.low = low

    # ----- many iterations end -----
    def fill(self, lo: int, code: int) -> None:
        """Every iteration from lo on that has not ended ends in `code` (those of pages without
        an array: implied, at no cost per iteration)."""
        if lo >= self.size:
            return
        table = _ZERO_TO[code]
        p0 = lo >> self.bits
        first = p0
        if lo & self.mask:
            first = p0 + 1
            if p0 >= self.low:
                page = self._array(p0)
                o = lo & self.mask
                page[o:] = page[o:].translate(table)
        first = max(first, self.low)
        if self.fill_page < self.npages:
            # it ended in bulk before, from fill_page on (the scheduler does it once: nothing is left
            # to start after it): the pages in between get arrays, the bulk-ended ones stay as they are
            for p in range(first, self.fill_page):
                self._array(p)
        for p in [p for p in self.open if p >= first]:
            page = self.pages[p]
            page[:] = page.translate(table)  # in place: it may be the hot page
            self.open.discard(p)
            if p == self.hot_p:
                self.hot_p, self.hot_lo, self.hot = -1, _NO_HOT, None
            if page.count(page[0]) == len(page):
                self.pages[p] = page[0]
        if self.fill_page == self.npages and first < self.npages:
            self.fill_page, self.fill_code = first, code
        self._advance()

    def set_range(self, a: int, b: int, code: int) -> None:
        """Iterations a .. b-1 end in `code` (none of them had: the journal's replay)."""
        b = min(b, self.size)
        while a < b:
            p = a >> self.bits
            end = min((p + 1) << self.bits, self.size)
            if p == self.low and a & self.mask == 0 and b >= end and p not in self.pages \
                    and not (self.lone and p in self.lone) and p < self.fill_page:
                # whole pages from `low` on join the runs at once, up to the next page that holds
                # anything (an array, lone entries, the bulk-ended tail)
                stop = self.npages if b >= self.size else b >> self.bits
                stop = min(stop, self.fill_page, *(q for q in self.pages if q > p),
                           *(q for q in self.lone or () if q > p))
                ends, codes = self.run_ends, self.run_codes
                if ends and ends[-1] == p and codes[-1] in (code, 0):
                    ends[-1] = stop
                    codes[-1] = code
                else:
                    ends.append(stop)
                    codes.append(code)
                self.low = stop
                a = min(stop << self.bits, b)
            else:
                page = self._array(p)
                base = p << self.bits
                page[a - base:min(b, end) - base] = bytes([code]) * (min(b, end) - a)
                a = min(b, end)
            self._advance()

    def compact(self) -> None:
        """Every iteration ended (the job did): the pages that ended whole join the runs."""
        self._advance()

    # ----- checks -----
    def tally(self) -> list[int]:
        """How many iterations hold each code (index: code), from the structure, not per iteration."""
        counts = [0] * len(STATE_CODES)
        size, pages = self.size, self.pages
        lone = self.lone or {}

        def length(p):  # iterations of page p
            return min(self.page, size - (p << self.bits))

        def from_page(q):  # iterations of pages q and above
            return max(0, size - (q << self.bits))

        def implied(q):  # iterations of pages q and above without an array or a lone entry
            return (from_page(q) - sum(length(p) for p in pages if p >= q)
                    - sum(len(ended) for p, ended in lone.items() if p >= q))

        for p, page in pages.items():
            if type(page) is int:
                counts[page] += length(p)
            else:
                for code in range(len(counts)):
                    counts[code] += page.count(code)
        prev = 0
        for end, code in zip(self.run_ends, self.run_codes):
            counts[code] += from_page(prev) - from_page(end) - sum(length(p) for p in pages if prev <= p < end)
            prev = end
        for ended in lone.values():
            for code in ended.values():
                counts[code] += 1
        tail = implied(max(self.low, self.fill_page)) if self.fill_page < self.npages else 0
        counts[self.fill_code] += tail
        counts[0] += implied(self.low) - tail
        return counts

    def validate(self) -> None:
        """Raises AssertionError where the structure contradicts itself (changes nothing)."""
        assert 0 <= self.low <= self.npages and self.fill_page <= self.npages
        assert len(self.run_ends) == len(self.run_codes)
        assert self.run_ends == sorted(set(self.run_ends)) and (self.run_ends or [0])[-1] == self.low
        if self.hot_p >= 0:
            assert self.pages.get(self.hot_p) is self.hot and self.hot_p in self.open
            assert self.hot_lo == self.origin + (self.hot_p << self.bits)
        else:
            assert self.hot is None and self.hot_lo == _NO_HOT
        for p in self.open:
            assert type(self.pages.get(p)) is bytearray and p >= self.low, p
        for p, page in self.pages.items():
            assert 0 <= p < self.npages
            if p not in self.open:
                assert (page if type(page) is int else page.count(0) == 0), ("an ended page holds 0", p)
            if type(page) is bytearray:
                assert len(page) == min(self.page, self.size - (p << self.bits))
        for p, ended in (self.lone or {}).items():
            assert ended and p >= self.low and p not in self.pages and len(ended) <= LONE_LIMIT
            assert all(p == i >> self.bits and code for i, code in ended.items())
        low = self.low
        assert low == self.npages or low not in self.pages or low in self.open, ("low stops at an ended page", low)
        assert sum(self.tally()) == self.size


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
        self.it_states = None  # from the first end: a bytearray of codes (up to PAGE iterations) or an IterStates
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
        states = self.it_states
        if states is None:
            return JobState.QUEUED
        if type(states) is bytearray:
            return STATE_CODES[states[it - self.start]]
        return STATE_CODES[states.get(it - self.start)]

    def _states(self):
        """it_states, made at the first end: one byte per iteration up to PAGE iterations, else pages."""
        states = self.it_states
        if states is None:
            total = self.total
            states = self.it_states = bytearray(total) if total <= PAGE else IterStates(total, self.start, PAGE_BITS)
        return states

    def set_final(self, it: int, state: JobState) -> None:
        code = CODE_OF[state]
        states = self.it_states
        if type(states) is IterStates:
            o = it - states.hot_lo
            if not o >> states.bits:  # on the hot page (IterStates.set, inlined: a large job's hot path)
                states.hot[o] = code
            else:
                states.set_rare(it - self.start, code)
        elif states is not None:
            states[it - self.start] = code
        else:
            states = self._states()
            if type(states) is IterStates:
                states.set_rare(it - self.start, code)
            else:
                states[it - self.start] = code
        counts = self.counts  # add_count, inlined
        if counts is NO_COUNTS:
            counts = self.counts = [0] * len(STATE_CODES)
        counts[code] += 1

    def set_final_from(self, lo: int, state: JobState) -> None:
        """Every iteration from `lo` on that has not ended ends in `state` (a bulk cancel or omit of
        the never-started ones): no cost per iteration. The counts are the caller's."""
        states = self._states()
        if type(states) is bytearray:
            i = lo - self.start
            states[i:] = states[i:].translate(_ZERO_TO[CODE_OF[state]])
        else:
            states.fill(lo - self.start, CODE_OF[state])

    def set_final_range(self, a: int, b: int, state: JobState) -> None:
        """Iterations a .. b-1, none of them ended, end in `state`. The counts are the caller's."""
        states = self._states()
        if type(states) is bytearray:
            states[a - self.start:b - self.start] = bytes([CODE_OF[state]]) * (b - a)
        else:
            states.set_range(a - self.start, b - self.start, CODE_OF[state])

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
