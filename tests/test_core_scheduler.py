"""Unit tests of the scheduling core (qcg_hier.core.scheduler): queue, dependencies,
states, cancel, remove, node loss, counters, memory and per-event cost."""
import dataclasses
import gc
import random
import time
import tracemalloc
import weakref
from collections import Counter

import pytest

from qcg_hier.core.errors import JobDescriptionError, SubmitError, UnknownJobError
from qcg_hier.core.job import IterStates, Job, Outcome
from qcg_hier.core.jobdesc import parse_job
from qcg_hier.core.nodespec import parse_nodes_option
from qcg_hier.core.resources import ResourcePool
from qcg_hier.core.scheduler import Scheduler
from qcg_hier.core.states import CODE_OF, STATE_CODES, JobState
from test_core_parsing import MAXIMUM_ITERS_GOLDEN

Q, SCH, EXE = JobState.QUEUED, JobState.SCHEDULED, JobState.EXECUTING
OK, FAIL, CANC, OMIT = JobState.SUCCEED, JobState.FAILED, JobState.CANCELED, JobState.OMITTED


# ====================================================================== helpers
def spec(name, cores=1, its=None, after=None, nodes=None, values=None, **extra_res):
    desc = {"name": name, "execution": {"exec": "/bin/true"}}
    res = dict(extra_res)
    if cores is not None:
        res["numCores"] = cores
    if nodes is not None:
        res["numNodes"] = nodes
    desc["resources"] = res
    if its is not None:
        desc["iteration"] = {"stop": its} if isinstance(its, int) else its
    if values is not None:
        desc["iteration"] = {"values": values}
    if after is not None:
        desc["dependencies"] = {"after": after}
    return parse_job(desc)


_VERIFIED_FINAL = weakref.WeakKeyDictionary()  # Scheduler -> {id(job): job} of final jobs already checked
_FINAL_CODES = [CODE_OF[st] for st in (OK, FAIL, CANC, OMIT)]


def check(s: Scheduler) -> None:
    """Every counter equals a recount from the jobs, tasks and pool."""
    verified = _VERIFIED_FINAL.setdefault(s, {})
    jobs = list(s.jobs.values())
    job_recount = Counter(j.state for j in jobs)
    for state in JobState:
        assert s.job_counts[state] == job_recount[state], ("job_counts", state, s.job_counts, job_recount)
    it_recount = [0] * len(STATE_CODES)
    running = 0
    for j in jobs:
        counts = j.counts
        for code, n in enumerate(counts):
            it_recount[code] += n
        for it, task in j.running.items():
            assert task.it == it and task.job is j
            assert s.tasks.get(task.tid) is task, f"running task {task.label} not in scheduler.tasks"
            assert task.history[-1][0] in (SCH, EXE)
            it_recount[CODE_OF[task.history[-1][0]]] += 1
        running += len(j.running)
        finished = sum(counts)
        not_started = j.total - finished - len(j.running)
        assert not_started >= 0
        it_recount[CODE_OF[Q]] += not_started
        states = j.it_states
        if isinstance(states, IterStates):  # a large job: its compact states, recounted from their structure
            states.validate()
            tally = states.tally()
            for code in _FINAL_CODES:
                assert tally[code] == counts[code], (j.name, STATE_CODES[code], tally, counts)
            assert tally[CODE_OF[Q]] == j.total - finished, (j.name, tally, finished)
        if j.total <= 2000 and id(j) not in verified:
            per_it = [0] * len(STATE_CODES)
            for i in range(j.start, j.stop):
                per_it[CODE_OF[j.iteration_state(i)]] += 1
            for code in _FINAL_CODES:
                assert per_it[code] == counts[code], (j.name, STATE_CODES[code], per_it, counts)
            if j.state.is_final:
                verified[id(j)] = j
        if j.state.is_final:
            assert finished == j.total and not j.running, (j.name, j.state, counts, j.running)
        else:
            assert finished < j.total or j.running
    for state in JobState:
        assert s.it_counts[state] == it_recount[CODE_OF[state]], \
            ("it_counts", state, dict(s.it_counts), it_recount)
    assert running == len(s.tasks)
    assert s.active_jobs == sum(1 for j in jobs if not j.state.is_final)
    pool = s.pool
    alive = [n for n in pool.nodes if n.alive]
    assert pool.free_cores == sum(len(n.free) for n in alive)
    used = sum(len(sh[1]) for t in s.tasks.values() for sh in t.alloc.shares if sh[0].alive)
    assert used + pool.free_cores == pool.total_cores


class Sim:
    """A scheduler plus a fake launch layer; every step checks the counters."""

    def __init__(self, nodes="4", **kw):
        self.pool = ResourcePool(parse_nodes_option(nodes))
        self.s = Scheduler(self.pool, **kw)
        self.now = 0.0
        self.started = []  # every task started, in order

    def tick(self):
        self.now += 1.0
        return self.now

    def submit(self, *specs):
        names = self.s.submit(list(specs), self.tick())
        check(self.s)
        return names

    def schedule(self, execute=True):
        tasks = self.s.schedule(self.tick())
        if execute:
            self.s.executing(tasks, self.tick())
        self.started.extend(tasks)
        check(self.s)
        return tasks

    def finish(self, task, rc=0, **kw):
        out = self.s.finish(task.tid, Outcome(rc=rc, **kw), self.tick())
        check(self.s)
        return out

    def running(self):
        return sorted(self.s.tasks.values(), key=lambda t: t.tid)

    def run_all(self, rc_of=lambda task: 0, limit=100000):
        """Finish tasks oldest first and schedule after each, until nothing runs."""
        self.schedule()
        for _ in range(limit):
            tasks = self.running()
            if not tasks:
                return
            self.finish(tasks[0], rc=rc_of(tasks[0]))
            self.schedule()
        raise AssertionError("did not finish")

    def job(self, name):
        return self.s.jobs[name]

    def labels(self, tasks):
        return [t.label for t in tasks]


def states(history):
    return [h[0] for h in history]


# ====================================================================== queue order
class TestQueue:
    def test_fifo_on_one_core(self):
        sim = Sim("1")
        sim.submit(spec("a"), spec("b"), spec("c"))
        assert sim.labels(sim.schedule()) == ["a"]
        assert sim.schedule() == []
        sim.finish(sim.running()[0])
        assert sim.labels(sim.schedule()) == ["b"]
        sim.finish(sim.running()[0])
        assert sim.labels(sim.schedule()) == ["c"]

    def test_fifo_across_submits(self):
        sim = Sim("2")
        sim.submit(spec("a", cores=2))
        sim.schedule()
        sim.submit(spec("b", cores=2))
        sim.submit(spec("c", cores=1))
        sim.submit(spec("d", cores=1))
        sim.finish(sim.running()[0])
        assert sim.labels(sim.schedule()) == ["b"]
        sim.finish(sim.running()[0])
        assert sim.labels(sim.schedule()) == ["c", "d"]

    def test_iterations_in_order(self):
        sim = Sim("3")
        sim.submit(spec("a", its=5))
        assert sim.labels(sim.schedule()) == ["a:0", "a:1", "a:2"]
        sim.finish(sim.running()[1])
        assert sim.labels(sim.schedule()) == ["a:3"]

    def test_backfill(self):
        sim = Sim("4")
        sim.submit(spec("a", cores=2))
        sim.schedule()
        sim.submit(spec("big", cores=4), spec("small", cores=2))
        assert sim.labels(sim.schedule()) == ["small"]
        assert sim.job("big").state is Q

    def test_backfill_mixed_requests(self):
        sim = Sim("2,2")
        sim.submit(spec("a", cores=1))
        sim.schedule()
        sim.submit(spec("whole", cores=None, nodes=2), spec("two", cores=2), spec("one", cores=1))
        assert sim.labels(sim.schedule()) == ["two", "one"]
        for t in sim.running():
            sim.finish(t)
        assert sim.labels(sim.schedule()) == ["whole"]

    def test_no_starvation(self):
        sim = Sim("4")
        assert sim.s.starvation_limit == 4
        sim.submit(spec("A", its=40), spec("B", cores=4), spec("C", its=40))
        sim.run_all()
        order = [t.label for t in sim.started]
        b_at = order.index("B")
        c_before_b = sum(1 for lab in order[:b_at] if lab.startswith("C:"))
        assert c_before_b <= sim.s.starvation_limit, order[:b_at + 1]
        assert all(sim.job(n).state is OK for n in "ABC")
        # A (older) is not delayed by B
        assert max(order.index(f"A:{i}") for i in range(40)) < b_at

    def test_no_starvation_when_several_cores_free_at_once(self):
        sim = Sim("8")
        sim.submit(spec("A", its=40), spec("B", cores=8), spec("C", its=80))
        sim.schedule()
        while sim.s.tasks:
            for t in sim.running()[:4]:  # four cores come free at a time
                sim.finish(t)
            sim.schedule()
        order = [t.label for t in sim.started]
        b_at = order.index("B")
        assert sum(1 for lab in order[:b_at] if lab.startswith("C:")) <= sim.s.starvation_limit
        assert all(sim.job(n).state is OK for n in "ABC")

    def test_starvation_limit_parameter(self):
        sim = Sim("4", starvation_limit=1)
        sim.submit(spec("A", its=8), spec("B", cores=4), spec("C", its=40))
        sim.run_all()
        order = [t.label for t in sim.started]
        b_at = order.index("B")
        assert sum(1 for lab in order[:b_at] if lab.startswith("C:")) <= 1

    def test_no_starvation_of_whole_nodes(self):
        sim = Sim("2,2")
        sim.submit(spec("A", its=20), spec("W", cores=None, nodes=2), spec("C", its=40))
        sim.run_all()
        order = [t.label for t in sim.started]
        w_at = order.index("W")
        assert sum(1 for lab in order[:w_at] if lab.startswith("C:")) <= sim.s.starvation_limit

    def test_reservation_does_not_block_older_job(self):
        sim = Sim("2")
        sim.submit(spec("A", its=6), spec("B", cores=2), spec("C", its=6))
        sim.run_all()
        assert all(j.state is OK for j in sim.s.jobs.values())

    def test_idle_event(self):
        sim = Sim("2")
        sim.submit(spec("a"), spec("b", its=3))
        sim.s.drain_events()
        sim.run_all()
        events = sim.s.drain_events()
        assert events[-1] == ("idle",)
        assert sum(1 for e in events if e == ("idle",)) == 1
        assert sim.s.all_finished()
        assert sim.s.drain_events() == []


# ====================================================================== submit checks
class TestSubmit:
    def test_too_big_rejected(self):
        sim = Sim("2,2")
        with pytest.raises(SubmitError, match="Not enough resources for job big"):
            sim.s.submit([spec("ok"), spec("big", cores=5)], 0)
        with pytest.raises(SubmitError, match="Not enough resources for job n3"):
            sim.s.submit([spec("n3", cores=None, nodes=3)], 0)
        with pytest.raises(SubmitError, match="Not enough resources for job pn"):
            sim.s.submit([spec("pn", cores=3, nodes=1)], 0)
        with pytest.raises(SubmitError, match="Not enough resources for job rng"):
            sim.s.submit([spec("rng", cores={"min": 5, "max": 8})], 0)
        assert sim.s.jobs == {} and sum(sim.s.it_counts.values()) == 0 and sum(sim.s.job_counts.values()) == 0
        sim.submit(spec("fits", cores=4), spec("fits2", cores={"min": 4}))

    def test_scheduler_min_too_big_rejected(self):
        sim = Sim("2,2")
        with pytest.raises(JobDescriptionError):
            sim.s.submit([spec("ok"), spec("big", cores={"min": 5, "scheduler": "maximum-iters"}, its=3)], 0)
        assert sim.s.jobs == {}
        check(sim.s)

    def test_duplicate_in_batch(self):
        sim = Sim("2")
        with pytest.raises(SubmitError, match="x"):
            sim.s.submit([spec("a"), spec("x"), spec("x")], 0)
        assert sim.s.jobs == {}
        check(sim.s)

    def test_duplicate_across_batches(self):
        sim = Sim("2")
        sim.submit(spec("x"))
        with pytest.raises(SubmitError, match="Job x already exist"):
            sim.s.submit([spec("y"), spec("x")], 0)
        assert list(sim.s.jobs) == ["x"]
        check(sim.s)

    def test_duplicate_of_finished_job(self):
        sim = Sim("2")
        sim.submit(spec("x"))
        sim.run_all()
        with pytest.raises(SubmitError):
            sim.s.submit([spec("x")], 0)
        sim.s.remove("x")
        sim.submit(spec("x"))  # a removed name may be used again

    @pytest.mark.parametrize("batch", [
        [("a", ["b"]), ("b", ["a"])],
        [("a", ["a"])],
        [("a", ["a:1"])],
        [("a", ["a:${it}"])],
        [("a", ["c"]), ("b", ["a"]), ("c", ["b:${it}"])],
        [("ok", None), ("a", ["b:2"]), ("b", ["a"])],
    ])
    def test_cycles_rejected(self, batch):
        sim = Sim("2")
        specs = [spec(n, its=3, after=deps) for n, deps in batch]
        with pytest.raises(SubmitError, match="[Cc]ycle"):
            sim.s.submit(specs, 0)
        assert sim.s.jobs == {}
        check(sim.s)

    def test_chain_is_not_a_cycle(self):
        sim = Sim("2")
        sim.submit(spec("a"), spec("b", after=["a"]), spec("c", after=["a", "b"]))
        sim.run_all()
        assert [t.label for t in sim.started] == ["a", "b", "c"]

    def test_long_chain_listed_last_job_first(self):
        """A chain deeper than Python's recursion limit, each job naming the one after it."""
        sim = Sim("2")
        n = 5000
        sim.submit(*[spec(f"x{i}", after=[f"x{i + 1}"] if i < n - 1 else None) for i in range(n)])
        assert len(sim.s.jobs) == n

    def test_cycle_at_the_end_of_a_long_chain_is_named(self):
        sim = Sim("2")
        n = 3000
        specs = [spec(f"x{i}", after=[f"x{i + 1}"]) for i in range(n - 1)] + [spec(f"x{n - 1}", after=[f"x{n - 3}"])]
        with pytest.raises(SubmitError, match=f"Dependency cycle: x{n - 3} -> x{n - 2} -> x{n - 1} -> x{n - 3}"):
            sim.s.submit(specs, 0)
        assert sim.s.jobs == {}

    def test_dependency_on_later_job_in_batch(self):
        sim = Sim("2")
        sim.submit(spec("b", after=["a"]), spec("a"))
        sim.run_all()
        assert [t.label for t in sim.started] == ["a", "b"]


# ====================================================================== dependencies
class TestDependencies:
    def test_waits_for_whole_job(self):
        sim = Sim("4")
        sim.submit(spec("a", its=3), spec("b", after="a"))
        tasks = sim.schedule()
        assert sim.labels(tasks) == ["a:0", "a:1", "a:2"]
        sim.finish(tasks[0])
        sim.finish(tasks[1])
        assert sim.schedule() == []
        sim.finish(tasks[2])
        assert sim.labels(sim.schedule()) == ["b"]

    def test_failed_dependency_omits(self):
        sim = Sim("2")
        sim.submit(spec("a"), spec("b", after="a", its=3), spec("c", after="b"))
        sim.s.drain_events()
        sim.finish(sim.schedule()[0], rc=1)
        b = sim.job("b")
        assert b.state is OMIT and sim.job("c").state is OMIT
        assert any("a" in m and "FAILED" in m for m in b.messages)
        assert b.counts[STATE_CODES.index(OMIT)] == 3
        assert states(b.history) == [Q, OMIT]
        assert ("job", b, OMIT) in sim.s.drain_events()
        assert sim.schedule() == []

    def test_dependency_on_already_failed_job(self):
        sim = Sim("2")
        sim.submit(spec("a"))
        sim.finish(sim.schedule()[0], rc=2)
        sim.submit(spec("b", after=["a"]))
        assert sim.job("b").state is OMIT
        assert sim.job("b").messages

    def test_canceled_dependency_omits(self):
        sim = Sim("1")
        sim.submit(spec("gate"), spec("a"), spec("b", after="a"))
        sim.schedule()
        sim.s.cancel("a", sim.tick())
        assert sim.job("a").state is CANC
        assert sim.job("b").state is OMIT
        assert any("CANCELED" in m for m in sim.job("b").messages)
        check(sim.s)

    def test_unknown_dependency_omits(self):
        sim = Sim("2")
        sim.submit(spec("b", after="nope"), spec("c", after=["nope:2"], its=2))
        assert sim.job("b").state is OMIT and sim.job("c").state is OMIT
        assert any("nope" in m for m in sim.job("b").messages)
        assert sim.s.all_finished()

    def test_unknown_iteration_omits(self):
        sim = Sim("2")
        sim.submit(spec("a", its=3), spec("b", after="a:7"), spec("c", after="a:1"))
        assert sim.job("b").state is OMIT
        assert sim.job("c").state is Q

    def test_iteration_dependency(self):
        sim = Sim("2")
        sim.submit(spec("a", its=4), spec("b", after="a:2"))
        tasks = sim.schedule()
        assert sim.labels(tasks) == ["a:0", "a:1"]
        sim.finish(tasks[0])
        assert sim.labels(sim.schedule()) == ["a:2"]
        sim.finish(tasks[1])
        assert sim.labels(sim.schedule()) == ["a:3"]
        sim.finish(sim.running()[0])  # a:2
        assert sim.labels(sim.schedule()) == ["b"]
        assert sim.job("a").state is Q  # a:3 still runs

    def test_iteration_dependency_on_finished_iteration(self):
        sim = Sim("2")
        sim.submit(spec("a", its=2))
        for t in sim.schedule():
            sim.finish(t, rc=0 if t.it == 0 else 1)
        sim.submit(spec("b", after="a:0"), spec("c", after="a:1"))
        assert sim.job("c").state is OMIT
        assert sim.labels(sim.schedule()) == ["b"]

    def test_per_iteration_dependency(self):
        sim = Sim("8")
        sim.submit(spec("a", its=4, cores=2), spec("b", its=4, after="a:${it}"))
        tasks = sim.schedule()
        assert sim.labels(tasks) == ["a:0", "a:1", "a:2", "a:3"]
        by_it = {t.it: t for t in tasks}
        sim.finish(by_it[2])
        assert sim.labels(sim.schedule()) == ["b:2"]
        sim.finish(by_it[0], rc=5)  # b:0 is omitted only
        assert sim.schedule() == []
        b = sim.job("b")
        assert b.iteration_state(0) is OMIT and b.iteration_state(1) is Q
        sim.finish(by_it[3])
        sim.finish(by_it[1])
        assert sorted(sim.labels(sim.schedule())) == ["b:1", "b:3"]
        for t in sim.running():
            sim.finish(t)
        assert sim.job("a").state is FAIL
        assert b.state is FAIL
        assert b.counts[STATE_CODES.index(OK)] == 3 and b.counts[STATE_CODES.index(OMIT)] == 1
        assert any("b:0" in m for m in b.messages)
        assert states(b.history) == [Q, FAIL]

    @pytest.mark.parametrize("after, final", [("a:${it}", FAIL), ("a", OMIT)], ids=["per-iteration", "whole-job"])
    def test_an_iterative_job_whose_iterations_were_all_omitted(self, after, final):
        """Upstream 0.14.2: iterations OMITTED one by one make the job FAILED; a job left out as a
        whole (its whole-job dependency failed) is OMITTED."""
        sim = Sim("2")
        sim.submit(spec("a", its=2), spec("b", its=2, after=after))
        for t in sim.schedule():
            sim.finish(t, rc=1)
        b = sim.job("b")
        assert b.counts[STATE_CODES.index(OMIT)] == 2
        assert b.state is final

    def test_per_iteration_dependency_with_offset_ranges(self):
        sim = Sim("4")
        sim.submit(spec("a", its={"start": 0, "stop": 3}), spec("b", its={"start": 1, "stop": 5}, after="a:${it}"))
        sim.run_all()
        b = sim.job("b")
        # b:3 and b:4 depend on unknown iterations of a
        assert b.iteration_state(1) is OK and b.iteration_state(2) is OK
        assert b.iteration_state(3) is OMIT and b.iteration_state(4) is OMIT
        assert b.state is FAIL

    def test_per_iteration_and_whole_job_dependency(self):
        sim = Sim("4")
        sim.submit(spec("g"), spec("a", its=3), spec("b", its=3, after=["g", "a:${it}"]))
        tasks = sim.schedule()
        assert sorted(sim.labels(tasks)) == ["a:0", "a:1", "a:2", "g"]
        for t in tasks:
            if t.label != "g":
                sim.finish(t)
        assert sim.schedule() == []
        sim.finish([t for t in tasks if t.label == "g"][0])
        assert len(sim.schedule()) == 3

    def test_many_per_iteration_dependencies(self):
        n = 3000  # more than the look-ahead window of the dependency scan
        sim = Sim("4")
        sim.submit(spec("a", its=n), spec("b", its=n, after="a:${it}"))
        done = 0
        sim.schedule()
        while sim.s.tasks:
            for t in list(sim.s.tasks.values()):
                sim.s.finish(t.tid, Outcome(rc=0 if t.job.name == "b" or t.it % 100 else 1), 1.0)
            sim.s.schedule(1.0)
            done += 1
            assert done < 5 * n
        check(sim.s)
        b = sim.job("b")
        assert b.counts[STATE_CODES.index(OMIT)] == n // 100
        assert b.counts[STATE_CODES.index(OK)] == n - n // 100
        assert sim.s.all_finished()


# ====================================================================== states
class TestStates:
    def test_plain_job_history(self):
        sim = Sim("2")
        sim.submit(spec("a"))
        sim.s.drain_events()
        t = sim.schedule()[0]
        sim.finish(t)
        a = sim.job("a")
        assert states(a.history) == [Q, SCH, EXE, OK]
        times = [h[1] for h in a.history]
        assert times == sorted(times)
        events = sim.s.drain_events()
        assert [e[2] for e in events if e[0] == "job"] == [SCH, EXE, OK]
        rec = a.records[0]
        assert states(rec.history) == [SCH, EXE, OK]
        assert rec.outcome.rc == 0 and rec.message is None
        assert rec.allocation == "n0[0]"

    def test_iterative_job_history(self):
        sim = Sim("2")
        sim.submit(spec("a", its=3))
        sim.s.drain_events()
        sim.run_all()
        a = sim.job("a")
        assert states(a.history) == [Q, OK]
        for it in range(3):
            assert states(a.records[it].history) == [SCH, EXE, OK]
            assert a.iteration_state(it) is OK
        events = sim.s.drain_events()
        assert [e for e in events if e[0] == "job"] == [("job", a, OK)]
        its = [(e[2], e[3]) for e in events if e[0] == "it"]
        for it in range(3):
            assert [st for i, st in its if i == it] == [SCH, EXE, OK]

    def test_iteration_states_while_running(self):
        sim = Sim("1")
        sim.submit(spec("a", its=2))
        t = sim.schedule(execute=False)[0]
        a = sim.job("a")
        assert a.iteration_state(0) is SCH and a.iteration_state(1) is Q
        assert a.state is Q
        sim.s.executing([t], 5.0)
        assert a.iteration_state(0) is EXE
        assert sim.s.it_counts[EXE] == 1
        sim.s.executing([t], 6.0)  # twice: no effect
        assert sim.s.it_counts[EXE] == 1 and states(t.history) == [SCH, EXE]

    def test_failed_exit_code(self):
        sim = Sim("1")
        sim.submit(spec("a"))
        sim.finish(sim.schedule()[0], rc=3)
        a = sim.job("a")
        assert a.state is FAIL
        assert a.messages == ["exit code 3"]
        assert a.records[0].message == "exit code 3"

    def test_killed_by_signal(self):
        sim = Sim("1")
        sim.submit(spec("a"))
        sim.finish(sim.schedule()[0], rc=-9)
        assert sim.job("a").state is FAIL
        assert sim.job("a").messages == ["killed by signal 9 (SIGKILL)"]

    def test_outcome_error(self):
        sim = Sim("1")
        sim.submit(spec("a"))
        sim.finish(sim.schedule()[0], rc=None, error="cannot exec: no such file")
        assert sim.job("a").state is FAIL
        assert sim.job("a").messages == ["cannot exec: no such file"]
        sim.submit(spec("b"))
        sim.finish(sim.schedule()[0], rc=0, error="launch failed")
        assert sim.job("b").state is FAIL and sim.job("b").messages == ["launch failed"]

    def test_iterative_failure_message_names_iteration(self):
        sim = Sim("2")
        sim.submit(spec("a", its=2))
        for t in sim.schedule():
            sim.finish(t, rc=t.it)
        a = sim.job("a")
        assert a.state is FAIL
        assert a.messages == ["a:1: exit code 1"]
        assert a.iteration_state(0) is OK and a.iteration_state(1) is FAIL

    def test_finish_unknown_tid(self):
        sim = Sim("1")
        assert sim.s.finish(12345, Outcome(rc=0), 1.0) is None
        check(sim.s)

    def test_find(self):
        sim = Sim("1")
        sim.submit(spec("a", its={"start": 2, "stop": 4}), spec("p"))
        assert sim.s.find("a") == (sim.job("a"), None)
        assert sim.s.find("a:3") == (sim.job("a"), 3)
        for bad in ("zz", "a:1", "a:4", "a:x", "p:0", "zz:1", "a:\u00b3", "a:", "a:-3"):
            with pytest.raises(UnknownJobError):
                sim.s.find(bad)


# ====================================================================== cancel / remove
class TestCancel:
    def test_cancel_queued(self):
        sim = Sim("1")
        sim.submit(spec("gate"), spec("a"), spec("b", its=5))
        sim.schedule()
        assert sim.s.cancel("a", sim.tick()) == []
        assert sim.s.cancel("b", sim.tick()) == []
        check(sim.s)
        assert sim.job("a").state is CANC and states(sim.job("a").history) == [Q, CANC]
        assert sim.job("b").state is CANC and sim.job("b").counts[STATE_CODES.index(CANC)] == 5
        sim.finish(sim.running()[0])
        assert sim.schedule() == []
        assert sim.s.all_finished()

    def test_cancel_running(self):
        sim = Sim("2")
        sim.submit(spec("a"), spec("b", its=4))
        tasks = sim.schedule()
        assert sim.labels(tasks) == ["a", "b:0"]
        kills = sim.s.cancel("a", sim.tick())
        assert kills == [tasks[0]]
        assert sim.job("a").state is EXE  # until the kill is reported
        assert sim.s.cancel("a", sim.tick()) == []  # already being killed
        sim.finish(tasks[0], rc=-15)
        assert sim.job("a").state is CANC
        assert states(sim.job("a").history) == [Q, SCH, EXE, CANC]
        kills = sim.s.cancel("b", sim.tick())
        assert kills == [tasks[1]]
        check(sim.s)
        assert sim.schedule() == []  # nothing of b starts any more
        sim.finish(tasks[1], rc=0)  # even a successful end of a killed task counts as cancelled
        b = sim.job("b")
        assert b.state is CANC and b.counts[STATE_CODES.index(CANC)] == 4
        assert sim.s.all_finished()

    def test_cancel_finished_raises(self):
        sim = Sim("1")
        sim.submit(spec("a"))
        sim.run_all()
        with pytest.raises(UnknownJobError):
            sim.s.cancel("a", 1.0)
        with pytest.raises(UnknownJobError):
            sim.s.cancel("nope", 1.0)

    def test_cancel_queued_iteration(self):
        sim = Sim("1")
        sim.submit(spec("a", its=5))
        sim.schedule()
        assert sim.s.cancel("a:3", sim.tick()) == []
        check(sim.s)
        a = sim.job("a")
        assert a.iteration_state(3) is CANC
        with pytest.raises(UnknownJobError):
            sim.s.cancel("a:3", 1.0)
        sim.run_all()
        assert [t.it for t in sim.started] == [0, 1, 2, 4]
        assert a.state is FAIL
        assert a.counts[STATE_CODES.index(OK)] == 4

    def test_cancel_running_iteration(self):
        sim = Sim("2")
        sim.submit(spec("a", its=3))
        tasks = sim.schedule()
        kills = sim.s.cancel("a:1", sim.tick())
        assert kills == [tasks[1]]
        assert sim.s.cancel("a:1", sim.tick()) == []
        sim.finish(tasks[1], rc=-15)
        assert sim.job("a").iteration_state(1) is CANC
        sim.run_all()
        assert sim.job("a").iteration_state(2) is OK
        assert sim.job("a").state is FAIL

    def test_cancel_all_iterations_one_by_one(self):
        sim = Sim("1")
        sim.submit(spec("gate"), spec("a", its=2))
        sim.schedule()
        sim.s.cancel("a:0", sim.tick())
        sim.s.cancel("a:1", sim.tick())
        check(sim.s)
        assert sim.job("a").state.is_final

    def test_cancel_job_with_waiting_dependencies(self):
        sim = Sim("1")
        sim.submit(spec("gate"), spec("a", its=3, after="gate"), spec("c", its=3, after="a:${it}"))
        sim.schedule()
        sim.s.cancel("a", sim.tick())
        check(sim.s)
        assert sim.job("a").state is CANC
        assert sim.job("c").counts[STATE_CODES.index(OMIT)] == 3
        assert sim.job("c").state is FAIL  # each iteration OMITTED on its own: upstream's FAILED
        sim.finish(sim.running()[0])
        assert sim.schedule() == []
        assert sim.s.all_finished()

    def test_cancel_iterative_partly_run(self):
        sim = Sim("2")
        sim.submit(spec("a", its=10), spec("w", after="a:7"))
        tasks = sim.schedule()
        sim.finish(tasks[0])
        sim.schedule()
        kills = sim.s.cancel("a", sim.tick())
        assert len(kills) == 2
        assert sim.job("w").state is OMIT
        for t in kills:
            sim.finish(t, rc=-15)
        a = sim.job("a")
        assert a.state is CANC
        assert a.counts[STATE_CODES.index(OK)] == 1 and a.counts[STATE_CODES.index(CANC)] == 9

    def test_cancel_ten_million_iterations(self):
        sim = Sim("4")
        t0 = time.perf_counter()
        sim.s.submit([spec("big", its=10 ** 7)], 1.0)
        tasks = sim.s.schedule(2.0)
        assert len(tasks) == 4
        sim.s.executing(tasks, 2.0)
        sim.s.finish(tasks[0].tid, Outcome(rc=0), 3.0)
        more = sim.s.schedule(3.0)
        assert len(more) == 1
        kills = sim.s.cancel("big", 4.0)
        assert len(kills) == 4
        for t in kills:
            sim.s.finish(t.tid, Outcome(rc=-15), 5.0)
        elapsed = time.perf_counter() - t0
        big = sim.job("big")
        assert big.state is CANC
        assert sim.s.it_counts[OK] == 1 and sim.s.it_counts[CANC] == 10 ** 7 - 1
        assert sum(sim.s.it_counts.values()) == 10 ** 7
        assert sim.s.it_counts[Q] == 0 and sim.s.it_counts[EXE] == 0
        assert big.iteration_state(0) is OK and big.iteration_state(10 ** 7 - 1) is CANC
        assert sim.s.job_counts[CANC] == 1
        assert elapsed < 1.0, elapsed


class TestRemove:
    def test_remove_finished_only(self):
        sim = Sim("1")
        sim.submit(spec("a", its=3), spec("b"))
        sim.schedule()
        with pytest.raises(UnknownJobError):
            sim.s.remove("a")
        with pytest.raises(UnknownJobError):
            sim.s.remove("zz")
        sim.run_all()
        sim.s.remove("a")
        check(sim.s)
        assert "a" not in sim.s.jobs
        assert sim.s.job_counts[OK] == 1 and sim.s.it_counts[OK] == 1
        with pytest.raises(UnknownJobError):
            sim.s.remove("a")

    def test_dependency_on_removed_job_omits(self):
        sim = Sim("1")
        sim.submit(spec("a"))
        sim.run_all()
        sim.s.remove("a")
        sim.submit(spec("b", after="a"))
        assert sim.job("b").state is OMIT


# ====================================================================== node loss
class TestNodeLoss:
    def test_tasks_requeued_and_retried(self):
        sim = Sim("a:2,b:2")
        sim.submit(spec("it", its=4), spec("p", cores=1))
        tasks = sim.schedule()
        assert len(tasks) == 4
        on_a = [t for t in tasks if t.alloc.shares[0][0].name == "a"]
        assert len(on_a) == 2
        lost = sim.s.node_lost(sim.pool.by_name["a"], sim.tick())
        check(sim.s)
        assert sorted(t.tid for t in lost) == sorted(t.tid for t in on_a)
        assert sim.s.it_counts[Q] == 3  # two retries and p
        assert sim.schedule() == []  # b is full
        for t in list(sim.running()):
            sim.finish(t)
        retry = sim.schedule()
        assert len(retry) == 2
        assert all(sh[0].name == "b" for t in retry for sh in t.alloc.shares)
        sim.run_all()
        assert sim.job("it").state is OK and sim.job("p").state is OK
        for t in on_a:
            rec = t.job.records[t.it]
            assert states(rec.history) == [SCH, EXE, Q, SCH, EXE, OK]
            assert rec.attempts == 1
            assert rec.alloc.shares[0][0].name == "b"

    def test_plain_job_history_shows_retry(self):
        sim = Sim("a:1,b:1")
        sim.submit(spec("x"), spec("y"))
        tasks = sim.schedule()
        x_task = [t for t in tasks if t.label == "x"][0]
        node = x_task.alloc.shares[0][0]
        sim.s.node_lost(node, sim.tick())
        assert sim.job("x").state is Q
        check(sim.s)
        sim.run_all()
        x = sim.job("x")
        assert states(x.history) == [Q, SCH, EXE, Q, SCH, EXE, OK]
        assert sim.s.finish(x_task.tid, Outcome(rc=0), sim.tick()) is None  # late report of the lost run
        check(sim.s)

    def test_node_lost_makes_job_impossible(self):
        sim = Sim("a:2,b:2")
        sim.submit(spec("gate", cores=4), spec("w", cores=3), spec("small", cores=2))
        sim.schedule()
        sim.s.node_lost(sim.pool.by_name["a"], sim.tick())
        check(sim.s)
        w = sim.job("w")
        assert w.state is FAIL and any("can no longer run" in m for m in w.messages)
        sim.run_all()
        assert sim.job("small").state is OK
        gate = sim.job("gate")  # its re-queued run needs 4 cores: no longer possible either
        assert gate.state is FAIL and states(gate.history) == [Q, SCH, EXE, Q, FAIL]

    def test_multi_node_task_requeued_releases_other_node(self):
        sim = Sim("a:2,b:2,c:2")
        sim.submit(spec("span", cores=4))
        t = sim.schedule()[0]
        assert len(t.alloc.shares) == 2
        node = t.alloc.shares[0][0]
        sim.s.node_lost(node, sim.tick())
        check(sim.s)
        assert sim.pool.free_cores == 4
        retry = sim.schedule()
        assert retry and retry[0].alloc.cores == 4
        assert node not in retry[0].alloc.nodes

    def test_cancelled_task_on_lost_node(self):
        sim = Sim("a:1,b:1")
        sim.submit(spec("x", its=2))
        tasks = sim.schedule()
        kills = sim.s.cancel("x", sim.tick())
        assert len(kills) == 2
        sim.s.node_lost(tasks[0].alloc.shares[0][0], sim.tick())
        check(sim.s)
        sim.finish(tasks[1], rc=-15)
        assert sim.job("x").state is CANC
        assert sim.s.all_finished()

    def test_executing_after_node_lost(self):
        sim = Sim("a:1,b:1")
        sim.submit(spec("x"), spec("y"))
        tasks = sim.s.schedule(1.0)
        sim.s.node_lost(tasks[0].alloc.shares[0][0], 2.0)
        sim.s.executing(tasks, 3.0)  # the launch layer reports both as started
        check(sim.s)
        sim.run_all()
        assert sim.job("x").state is OK and sim.job("y").state is OK


# ====================================================================== iteration schedulers
def run_sizes(nodes, cores_range, its):
    sim = Sim(nodes)
    sim.submit(spec("s", cores=cores_range, its=its))
    first = sim.schedule()
    sim.run_all()
    got = {t.it: t.alloc.cores for t in sim.started}
    assert sim.job("s").state is OK
    return [got[i] for i in range(its)], first


def _sched_range(minimum, name, parts):
    rng = {"scheduler": {"name": name, "params": {"parts": parts} if parts else {}}}
    if minimum is not None:
        rng["min"] = minimum
    return rng


@pytest.mark.parametrize("minimum,its,avail,parts,expected", MAXIMUM_ITERS_GOLDEN)
def test_maximum_iters_in_scheduler(minimum, its, avail, parts, expected):
    got, first = run_sizes(str(avail), _sched_range(minimum, "maximum-iters", parts), its)
    assert got == expected
    # the first scheduling pass starts as many iterations as fit, not just the first one
    fit, used = 0, 0
    for size in expected:
        if used + size > avail:
            break
        used += size
        fit += 1
    assert len(first) == fit


@pytest.mark.parametrize("minimum,its,avail,parts,expected", [
    (1, 3, 8, None, [2, 2, 2]),
    (None, 7, 16, None, [2] * 7),
    (1, 4, 10, 3, [3, 3, 3, 3]),
    (2, 5, 8, None, [2] * 5),
    (3, 5, 8, None, [3] * 5),
    (1, 10, 4, None, [1] * 10),
])
def test_split_into_in_scheduler(minimum, its, avail, parts, expected):
    got, first = run_sizes(str(avail), _sched_range(minimum, "split-into", parts), its)
    assert got == expected
    assert len(first) == min(its, avail // expected[0])


def test_scheduler_on_nodes():
    sim = Sim("2,2,2,2")
    sim.submit(spec("s", cores=None, nodes={"min": 1, "scheduler": "maximum-iters"}, its=2))
    tasks = sim.schedule()
    assert [len(t.alloc.shares) for t in tasks] == [2, 2]
    assert [t.alloc.cores for t in tasks] == [4, 4]
    sim.run_all()
    assert sim.job("s").state is OK


def test_scheduler_sizes_use_total_not_free():
    sim = Sim("8")
    sim.submit(spec("g", cores=6))
    sim.schedule()
    sim.submit(spec("s", cores={"min": 1, "scheduler": "split-into"}, its=2))
    assert sim.schedule() == []  # 4 cores each (of 8 total), only 2 free
    sim.run_all()
    assert [t.alloc.cores for t in sim.started if t.job.name == "s"] == [4, 4]


def test_mixed_sizes_backfill_stays_consistent():
    sim = Sim("4,4")
    sim.submit(spec("s", cores={"min": 2, "scheduler": "maximum-iters"}, its=7),
               spec("one", its=5), spec("r", cores={"min": 1, "max": 3}, its=3))
    sim.run_all()
    assert all(j.state is OK for j in sim.s.jobs.values())


# ====================================================================== randomized invariants
def _random_run(seed, steps=400):
    rng = random.Random(seed)
    sim = Sim("a:2,b:3,c:1,d:2")
    s = sim.s
    names = []
    pending_exec = []
    counter = 0
    for _ in range(steps):
        op = rng.random()
        now = sim.tick()
        if op < 0.25:
            batch = []
            for _ in range(rng.randint(1, 3)):
                counter += 1
                name = f"j{counter}"
                its = rng.choice([None, None, 1, 3, 6])
                kind = rng.random()
                if kind < 0.55:
                    cores = rng.randint(1, 3)
                    nodes = None
                elif kind < 0.7:
                    cores = {"min": 1, "max": rng.randint(1, 4)}
                    nodes = None
                elif kind < 0.8:
                    cores, nodes = None, 1
                elif kind < 0.9 and its:
                    cores = {"min": rng.randint(1, 2), "scheduler": rng.choice(["maximum-iters", "split-into"])}
                    nodes = None
                else:
                    cores, nodes = rng.randint(1, 2), rng.randint(1, 2)
                after = []
                for _ in range(rng.choice([0, 0, 1, 2])):
                    pool_names = names + [b.name for b in batch] + ["ghost"]
                    target = rng.choice(pool_names)
                    if target in s.jobs:
                        iterative = s.jobs[target].iterative
                    else:
                        iterative = any(b.name == target and b.iteration is not None for b in batch)
                    form = rng.random()
                    if form < 0.3 and iterative:
                        after.append(f"{target}:{rng.randint(0, 3)}")
                    elif form < 0.6 and iterative and its:
                        after.append(f"{target}:${{it}}")
                    else:
                        after.append(target)
                batch.append(spec(name, cores=cores, nodes=nodes, its=its, after=after or None))
            try:
                s.submit(batch, now)
                names.extend(b.name for b in batch)
            except (SubmitError, JobDescriptionError):
                pass
        elif op < 0.45:
            tasks = s.schedule(now)
            if rng.random() < 0.5:
                s.executing(tasks, now)
            else:
                pending_exec.extend(tasks)
        elif op < 0.5 and pending_exec:
            rng.shuffle(pending_exec)
            k = rng.randint(1, len(pending_exec))
            s.executing(pending_exec[:k], now)
            del pending_exec[:k]
        elif op < 0.78 and s.tasks:
            task = rng.choice(list(s.tasks.values()))
            r = rng.random()
            if r < 0.75:
                outcome = Outcome(rc=0)
            elif r < 0.85:
                outcome = Outcome(rc=rng.choice([1, 2, -9]))
            elif r < 0.95:
                outcome = Outcome(rc=None, error="launch failed")
            else:
                outcome = Outcome(rc=-15, reason="canceled")
            s.finish(task.tid, outcome, now)
        elif op < 0.88 and names:
            target = rng.choice(names)
            j = s.jobs.get(target)
            if j is not None and j.iterative and rng.random() < 0.5:
                target = f"{target}:{rng.randrange(j.start, j.stop)}"
            try:
                s.cancel(target, now)
            except UnknownJobError:
                pass
        elif op < 0.95 and names:
            for _ in range(3):
                try:
                    s.remove(rng.choice(names))
                except UnknownJobError:
                    pass
        elif op < 0.955 and len(sim.pool.alive_nodes) > 2:
            s.node_lost(rng.choice(sim.pool.alive_nodes), now)
        else:
            s.schedule(now)
        check(s)
    # drain: run everything that can run, then cancel whatever is left
    s.executing(pending_exec, sim.tick())
    for _ in range(10000):
        s.executing(s.schedule(sim.tick()), sim.now)
        check(s)
        if not s.tasks:
            break
        s.finish(next(iter(s.tasks)), Outcome(rc=0), sim.tick())
    check(s)
    for j in list(s.jobs.values()):
        if not j.state.is_final:
            s.cancel(j.name, sim.tick())
            for t in list(j.running.values()):
                s.finish(t.tid, Outcome(rc=-15), sim.now)
        check(s)
    assert s.all_finished()
    assert all(j.state.is_final for j in s.jobs.values())
    assert sum(s.it_counts.values()) == sum(j.total for j in s.jobs.values())
    return s


@pytest.mark.parametrize("seed", range(6))
def test_random_invariants(seed):
    s = _random_run(seed)
    assert len(s.jobs) > 5
    assert s.it_counts[OK] > 0
    # shared placeholders of queued jobs (if any) are never written to
    from qcg_hier.core import job as job_module
    assert getattr(job_module, "NO_TASKS", {}) == {}
    assert not any(getattr(job_module, "NO_COUNTS", ()))


# ====================================================================== memory and cost
def test_memory_of_ten_million_iterations():
    sim = Sim("4")
    specs = [spec("big", its=10 ** 7)]
    gc.collect()
    tracemalloc.start()
    try:
        sim.s.submit(specs, 1.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * 1024 * 1024, peak
    assert sim.s.it_counts[Q] == 10 ** 7


# ---------------------------------------------------------------- 10^12 iterations cost what 10 cost
def _held(scenario, n):
    """(memory held after, peak during) `scenario(sim, n)` on a fresh 4-core Sim, from tracemalloc."""
    sim = Sim("4")
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        scenario(sim, n)
        gc.collect()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return sim, after - before, peak - before


def _compare(scenario, small, large=10 ** 12, held_limit=24 * 1024, peak_limit=256 * 1024):
    sim_s, held_s, peak_s = _held(scenario, small)
    sim_l, held_l, peak_l = _held(scenario, large)
    assert held_l - held_s < held_limit, (held_s, held_l)
    assert peak_l - peak_s < peak_limit, (peak_s, peak_l)
    return sim_s, sim_l


def _run_few_then_cancel(sim, n):
    sim.submit(spec("big", its=n))
    tasks = sim.schedule()
    assert len(tasks) == 4
    sim.finish(tasks[0])
    sim.finish(tasks[1], rc=1)
    assert len(sim.schedule()) == 2  # iterations 4 and 5
    kills = sim.s.cancel("big", sim.tick())
    assert len(kills) == 4
    for task in kills:
        sim.finish(task, rc=-15)


def test_memory_of_a_job_of_10_12_iterations_run_a_little_then_cancelled():
    for sim, n in zip(_compare(_run_few_then_cancel, 10), (10, 10 ** 12)):
        big = sim.job("big")
        assert big.state is CANC and sim.s.all_finished()
        assert big.counts[CODE_OF[OK]] == 1 and big.counts[CODE_OF[FAIL]] == 1
        assert big.counts[CODE_OF[CANC]] == n - 2 and sim.s.it_counts[CANC] == n - 2
        assert sim.s.it_counts[Q] == sim.s.it_counts[EXE] == 0 and sum(sim.s.it_counts.values()) == n
        assert [big.iteration_state(i) for i in range(7)] == [OK, FAIL, CANC, CANC, CANC, CANC, CANC]
        assert big.iteration_state(n - 1) is CANC and big.iteration_state(n // 2) is CANC
        assert len(big.records) == 6  # the iterations that ran; the others ended in bulk
        check(sim.s)


def test_a_job_of_10_12_iterations_is_queued_until_its_iterations_run():
    sim = Sim("4")
    sim.submit(spec("big", its=10 ** 12))
    big = sim.job("big")
    assert big.it_states is None and big.iteration_state(10 ** 12 - 1) is Q
    tasks = sim.schedule()
    sim.finish(tasks[2])  # out of order
    assert big.iteration_state(2) is OK and big.iteration_state(0) is EXE and big.iteration_state(10 ** 11) is Q
    with pytest.raises(UnknownJobError, match="already finished"):
        sim.s.cancel("big:2", sim.tick())
    sim.s.cancel("big:700000000000", sim.tick())  # one far ahead: no page of its own
    assert big.iteration_state(7 * 10 ** 11) is CANC and big.iteration_state(7 * 10 ** 11 + 1) is Q
    assert len(big.it_states.pages) == 1
    check(sim.s)
    sim.schedule()
    for task in sim.running():
        sim.finish(task)
    for task in sim.schedule():
        sim.finish(task)
    assert big.counts[CODE_OF[OK]] == 9 and big.counts[CODE_OF[CANC]] == 1
    sim.s.cancel("big", sim.tick())
    assert big.state is CANC and big.counts[CODE_OF[CANC]] == 10 ** 12 - 9
    assert big.iteration_state(7 * 10 ** 11) is CANC and big.iteration_state(8) is OK
    assert big.iteration_state(9) is CANC and big.iteration_state(10 ** 12 - 1) is CANC
    assert sim.s.it_counts[CANC] == 10 ** 12 - 9 and sim.s.it_counts[OK] == 9
    check(sim.s)


def test_a_large_job_that_ended_keeps_runs_not_arrays():
    from qcg_hier.core.job import PAGE
    sim = Sim("8")
    n = 5 * PAGE + 7
    sim.submit(spec("big", its=n))
    s, rng = sim.s, random.Random(4)
    tasks = s.schedule(1.0)
    while tasks:
        s.executing(tasks, 1.0)
        rng.shuffle(tasks)
        for task in tasks:
            s.finish(task.tid, Outcome(rc=0 if task.it != 3 * PAGE + 5 else 1), 2.0)
        tasks = s.schedule(3.0)
    check(s)
    states = sim.job("big").it_states
    assert sim.job("big").state is FAIL
    assert list(states.pages) == [3] and states.run_ends == [6] and not states.open  # the page where one failed


def _omitted_after_failed_dependency(sim, n):
    sim.submit(spec("dep"), spec("big", its=n, after="dep"))
    (task,) = sim.schedule()
    sim.finish(task, rc=1)


def test_memory_of_a_job_of_10_12_iterations_omitted_by_a_failed_dependency():
    for sim, n in zip(_compare(_omitted_after_failed_dependency, 10), (10, 10 ** 12)):
        big = sim.job("big")
        assert big.state is OMIT and sim.s.all_finished()
        assert big.counts[CODE_OF[OMIT]] == n and sim.s.it_counts[OMIT] == n and sim.s.it_counts[Q] == 0
        assert big.iteration_state(0) is OMIT and big.iteration_state(n - 1) is OMIT
        assert big.messages == ["dependency dep ended FAILED"]
        check(sim.s)


def _per_iteration_dependencies(sim, n):
    """b:i waits for a:i; a:1 fails (b:1 is OMITTED), then both are cancelled."""
    sim.submit(spec("a", cores=3, its=n), spec("b", its=n, after="a:${it}"))
    assert sim.labels(sim.schedule()) == ["a:0"]
    sim.finish(sim.running()[0])
    a1, b0 = sim.schedule()
    assert sim.labels([a1, b0]) == ["a:1", "b:0"]
    sim.finish(b0)
    sim.finish(a1, rc=1)
    assert sim.labels(sim.schedule()) == ["a:2"]
    sim.s.drain_events()
    for name in ("b", "a"):
        for task in sim.s.cancel(name, sim.tick()):
            sim.finish(task, rc=-15)
    sim.s.drain_events()


def test_memory_of_jobs_of_10_12_iterations_with_per_iteration_dependencies():
    # the dependent job resolves DEP_WINDOW iterations ahead (and cancels them one by one): 10^4 has as many
    for sim, n in zip(_compare(_per_iteration_dependencies, 10 ** 4), (10 ** 4, 10 ** 12)):
        a, b = sim.job("a"), sim.job("b")
        assert a.state is CANC and b.state is CANC and sim.s.all_finished()
        assert [a.iteration_state(i) for i in range(4)] == [OK, FAIL, CANC, CANC]
        assert [b.iteration_state(i) for i in range(3)] == [OK, OMIT, CANC]
        assert a.iteration_state(n - 1) is CANC and b.iteration_state(n - 1) is CANC
        assert b.counts[CODE_OF[OMIT]] == 1 and b.counts[CODE_OF[CANC]] == n - 2
        assert sim.s.it_counts[CANC] == 2 * n - 4 and not sim.s._waiters
        check(sim.s)


def test_a_job_of_10_12_iterations_that_no_longer_fits_fails_in_bulk():
    sim = Sim("a:2,b:1")
    sim.submit(spec("big", cores=2, its=10 ** 12))
    (task,) = sim.schedule()
    sim.finish(task)
    sim.schedule()
    lost = sim.s.node_lost(sim.pool.by_name["a"], sim.tick())
    assert len(lost) == 1
    big = sim.job("big")
    assert big.state is FAIL and big.counts[CODE_OF[FAIL]] == 10 ** 12 - 1 and big.iteration_state(1) is FAIL
    assert len(big.it_states.pages) <= 1
    check(sim.s)


def test_journal_replay_of_a_job_of_10_12_iterations():
    sim = Sim("4")
    sim.submit(spec("big", its=10 ** 12), spec("w", after="big:5000000"))
    big = sim.job("big")
    sim.s.restore_final("big", [[0, 4 * 10 ** 6 + 3]], OK, sim.tick())  # continues the prefix: in bulk
    sim.s.restore_final("big", [[4 * 10 ** 6 + 3, 6 * 10 ** 6]], FAIL, sim.tick())
    sim.s.restore_final("big", [[9 * 10 ** 11, 9 * 10 ** 11 + 2]], CANC, sim.tick())  # out of order
    check(sim.s)
    assert sim.job("w").state is OMIT  # big:5000000 ended FAILED
    assert big.counts[CODE_OF[OK]] == 4 * 10 ** 6 + 3 and big.counts[CODE_OF[FAIL]] == 2 * 10 ** 6 - 3
    assert big.iteration_state(4 * 10 ** 6 + 2) is OK and big.iteration_state(4 * 10 ** 6 + 3) is FAIL
    assert big.iteration_state(9 * 10 ** 11 + 1) is CANC and big.iteration_state(9 * 10 ** 11 + 2) is Q
    assert len(big.it_states.pages) <= 2 and sum(len(p) for p in big.it_states.pages.values()) <= 8192
    assert [t.it for t in sim.schedule()] == [6 * 10 ** 6 + i for i in range(4)]
    sim.s.cancel("big", sim.tick())
    for task in sim.running():
        sim.finish(task, rc=-15)
    assert big.state is CANC and big.iteration_state(10 ** 12 - 1) is CANC
    assert big.counts[CODE_OF[CANC]] == 10 ** 12 - 6 * 10 ** 6
    check(sim.s)


def _gate_sim(n):
    """A 1-core pool, a 1-core 'gate' job and n 1-core jobs to be queued behind it."""
    sim = Sim("1")
    base = spec("q")
    specs = [spec("gate")] + [dataclasses.replace(base, name=f"q{i}") for i in range(n)]
    return sim, specs


def test_memory_per_queued_job():
    n = 20000
    sim, specs = _gate_sim(n)
    sim.s.submit(specs[:1], 1.0)
    assert sim.labels(sim.s.schedule(1.0)) == ["gate"]
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        sim.s.submit(specs[1:], 2.0)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    per_job = (after - before) / n
    assert per_job < 1500, per_job
    assert sim.s.it_counts[Q] == n and sim.s.job_counts[Q] == n
    assert sim.s.schedule(3.0) == []  # all blocked behind the gate


class _GateCycle:
    """n jobs queued behind a running gate; one cycle = finish the running task, schedule the next."""

    def __init__(self, n):
        sim, specs = _gate_sim(n)
        self.s = sim.s
        self.s.submit(specs, 1.0)
        self.task = self.s.schedule(1.0)[0]
        self.s.executing([self.task], 1.0)

    def cycles(self, reps):
        s = self.s
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            s.finish(self.task.tid, Outcome(rc=0), 2.0)
            self.task = s.schedule(2.0)[0]
            s.executing([self.task], 2.0)
            best = min(best, time.perf_counter() - t0)
            s.events.clear()
        return best


def test_event_cost_does_not_grow_with_queue():
    small, large = _GateCycle(1000), _GateCycle(20000)
    t_small = t_large = float("inf")
    gc.collect()
    gc.disable()
    try:
        for _ in range(6):  # interleaved, so a burst of load hits both
            t_small = min(t_small, small.cycles(40))
            t_large = min(t_large, large.cycles(40))
    finally:
        gc.enable()
    assert t_large < 3 * t_small, (t_small, t_large)


def test_event_operations_do_not_grow_with_queue(monkeypatch):
    calls = Counter()
    orig_peek, orig_head = Job.peek, Scheduler._head

    def peek(self):
        calls["peek"] += 1
        return orig_peek(self)

    def head(self, req, heap):
        calls["head"] += 1
        return orig_head(self, req, heap)

    monkeypatch.setattr(Job, "peek", peek)
    monkeypatch.setattr(Scheduler, "_head", head)

    def per_cycle(n):
        sim, specs = _gate_sim(n)
        s = sim.s
        s.submit(specs, 1.0)
        task = s.schedule(1.0)[0]
        calls.clear()
        for _ in range(50):
            s.finish(task.tid, Outcome(rc=0), 2.0)
            task = s.schedule(2.0)[0]
        return dict(calls)

    assert per_cycle(1000) == per_cycle(20000)


# ====================================================================== events, records, reports
def test_events_without_progress():
    sim = Sim("2")
    sim.s.emit_progress = False
    sim.submit(spec("p"), spec("i", its=2))
    sim.run_all()
    events = sim.s.drain_events()
    assert all(e[0] == "idle" or e[-1 if e[0] == "job" else 3].is_final for e in events), events
    assert [e[2] for e in events if e[0] == "job"] == [OK, OK]
    assert sorted((e[2], e[3]) for e in events if e[0] == "it") == [(0, OK), (1, OK)]
    assert states(sim.job("p").history) == [Q, SCH, EXE, OK]  # the history is kept anyway


def test_iteration_event_carries_record():
    sim = Sim("1")
    sim.submit(spec("i", its=1))
    sim.s.drain_events()
    t = sim.schedule()[0]
    sim.finish(t, rc=4, pid=77, pname="app", start=10.0, end=12.5, wd="/w")
    final = [e for e in sim.s.drain_events() if e[0] == "it" and e[3].is_final]
    assert len(final) == 1
    _, job, it, state, record = final[0]
    assert (job.name, it, state) == ("i", 0, FAIL)
    assert record.message == "exit code 4"
    rt = record.runtime()
    assert rt["exit_code"] == "4" and rt["pid"] == "77" and rt["pname"] == "app"
    assert rt["rtime"] == "0:00:02.500000" and rt["allocation"] == "n0[0]" and rt["wd"] == "/w"
    assert record.nodes == {"n0": [0]}
    assert t.label == "i:0"


def test_record_limit():
    sim = Sim("2", record_limit=3)
    sim.submit(spec("i", its=8), spec("p"))
    sim.run_all()
    i = sim.job("i")
    assert len(i.records) == 3
    assert all(i.iteration_state(k) is OK for k in range(8))
    assert i.state is OK and sim.job("p").records[0].state is OK


def test_format_timedelta_matches_timedelta():
    from datetime import timedelta
    from qcg_hier.core.job import format_timedelta
    rng = random.Random(3)
    values = [0, 0.022843, 1.9999996, 59.5, 3600, 86399.999999, 86400, 90061.25, 3 * 86400 + 5]
    values += [rng.random() * 300000 for _ in range(2000)]
    for v in values:
        assert format_timedelta(v) == str(timedelta(seconds=v)), v
    assert format_timedelta(-1) == "0:00:00"


# ====================================================================== sizer and edge fixes
def _sched(nodes="4,4"):
    return Scheduler(ResourcePool(parse_nodes_option(nodes)))


def test_scheduler_job_whose_iteration_size_can_never_fit_is_rejected_at_submit():
    s = _sched("4,4")
    bad = spec("b", cores=5, nodes={"min": 1, "scheduler": {"name": "maximum-iters"}}, its=2)
    with pytest.raises(SubmitError, match="Not enough resources for job b"):
        s.submit([bad], 0)
    assert "b" not in s.jobs


def test_split_into_without_min_that_resolves_to_zero_is_rejected_but_min_1_is_honoured():
    s = _sched("4")
    no_min = parse_job({"name": "z", "execution": {"exec": "x"}, "iteration": {"stop": 10},
                        "resources": {"numCores": {"scheduler": {"name": "split-into"}}}})
    with pytest.raises(JobDescriptionError, match="resolved to zero"):
        s.submit([no_min], 0)
    with_min = parse_job({"name": "m", "execution": {"exec": "x"}, "iteration": {"stop": 10},
                          "resources": {"numCores": {"min": 1, "scheduler": {"name": "split-into"}}}})
    s.submit([with_min], 0)
    assert [t.alloc.cores for t in s.schedule(0)] == [1, 1, 1, 1]


def test_scheduler_job_that_no_longer_fits_after_node_loss_fails_instead_of_hanging():
    s = _sched("4,4")
    s.submit([spec("m", cores={"min": 3, "scheduler": {"name": "maximum-iters"}}, its=5)], 0)
    tasks = s.schedule(0)
    s.executing(tasks, 0)
    s.node_lost(s.pool.nodes[1], 1)  # the last iteration needs 8 cores: impossible now
    for task in list(s.tasks.values()):
        s.finish(task.tid, Outcome(rc=0), 2)
    while True:
        new = s.schedule(3)
        if not new:
            break
        s.executing(new, 3)
        for task in new:
            s.finish(task.tid, Outcome(rc=0), 4)
    assert s.jobs["m"].state is FAIL
    assert any("can no longer run" in m for m in s.jobs["m"].messages)
    check(s)


def test_cancelling_single_iterations_always_gives_failed_whatever_the_order():
    for order in ([0, 1], [1, 0]):
        s = _sched("1")
        s.submit([spec("gate"), spec("j", its=2, after=["gate"])], 0)
        for it in order:
            s.cancel(f"j:{it}", 1)
        assert s.jobs["j"].state is FAIL
        check(s)


def test_node_of_unknown_memory_does_not_account_memory():
    s = Scheduler(ResourcePool([dataclasses.replace(n, mem_mb=0) for n in parse_nodes_option("2")]))
    s.submit([spec("mem", nodeCrs={"mem": 4096})], 0)
    assert len(s.schedule(0)) == 1
