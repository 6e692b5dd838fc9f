"""The scheduling core: queue, dependency graph, allocation decisions, state bookkeeping.

Pure: it takes events (submit, executing, finished, cancel, node lost) with the
time passed in, and returns decisions (tasks to start, tasks to kill) plus a list of
state-change events in `self.events` for the shells to publish and report.

Queue rules
-----------
* FIFO with backfill: the oldest job whose next iteration fits starts first; a later
  job may start when an earlier one does not fit.
* No starvation: each time later work starts ahead of the oldest waiting job, that job
  is "overtaken" once. After `starvation_limit` overtakings (default: the number of
  cores of the allocation, i.e. about one refill of the machine) it holds a
  reservation: nothing submitted after it starts until it has started.
* Ready work is kept in buckets by what it needs (one heap per distinct request), so a
  scheduling decision looks at one head per bucket, never at the whole queue. A job
  waiting for dependencies is not in any bucket; it is looked at again only when
  something it waits for finishes.
"""
import heapq
from collections import deque

from .errors import SubmitError, UnknownJobError
from .iterschedulers import make_sizer
from .job import NO_TASKS, IterStates, Job, Outcome, Record, Task
from .states import CODE_OF, STATE_CODES, JobState

Q, SCH, EXE = JobState.QUEUED, JobState.SCHEDULED, JobState.EXECUTING
OK, FAIL, CANC, OMIT = JobState.SUCCEED, JobState.FAILED, JobState.CANCELED, JobState.OMITTED
DEP_WINDOW = 1024  # per-iteration dependencies resolved ahead of need, per job


def task_ends(events):
    """(job, iteration, state, record) of each task end among state events: a final iteration of
    an iterative job, or the end of a plain job (which has job events only); record None when
    the job never ran."""
    for event in events:
        if event[0] == "it":
            if event[3].is_final:
                yield event[1], event[2], event[3], event[4]
        elif event[0] == "job" and event[2].is_final and not event[1].iterative:
            job = event[1]
            yield job, job.start, event[2], job.records.get(job.start) if job.records else None


class CheckedBatch:
    """Job specs that passed admission, with their iteration sizers."""
    __slots__ = ("specs", "sizers")

    def __init__(self, specs: list, sizers: list):
        self.specs = specs
        self.sizers = sizers

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.specs]


class Scheduler:
    def __init__(self, pool, starvation_limit: int | None = None, record_limit: int = 100_000):
        self.pool = pool
        self._limit_given = bool(starvation_limit)
        self.starvation_limit = starvation_limit or max(pool.total_cores, 1)
        self.record_limit = record_limit
        self.jobs: dict[str, Job] = {}
        self.tasks: dict[int, Task] = {}
        self.events: list = []
        self.emit_progress = True  # non-final state events (SCHEDULED, EXECUTING, re-QUEUED)
        self.it_counts = dict.fromkeys(JobState, 0)
        self.job_counts = dict.fromkeys(JobState, 0)
        self.active_jobs = 0
        self.reserved: Job | None = None
        self._buckets: dict = {}  # Request -> heap of (seq, job)
        # (job name, iteration or None) -> waiting jobs (whole-job waits) or (job, iteration) pairs
        self._waiters: dict = {}
        self._seq = 0
        self._tid = 0
        self._bucket_added = False  # set by _enqueue when it makes a bucket (schedule() rescans)
        # off while a governor replays its journal: its children have not joined yet
        self.check_fit = True
        self.max_starts = 1 << 62  # per schedule() call: a governor hands out work in slices

    # ================================================================ submit
    def submit(self, specs: list, now: float) -> list[str]:
        """Accept a batch of parsed job specs, all or nothing."""
        return self.add(self.check(specs), now)

    def check(self, specs: list) -> "CheckedBatch":
        """Admission of a batch, all or nothing: raises SubmitError naming the first problem.
        Nothing that changes the jobs may happen between this and `add` of the batch."""
        names = self._check_names(specs)
        sizers = [None] * len(specs)
        # jobs of a batch mostly share a few (interned) resource specs: each is judged once
        judged = {}  # id(ResourceSpec) -> whether it has an iteration scheduler
        for i, spec in enumerate(specs):
            sized = judged.get(id(spec.resources))
            if sized is None:
                sized = judged[id(spec.resources)] = self._check_fit(spec)
            if sized:
                sizers[i] = self._sizer(spec)
        self._check_cycles(specs, names)
        return CheckedBatch(specs, sizers)

    def add(self, batch: "CheckedBatch", now: float) -> list[str]:
        """Queue the jobs of a checked batch."""
        specs, sizers = batch.specs, batch.sizers
        jobs = []
        queued_entry = (Q, now)
        for spec, sizer in zip(specs, sizers):
            self._seq += 1
            job = Job(spec, self._seq, queued_entry)
            if sizer is not None:
                job.sizer, job.size_on_nodes = sizer
            self.jobs[job.name] = job
            self.it_counts[Q] += job.total
            self.job_counts[Q] += 1
            self.active_jobs += 1
            jobs.append(job)
        for job in jobs:
            self._link_dependencies(job, now)
        return [job.name for job in jobs]

    def _check_names(self, specs: list) -> set:
        names = {spec.name for spec in specs}  # set operations: no Python step per job when all is well
        if len(names) == len(specs) and names.isdisjoint(self.jobs):
            return names
        seen = set()
        for spec in specs:
            if spec.name in self.jobs:
                raise SubmitError(f"Job {spec.name} already exist")
            if spec.name in seen:
                raise SubmitError(f"Job {spec.name} given twice in one request")
            seen.add(spec.name)
        raise AssertionError("unreachable: a duplicate was counted")

    def _check_fit(self, spec) -> bool:
        """Raises SubmitError if the job can never fit; True if an iteration scheduler sizes it
        (its sizes are checked by `_sizer`)."""
        res = spec.resources
        if res.cores and res.cores.scheduler or res.nodes and res.nodes.scheduler:
            return True
        if self.check_fit:
            why = self.pool.why_never_fits(res.request())
            if why:
                raise SubmitError(f"Not enough resources for job {spec.name}: {why}")
        return False

    def _sizer(self, spec):
        res = spec.resources
        for rng, on_nodes in ((res.cores, False), (res.nodes, True)):
            if rng is not None and rng.scheduler:
                iterations = len(spec.iteration) if spec.iteration else 1
                available = len(self.pool.alive_nodes) if on_nodes else self.pool.total_cores
                field = "resources.numNodes" if on_nodes else "resources.numCores"
                minimum = rng.min if rng.min_given else None
                sizer = make_sizer(rng.scheduler, rng.params, iterations, available, minimum, spec.name, field)
                if not self.check_fit:
                    return sizer, on_nodes
                for size in sizer.distinct_sizes():
                    req = res.request(nodes=size) if on_nodes else res.request(cores=size)
                    why = self.pool.why_never_fits(req)
                    if why:
                        raise SubmitError(f"Not enough resources for job {spec.name}: an iteration of size {size} {why}")
                return sizer, on_nodes
        return None

    @staticmethod
    def _check_cycles(specs: list, names: set) -> None:
        """Only jobs of one request can form a cycle: earlier jobs cannot name later ones. So the
        graph holds only the edges between jobs of the request (`names`)."""
        targets_of = {}  # dependency list -> the jobs it names: jobs of a request share a few lists
        graph = {}
        for spec in specs:
            after = spec.after
            if not after:
                continue
            targets = targets_of.get(after)
            if targets is None:
                targets = targets_of[after] = [d.partition(":")[0] for d in after]
            if spec.name in targets:
                dep = after[targets.index(spec.name)]
                raise SubmitError(f"Dependency cycle: job {spec.name} depends on itself ({dep})")
            inside = [t for t in targets if t in names]
            if inside:
                graph[spec.name] = inside
        # depth-first, without recursion: a request may list a long chain last job first
        state = {}  # 1: on the current path, 2: done
        for root in graph:
            if root in state:
                continue
            state[root] = 1
            path, stack = [root], [iter(graph[root])]
            while stack:
                for nxt in stack[-1]:
                    if nxt not in graph:
                        continue
                    seen = state.get(nxt)
                    if seen == 1:
                        cycle = path[path.index(nxt):] + [nxt]
                        raise SubmitError("Dependency cycle: " + " -> ".join(cycle))
                    if seen is None:
                        state[nxt] = 1
                        path.append(nxt)
                        stack.append(iter(graph[nxt]))
                        break
                else:
                    state[path.pop()] = 2
                    stack.pop()

    # ================================================================ dependencies
    def _dep_status(self, dep: str):
        """(key, outcome) of one resolved dependency; outcome True, False (never) or None (pending)."""
        name, sep, it = dep.partition(":")
        target = self.jobs.get(name)
        if target is None:
            return None, f"dependency on unknown job {name}"
        if not sep:
            if target.state.is_final:
                return None, True if target.state is OK else f"dependency {name} ended {target.state}"
            return (name, None), None
        index = int(it)
        if not (target.start <= index < target.stop) or not target.iterative:
            return None, f"dependency on unknown iteration {dep}"
        state = target.iteration_state(index)
        if state.is_final:
            return None, True if state is OK else f"dependency {dep} ended {state}"
        target.has_it_waiters = True
        return (name, index), None

    def _link_dependencies(self, job: Job, now: float) -> None:
        templates = []
        for dep in job.spec.after:
            if "${it}" in dep:
                templates.append(dep)
                continue
            key, outcome = self._dep_status(dep)
            if isinstance(outcome, str):
                self._omit_job(job, outcome, now)
                return
            if outcome is None:
                self._waiters.setdefault(key, []).append(job)  # no pair: 20,000 waiters cost 56 B less each
                job.pending_deps += 1
        if templates:
            job.it_deps = tuple(templates)
            job.ready = deque()
            job.it_waits = {}
        if job.pending_deps == 0:
            self._release(job, now)

    def _release(self, job: Job, now: float) -> None:
        """Whole-job dependencies are met: resolve per-iteration ones ahead, then queue."""
        if job.it_deps:
            self._scan_iteration_deps(job, now)
        self._enqueue(job)

    def _scan_iteration_deps(self, job: Job, now: float) -> None:
        waits = job.it_waits
        while job.dep_cursor < job.stop and len(waits) < DEP_WINDOW and not job.state.is_final:
            it = job.dep_cursor
            job.dep_cursor += 1
            if job.skip and it in job.skip:
                continue
            unmet = 0
            failure = None
            for template in job.it_deps:
                key, outcome = self._dep_status(template.replace("${it}", str(it)))
                if isinstance(outcome, str):
                    failure = outcome
                    break
                if outcome is None:
                    self._waiters.setdefault(key, []).append((job, it))
                    unmet += 1
            if failure:
                self._omit_iteration(job, it, failure, now)
            elif unmet:
                waits[it] = unmet
            else:
                job.ready.append(it)

    def _wake(self, key, success: bool, state: JobState, now: float) -> None:
        waiters = self._waiters.pop(key, None)
        if not waiters:
            return
        label = key[0] if key[1] is None else f"{key[0]}:{key[1]}"
        touched = []
        for waiter in waiters:
            job, it = (waiter, None) if type(waiter) is Job else waiter
            if job.state.is_final:
                continue
            if it is None:
                if not success:
                    self._omit_job(job, f"dependency {label} ended {state}", now)
                    continue
                job.pending_deps -= 1
                if job.pending_deps == 0:
                    self._release(job, now)
                continue
            if it not in job.it_waits:
                continue
            if success:
                job.it_waits[it] -= 1
                if job.it_waits[it] == 0:
                    del job.it_waits[it]
                    job.ready.append(it)
            else:
                del job.it_waits[it]
                self._omit_iteration(job, it, f"dependency {label} ended {state}", now)
            touched.append(job)
        for job in touched:
            if not job.state.is_final and job.pending_deps == 0:
                self._scan_iteration_deps(job, now)
                self._enqueue(job)

    # ================================================================ queue
    def _enqueue(self, job: Job) -> None:
        if job.queued_under is not None or job.state.is_final:
            return
        nxt = job.peek()
        if nxt is None:
            return
        req = nxt[1]
        job.queued_under = req
        heap = self._buckets.get(req)
        if heap is None:
            heap = self._buckets[req] = []
            self._bucket_added = True
        heapq.heappush(heap, (job.seq, job))

    def _head(self, req, heap):
        """The valid head job of a bucket (drops stale entries), or None."""
        while heap:
            job = heap[0][1]
            if job.queued_under is req and not job.state.is_final:
                nxt = job.peek()
                if nxt is not None and nxt[1] is req:
                    return job
            heapq.heappop(heap)
            if job.queued_under is req:
                job.queued_under = None
                self._enqueue(job)  # its next iteration may need another bucket
        return None

    def schedule(self, now: float) -> list[Task]:
        """Start whatever may start now; returns the new tasks (state SCHEDULED)."""
        started: list[Task] = []
        pool = self.pool
        blocked = set()
        limit = self.max_starts
        while pool.free_cores > 0 and self._buckets and len(started) < limit:
            best = oldest = None
            self._bucket_added = False
            for req, heap in list(self._buckets.items()):
                job = self._head(req, heap)
                if job is None:
                    del self._buckets[req]
                    continue
                if oldest is None or job.seq < oldest.seq:
                    oldest = job
                if req in blocked or not pool.could_fit_now(req):
                    continue
                if best is None or job.seq < best.seq:
                    best = job
            if best is None:
                if self._bucket_added:
                    continue  # a head moved to a bucket this scan did not see
                break
            if self.reserved is not None and self.reserved is not best:
                if not self.reserved.state.is_final and self.reserved.queued_under is not None:
                    break
                self.reserved = None
            if best is not oldest and self._overtake(oldest):
                break
            if not self._start_run(best, now, started, oldest):
                blocked.add(best.queued_under)
        return started

    def _overtake(self, waiting: Job) -> bool:
        """Count one overtaking of the oldest waiting job; True when it now holds a reservation."""
        waiting.overtaken += 1
        if waiting.overtaken >= self.starvation_limit:
            self.reserved = waiting
            return True
        return False

    def _start_run(self, job: Job, now: float, started: list, oldest: Job) -> bool:
        """Start as many consecutive iterations of `job` with the same request as fit."""
        req = job.queued_under
        pool = self.pool
        count = 0
        room = self.max_starts - len(started)
        while pool.free_cores > 0 and count < room:
            nxt = job.peek()
            if nxt is None or nxt[1] is not req:
                break
            if job is not oldest and count and self._overtake(oldest):
                break
            alloc = pool.allocate(req)
            if alloc is None:
                break
            started.append(self._start(job, nxt[0], req, alloc, now))
            count += 1
        if count:
            job.overtaken = 0
            if self.reserved is job:
                self.reserved = None
        return count > 0

    def _start(self, job: Job, it: int, req, alloc, now: float) -> Task:
        job.pop(it)
        self._tid += 1
        history = [(SCH, now)]
        attempt = 0
        if job.attempts and it in job.attempts:
            attempt, earlier = job.attempts.pop(it)
            history = earlier + history
        task = Task(self._tid, job, it, alloc, req, attempt, history)
        if job.running is NO_TASKS:
            job.running = {}
        job.running[it] = task
        self.tasks[task.tid] = task
        counts = self.it_counts
        counts[Q] -= 1
        counts[SCH] += 1
        if not job.iterative:
            self._job_state(job, SCH, now)
        elif self.emit_progress:
            self.events.append(("it", job, it, SCH, None))
        return task

    def executing(self, tasks, now: float) -> None:
        """The launch layer has handed these tasks to their agents."""
        counts = self.it_counts
        current = self.tasks
        for task in tasks:
            if task.history[-1][0] is not SCH or current.get(task.tid) is not task:
                continue
            task.history.append((EXE, now))
            counts[SCH] -= 1
            counts[EXE] += 1
            job = task.job
            if not job.iterative:
                self._job_state(job, EXE, now)
            elif self.emit_progress:
                self.events.append(("it", job, task.it, EXE, None))

    # ================================================================ finishing
    def finish(self, tid: int, outcome: Outcome, now: float) -> Task | None:
        task = self.tasks.pop(tid, None)
        if task is None:
            return None  # a late report of a task already re-queued elsewhere
        job = task.job
        del job.running[task.it]
        self.pool.release(task.alloc)
        was = task.history[-1][0]
        self.it_counts[was] -= 1
        if task.cancel or outcome.reason == "canceled":
            state, message = CANC, "canceled"
        elif outcome.rc == 0 and not outcome.error:
            state, message = OK, None
        else:
            state, message = FAIL, outcome.error or _exit_message(outcome.rc)
        task.history.append((state, now))
        record = Record(state, task.history, task.alloc, outcome, message, task.attempt)
        if message and state is FAIL:
            job.add_message(f"{task.label}: {message}" if job.iterative else message)
        self._iteration_final(job, task.it, state, record, now)
        return task

    def _iteration_final(self, job: Job, it: int, state: JobState, record, now: float) -> None:
        job.set_final(it, state)
        self.it_counts[state] += 1
        if record is not None and (not job.iterative or len(job.records or ()) < self.record_limit):
            if job.records is None:
                job.records = {}
            job.records[it] = record
        if job.iterative:
            self.events.append(("it", job, it, state, record))
        if job.has_it_waiters:
            self._wake((job.name, it), state is OK, state, now)
        if job.finished == job.total:
            self._job_final(job, now)
        elif job.queued_under is None:
            self._enqueue(job)

    def _job_final(self, job: Job, now: float, state: JobState | None = None) -> None:
        if state is None:
            # upstream's rule: a job whose iterations ended is SUCCEED only if all succeeded, CANCELED
            # if cancelled, else FAILED (also when every iteration was OMITTED one by one); OMITTED is
            # for a job left out as a whole, which comes here with its state given
            if job.counts[CODE_OF[OK]] == job.total:
                state = OK
            elif job.cancel_requested:
                state = CANC
            else:
                state = FAIL
        self._job_state(job, state, now)
        if type(job.it_states) is IterStates:
            job.it_states.compact()
        self.active_jobs -= 1
        if self.reserved is job:
            self.reserved = None
        self._wake((job.name, None), state is OK, state, now)
        if self.active_jobs == 0:
            self.events.append(("idle",))

    def _job_state(self, job: Job, state: JobState, now: float) -> None:
        self.job_counts[job.state] -= 1
        self.job_counts[state] += 1
        job.state = state
        job.add_history(state, now)
        if state.is_final or self.emit_progress:
            self.events.append(("job", job, state))

    def _finish_unstarted(self, job: Job, state: JobState, now: float, only=None, why: str | None = None) -> None:
        """Give every not-started iteration (or only iteration `only`) a final state without starting it."""
        if only is not None:
            if job.skip is None:
                job.skip = set()
            job.skip.add(only)
            self._final_unstarted(job, only, state, now, why)
            return
        for it in [*(job.requeue or ()), *(job.ready or ()), *(job.it_waits or ())]:
            self._final_unstarted(job, it, state, now, why)
        lo = job.dep_cursor if job.it_deps else job.next_it
        skipped = [i for i in (job.skip or ()) if i >= lo]
        count = job.stop - lo - len(skipped)
        if count > 0:
            # no Python step per iteration: a 10^12-iteration job cancels at once, in no memory per
            # iteration (those of `skipped` had ended: they keep their state)
            job.set_final_from(lo, state)
            job.add_count(state, count)
            self.it_counts[Q] -= count
            self.it_counts[state] += count
            if job.has_it_waiters:
                for key in [k for k in self._waiters if k[0] == job.name and k[1] is not None and k[1] >= lo]:
                    self._wake(key, False, state, now)
        job.next_it = job.dep_cursor = job.stop
        job.skip = None
        if job.requeue:
            job.requeue.clear()
        if job.ready:
            job.ready.clear()
        if job.it_waits:
            job.it_waits.clear()

    def _final_unstarted(self, job: Job, it: int, state: JobState, now: float, why: str | None = None) -> None:
        if it in job.running or job.iteration_state(it).is_final:
            return
        if job.it_waits:
            job.it_waits.pop(it, None)
        self.it_counts[Q] -= 1
        job.set_final(it, state)
        self.it_counts[state] += 1
        if job.iterative:
            # it never ran: its record says when and why it ended
            record = Record(state, [(state, now)], None, None, why or state.value.lower(), 0)
            if len(job.records or ()) < self.record_limit:
                if job.records is None:
                    job.records = {}
                job.records[it] = record
            self.events.append(("it", job, it, state, record))
        if job.has_it_waiters:
            self._wake((job.name, it), state is OK, state, now)  # OK only when replaying a journal

    def _omit_job(self, job: Job, reason: str, now: float) -> None:
        job.add_message(reason)
        self._finish_unstarted(job, OMIT, now)
        if not job.running and not job.state.is_final:
            self._job_final(job, now, OMIT)

    def _omit_iteration(self, job: Job, it: int, reason: str, now: float) -> None:
        job.add_message(f"{job.name}:{it}: {reason}")
        self._finish_unstarted(job, OMIT, now, only=it, why=reason)
        if job.finished == job.total and not job.state.is_final:
            self._job_final(job, now)

    # ================================================================ a governor's child
    def adopt(self, spec, now: float) -> Job:
        """A child manager takes a job of its governor: none of its iterations runs here until given.

        The governor holds the job's dependencies and state; here it is a container of iterations
        (numbered as at the governor) that `give` fills. Raises SubmitError if it cannot fit here."""
        old = self.jobs.get(spec.name)
        if old is not None and not old.running:
            self.forget(old)
        sizer = self.check([spec]).sizers[0]
        self._seq += 1
        job = Job(spec, self._seq, (Q, now))
        if sizer is not None:
            job.sizer, job.size_on_nodes = sizer
        job.next_it = job.dep_cursor = job.stop  # nothing starts from the never-given range
        job.ready = deque()
        self.jobs[job.name] = job
        self.job_counts[Q] += 1
        self.active_jobs += 1
        return job

    def give(self, name: str, iterations, now: float) -> int:
        """Iterations of an adopted job to run here; returns how many were taken."""
        job = self.jobs.get(name)
        if job is None or job.ready is None:
            return 0
        taken = 0
        for it in iterations:
            if job.start <= it < job.stop and it not in job.running:
                if job.skip and it in job.skip:
                    job.skip.discard(it)
                job.ready.append(it)
                taken += 1
        self.it_counts[Q] += taken
        if taken and job.queued_under is None:
            self._enqueue(job)
        return taken

    def take_back(self) -> dict:
        """Leaving a governor: every given iteration not started yet, {job name: [iterations]}."""
        back = {}
        for job in self.jobs.values():
            waiting = job.waiting_to_restart()
            if not waiting:
                continue
            back[job.name] = waiting
            self.it_counts[Q] -= len(waiting)
            if job.requeue:
                job.requeue.clear()
            job.ready.clear()
        return back

    def forget(self, job: Job) -> None:
        """A child drops a job its governor removed (its name may be given again)."""
        del self.jobs[job.name]
        self.job_counts[job.state] -= 1
        if not job.state.is_final:
            self.active_jobs -= 1
        for code, n in enumerate(job.counts):
            self.it_counts[STATE_CODES[code]] -= n
        self.it_counts[Q] -= len(job.waiting_to_restart())
        job.state = CANC  # a stale bucket entry must not start it
        job.queued_under = None

    # ================================================================ requests
    def find(self, name: str) -> tuple[Job, int | None]:
        """A job or an iteration `job:N`; raises UnknownJobError."""
        base, sep, it = name.partition(":")
        job = self.jobs.get(base)
        if job is None:
            raise UnknownJobError(f"Job '{base}' doesn't exist")
        if not sep:
            return job, None
        if not (it.isascii() and it.isdigit()) or not job.iterative or not (job.start <= int(it) < job.stop):
            raise UnknownJobError(f"Unknown iteration {it} for job {base}")
        return job, int(it)

    def cancel(self, name: str, now: float) -> list[Task]:
        """Cancel a job or one iteration; returns the running tasks to kill. Raises on error."""
        job, it = self.find(name)
        if it is None:
            if job.state.is_final:
                raise UnknownJobError(f"Job {name} already finished ({job.state})")
            job.cancel_requested = True
            self._finish_unstarted(job, CANC, now)
            kills = [t for t in job.running.values() if not t.cancel]
            for task in kills:
                task.cancel = True
            if not job.running:
                self._job_final(job, now, CANC)
            return kills
        task = job.running.get(it)
        if task is not None:
            if task.cancel:
                return []
            task.cancel = True
            return [task]
        if job.iteration_state(it).is_final:
            raise UnknownJobError(f"Iteration {name} already finished ({job.iteration_state(it)})")
        self._finish_unstarted(job, CANC, now, only=it)
        if job.finished == job.total:
            self._job_final(job, now)  # FAILED, as when any other single iteration is cancelled
        return []

    def remove(self, name: str) -> None:
        job = self.jobs.get(name)
        if job is None:
            raise UnknownJobError(f"Job '{name}' doesn't exist")
        if not job.state.is_final:
            raise UnknownJobError(f"Job '{name}' not finished - can not be removed")
        del self.jobs[name]
        self.job_counts[job.state] -= 1
        for code, n in enumerate(job.counts):
            self.it_counts[STATE_CODES[code]] -= n

    # ================================================================ resume
    def restore_final(self, name: str, ranges, state: JobState, now: float) -> None:
        """Replaying a journal: iterations [a, b) of `name` already ended in `state` (they never start).

        A range that continues the never-started prefix is taken in bulk (`Job.set_final_range`),
        so restoring millions of finished iterations costs no per-iteration Python work."""
        job = self.jobs.get(name)
        if job is None or job.state.is_final:
            return
        for a, b in ranges:
            a, b = max(a, job.start), min(b, job.stop)
            skip = job.skip
            while skip and job.next_it in skip and not job.it_deps:
                skip.discard(job.next_it)  # restored out of order earlier: the prefix goes on past it
                job.next_it += 1
            if a < b and a == job.next_it and not job.it_deps and not job.requeue and not job.skip \
                    and not job.pending_deps:
                job.set_final_range(a, b, state)
                job.add_count(state, b - a)
                self.it_counts[Q] -= b - a
                self.it_counts[state] += b - a
                job.next_it = b
                if job.has_it_waiters:
                    if b - a > len(self._waiters):  # the waiting ones, not every iteration of the range
                        its = sorted(k[1] for k in self._waiters if k[0] == job.name and k[1] is not None
                                     and a <= k[1] < b)
                    else:
                        its = range(a, b)
                    for it in its:
                        self._wake((job.name, it), state is OK, state, now)
                if job.finished == job.total:
                    self._job_final(job, now)
                continue
            for it in range(a, b):
                if job.state.is_final:
                    break
                if it not in job.running and not job.iteration_state(it).is_final:
                    self._finish_unstarted(job, state, now, only=it)
                    if job.finished == job.total:
                        self._job_final(job, now)

    def mark_retry(self, name: str, iterations, now: float) -> None:
        """Replaying a journal: these iterations were running when the service died; they run
        again, and their history shows the retry."""
        job = self.jobs.get(name)
        if job is None or job.state.is_final:
            return
        if job.attempts is None:
            job.attempts = {}
        for it in iterations:
            if not job.iteration_state(it).is_final:
                job.attempts[it] = (1, [(SCH, now), (Q, now)])
                if not job.iterative:
                    # a plain job is reported with its job history: show the retry there too (as node_lost does)
                    job.add_history(SCH, now)
                    job.add_history(Q, now)

    # ================================================================ failures
    def node_lost(self, node, now: float, permanent: bool = True) -> list[Task]:
        """A node died (or its agent is restarting, not `permanent`): its tasks go back to the queue,
        as a retry those that had started (a governor's child also held work queued, never started);
        returns them (so that parts on other nodes can be killed)."""
        self.pool.mark_lost(node, permanent)
        lost = [t for t in self.tasks.values() if any(share[0] is node for share in t.alloc.shares)]
        for task in lost:
            self._requeue(task, now, retry=task.history[-1][0] is not SCH)
        if permanent:
            self.follow_capacity()
            self._fail_impossible(now)
        return lost

    def follow_capacity(self) -> None:
        """Nodes (a governor's children) came or went for good: a default starvation limit, one
        refill of the machine, follows its cores."""
        if not self._limit_given:
            self.starvation_limit = max(self.pool.total_cores, 1)

    def node_ready(self, node) -> None:
        """A node's agent is up: the node receives work."""
        self.pool.mark_ready(node)

    def give_back(self, task: Task, now: float) -> None:
        """A governor's child left and returned this never-started iteration: it waits again, not as a retry."""
        self._requeue(task, now, retry=False)

    def _requeue(self, task: Task, now: float, retry: bool = True) -> None:
        del self.tasks[task.tid]
        job = task.job
        del job.running[task.it]
        self.pool.release(task.alloc)
        self.it_counts[task.history[-1][0]] -= 1
        if task.cancel:
            self._iteration_final(job, task.it, CANC, None, now)
            return
        self.it_counts[Q] += 1
        history = task.history + [(Q, now)]
        if job.attempts is None:
            job.attempts = {}
        job.attempts[task.it] = (task.attempt + retry, history)
        job.requeue_iteration(task.it)
        if not job.iterative:
            self._job_state(job, Q, now)
        elif self.emit_progress:
            self.events.append(("it", job, task.it, Q, None))
        if job.queued_under is None:
            self._enqueue(job)

    def _fail_impossible(self, now: float) -> None:
        """After losing nodes, queued work that can never fit any more fails."""
        for job in list(self.jobs.values()):
            if job.state.is_final:
                continue
            why = self.pool.why_never_fits(job.base_request) if job.sizer is None else self._sizer_misfit(job)
            if why:
                job.add_message(f"can no longer run: {why}")
                self._finish_unstarted(job, FAIL, now)
                if not job.running and not job.state.is_final:
                    self._job_final(job, now, FAIL)

    def _sizer_misfit(self, job: Job) -> str | None:
        res = job.spec.resources
        for size in job.sizer.distinct_sizes():
            why = self.pool.why_never_fits(res.request(nodes=size) if job.size_on_nodes else res.request(cores=size))
            if why:
                return why
        return None

    # ================================================================ queries
    def all_finished(self) -> bool:
        return self.active_jobs == 0

    def drain_events(self) -> list:
        events, self.events = self.events, []
        return events


def _exit_message(rc) -> str:
    if rc is None:
        return "not started"
    if rc < 0:
        import signal
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"killed by signal {-rc} ({name})"
    return f"exit code {rc}"

