"""The governor's pool of children and the scheduling core over it; a child's adopt/give/take_back."""
import pytest

from qcg_hier.core.childpool import ChildPool
from qcg_hier.core.errors import SubmitError
from qcg_hier.core.job import Outcome
from qcg_hier.core.jobdesc import parse_job
from qcg_hier.core.nodespec import NodeSpec
from qcg_hier.core.resources import ResourcePool, Request
from qcg_hier.core.scheduler import Scheduler
from qcg_hier.core.states import JobState


def nodes(*cores, prefix="n"):
    return [NodeSpec(f"{prefix}{i}", c) for i, c in enumerate(cores)]


def pool_with(*children, prefetch=2.0):
    """children: (name, [cores per node], tags)"""
    pool = ChildPool(prefetch)
    for name, cores, tags in children:
        pool.mark_ready(pool.attach(name, nodes(*cores, prefix=name), (name, *tags)))
    return pool


def job(name, **kw):
    desc = {"name": name, "execution": {"exec": "/bin/true"}}
    desc.update(kw)
    return parse_job(desc)


def finish_all(core, tasks, now=1.0, rc=0):
    for t in tasks:
        core.finish(t.tid, Outcome(rc=rc, start=now, end=now), now)


def by_child(tasks):
    out = {}
    for t in tasks:
        out.setdefault(t.alloc.child.name, []).append(t.it)
    return out


def test_idle_cores_fill_first_then_the_prefetch_room():
    pool = pool_with(("a", [4], ()), ("b", [4], ()), ("c", [4], ()))
    core = Scheduler(pool)
    core.submit([job("w", iteration={"stop": 100})], 0.0)
    started = core.schedule(0.0)
    placed = by_child(started)
    # 3 x 4 idle cores, then 3 x 4 more of prefetch room: 24 handed out, evenly, in runs
    assert {k: len(v) for k, v in placed.items()} == {"a": 8, "b": 8, "c": 8}
    assert placed["a"][:4] == [0, 1, 2, 3] and placed["b"][:4] == [4, 5, 6, 7]
    assert pool.free_cores == 0 and pool.idle_cores == 0
    assert core.schedule(0.0) == []
    finish_all(core, [t for t in started if t.alloc.child.name == "b"][:3])
    more = core.schedule(1.0)
    assert by_child(more) == {"b": [24, 25, 26]}  # capacity frees in b: b takes the next chunk


def test_a_bigger_child_takes_more():
    pool = pool_with(("small", [2], ()), ("big", [4], ()))
    core = Scheduler(pool)
    core.submit([job("w", iteration={"stop": 1000})], 0.0)
    counts = {"small": 0, "big": 0}
    running = core.schedule(0.0)
    # every round: each child finishes what it has running (its cores' worth), the core refills
    for _ in range(50):
        done = []
        for name, size in (("small", 2), ("big", 4)):
            mine = [t for t in running if t.alloc.child.name == name][:size]
            done += mine
            counts[name] += len(mine)
        finish_all(core, done)
        running = [t for t in running if t not in done] + core.schedule(1.0)
    assert counts["big"] == 2 * counts["small"]


def _room_sum(pool):
    return sum(c.room for c in pool.nodes if c.ready)


def test_short_tasks_deepen_a_childs_queue_and_long_ones_bring_it_back():
    from qcg_hier.core import childpool

    pool = pool_with(("a", [2], ()), ("b", [2], ()))
    a, b = pool.by_name["a"], pool.by_name["b"]
    assert a.limit == 4  # the least: one refill per core
    for _ in range(200):
        pool.observe(a, 0.001)  # millisecond tasks
    assert a.limit == 2 * childpool.MAX_PREFETCH  # capped
    assert b.limit == 4 and pool.free_cores == _room_sum(pool) == a.limit + 4
    for _ in range(200):
        pool.observe(a, 0.04)  # 40 ms: QUEUE_SECONDS of queued work per core is 1.25 tasks
    assert childpool.QUEUE_SECONDS == 0.05 and a.limit == 5  # ceil(2 x 2.25)
    for _ in range(200):
        pool.observe(a, 60.0)  # long tasks are not hoarded
    assert a.limit == 4 and pool.free_cores == _room_sum(pool) == 8
    pool.observe(b, -1.0)  # an end before its start (a clock stepped back) counts as instant
    assert b.mean_runtime == 0.0 and b.limit == 2 * childpool.MAX_PREFETCH


def test_a_deeper_queue_is_handed_out_and_accounted():
    pool = pool_with(("a", [2], ()), ("b", [2], ()))
    core = Scheduler(pool)
    core.submit([job("w", iteration={"stop": 1000})], 0.0)
    assert len(core.schedule(0.0)) == 8
    for _ in range(100):
        pool.observe(pool.by_name["a"], 0.001)
    more = core.schedule(1.0)
    assert by_child(more) == {"a": list(range(8, 8 + 60))}  # the room that opened: 64 - 4 handed out
    assert pool.free_cores == _room_sum(pool) == 0
    pool.mark_lost(pool.by_name["a"], permanent=False)
    assert pool.free_cores == _room_sum(pool) == 0


def test_tags_route_and_a_job_no_child_can_hold_is_refused():
    pool = pool_with(("plain", [4], ()), ("fat", [2, 2], ("bigmem",)))
    core = Scheduler(pool)
    core.submit([job("t", iteration={"stop": 6}, resources={"tags": ["bigmem"]})], 0.0)
    assert set(by_child(core.schedule(0.0))) == {"fat"}
    with pytest.raises(SubmitError, match="no attached child has all the tags bigmem, gpu"):
        core.submit([job("x", resources={"tags": ["bigmem", "gpu"]})], 0.0)
    with pytest.raises(SubmitError, match="no single child can hold it.*the largest, plain, requires 5 cores"):
        core.submit([job("y", resources={"numCores": 5})], 0.0)
    with pytest.raises(SubmitError, match="the largest with these tags, fat, requires 2 nodes with 3 cores"):
        core.submit([job("z", resources={"numCores": 3, "numNodes": 2, "tags": ["bigmem"]})], 0.0)
    assert "no child manager is attached" in ChildPool().why_never_fits(Request())


def test_a_lost_childs_started_work_is_a_retry_its_queued_work_and_a_returned_chunk_are_not():
    pool = pool_with(("a", [2], ()), ("b", [2], ()))
    core = Scheduler(pool)
    core.submit([job("w", iteration={"stop": 8})], 0.0)
    started = core.schedule(0.0)
    on_a = [t for t in started if t.alloc.child.name == "a"]
    core.executing(on_a[:2], 0.5)  # the child started two; the other two waited in its queue
    lost = core.node_lost(pool.by_name["a"], 1.0, permanent=False)
    assert sorted(t.it for t in lost) == sorted(t.it for t in on_a)
    assert pool.idle_cores == 0  # a is not ready; b is full
    jobobj = core.jobs["w"]
    assert [jobobj.attempts[t.it][0] for t in on_a] == [1, 1, 0, 0]  # only a started one is a retry
    on_b = [t for t in started if t.alloc.child.name == "b"]
    core.give_back(on_b[-1], 2.0)
    assert jobobj.attempts[on_b[-1].it][0] == 0
    pool.mark_ready(pool.by_name["a"])
    again = core.schedule(3.0)
    assert sorted(t.it for t in again) == sorted([t.it for t in on_a] + [on_b[-1].it])


def test_the_starvation_limit_follows_the_children_that_come_and_go():
    pool = pool_with(("a", [2], ()), ("b", [4], ()))
    core = Scheduler(pool)
    assert core.starvation_limit == 6  # one refill of the machine
    core.node_lost(pool.by_name["b"], 1.0, permanent=True)
    assert core.starvation_limit == 2
    pool.mark_ready(pool.attach("c", nodes(8, prefix="c"), ("c",)))
    core.follow_capacity()  # what the governor does when a child registers
    assert core.starvation_limit == 10
    fixed = Scheduler(pool_with(("a", [2], ()), ("b", [4], ())), starvation_limit=3)
    fixed.node_lost(fixed.pool.by_name["b"], 1.0, permanent=True)
    assert fixed.starvation_limit == 3  # given: kept


def test_a_child_adopts_a_job_and_runs_only_what_it_is_given():
    core = Scheduler(ResourcePool(nodes(2)))
    core.adopt(job("w", iteration={"start": 10, "stop": 1010}), 0.0)
    assert core.schedule(0.0) == []
    assert core.give("w", [500, 501, 502], 0.0) == 3
    tasks = core.schedule(0.0)
    assert [t.it for t in tasks] == [500, 501]
    assert core.it_counts[JobState.QUEUED] == 1 and core.it_counts[JobState.SCHEDULED] == 2
    assert core.take_back() == {"w": [502]}
    assert core.it_counts[JobState.QUEUED] == 0
    finish_all(core, tasks)
    assert core.it_counts[JobState.SUCCEED] == 2
    assert not core.jobs["w"].state.is_final  # the governor owns the job's state
    events = core.drain_events()
    assert [(e[2], e[3]) for e in events if e[0] == "it" and e[3].is_final] == [(500, JobState.SUCCEED),
                                                                           (501, JobState.SUCCEED)]


def test_a_child_cancels_a_given_iteration_and_a_plain_job_finishes():
    core = Scheduler(ResourcePool(nodes(1)))
    core.adopt(job("w", iteration={"stop": 5}), 0.0)
    core.give("w", [0, 1], 0.0)
    core.adopt(job("p"), 0.0)
    core.give("p", [0], 0.0)
    [t0] = core.schedule(0.0)
    assert t0.it == 0
    assert core.cancel("w:1", 1.0) == []
    finish_all(core, [t0])
    [tp] = core.schedule(2.0)
    assert tp.job.name == "p"
    finish_all(core, [tp])
    events = core.drain_events()
    assert ("w", 1, JobState.CANCELED) in [(e[1].name, e[2], e[3]) for e in events if e[0] == "it"]
    assert [(e[1].name, e[2]) for e in events if e[0] == "job"][-1] == ("p", JobState.SUCCEED)


def test_adopting_a_job_this_child_cannot_hold_raises():
    core = Scheduler(ResourcePool(nodes(2)))
    with pytest.raises(SubmitError):
        core.adopt(job("big", resources={"numCores": 4}), 0.0)


def test_partitions_split_and_child_commands():
    from types import SimpleNamespace

    from qcg_hier.governor.partitions import ChildStarter, split

    assert split(list(range(10)), 4) == [(0, 4), (4, 8), (8, 10)]
    assert split(list(range(3)), 16) == [(0, 3)]
    specs = nodes(4, 4, 4, 4, 4)
    config = SimpleNamespace(wd="/w", log_level="info", report_format="json", auth="curve", nl_ready_threshold=1.0,
                             nl_init_timeout=600, child_heartbeat=2.0, child_timeout=10.0, fake_launch=True,
                             disable_nl=False, system_core=False, envschema="auto", net_bind=None,
                             slurm_limit_nodes_range_begin=2)
    local = ChildStarter(specs, 2, config, None, None, slurm=False)
    assert local.count == 3
    local.governor_address = "tcp://g:1"
    argv = local.command(local.partitions["partition-2"])
    assert argv[argv.index("--nodes") + 1] == "n4:4" and "--fake-launch" in argv
    assert argv[argv.index("--parent") + 1] == "tcp://g:1" and argv[argv.index("--id") + 1] == "partition-2"
    assert "--local-agents" not in argv
    config.local_agents = 1
    argv = local.command(local.partitions["partition-2"])
    assert argv[argv.index("--local-agents") + 1] == "1"
    starter = ChildStarter(specs, 2, config, None, None, slurm=False)
    starter.slurm = True
    starter.flags = SimpleNamespace(overlap=["--overlap"], cpu_bind_none="--cpu-bind=none")
    starter.governor_address = "tcp://g:1"
    argv = starter.command(starter.partitions["partition-1"])
    assert argv[:8] == ["srun", "--overlap", "-N", "1", "-n", "1", "-w", "n2"]
    # the governor's own nodes begin at index 2 of the allocation: the child's range counts from there
    assert argv[-4:] == ["--slurm-limit-nodes-range-begin", "4", "--slurm-limit-nodes-range-end", "6"]


def test_the_governor_learns_task_lengths_from_the_ends_its_children_report():
    """The shell feeds the pool: every end a child reports carries the task's start and end."""
    from types import SimpleNamespace

    from qcg_hier.governor.childlink import ChildLauncher, LinkSettings

    pool = pool_with(("a", [2], ()))
    core = Scheduler(pool)
    core.submit([job("w", iteration={"stop": 100})], 0.0)
    running = {t.it: t for t in core.schedule(0.0)}
    service = SimpleNamespace(pool=pool, running_task=lambda name, it: running.get(it))
    launcher = ChildLauncher(None, service, None, None, LinkSettings())
    reports = [["w", it, "SUCCEED", 0, 1, "true", 10.0, 10.001, 0.0, 0, "n0[0]", None, "/"] for it in running]
    launcher._finished(SimpleNamespace(name="a"), reports)
    assert len(launcher._ended) == 4
    assert pool.by_name["a"].mean_runtime == pytest.approx(0.001)
    assert pool.by_name["a"].limit > 4
