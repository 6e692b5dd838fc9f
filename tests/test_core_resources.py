"""Unit tests of the allocation rules of the resource pool (qcg_hier.core.resources)."""
import random


from qcg_hier.core.jobdesc import UNLIMITED, parse_job
from qcg_hier.core.nodespec import NodeSpec, parse_nodes_option
from qcg_hier.core.resources import Request, ResourcePool


def pool_of(*cores, gpus=(), mem_mb=0):
    return ResourcePool([NodeSpec(f"n{i}", c, gpus=tuple(gpus), mem_mb=mem_mb) for i, c in enumerate(cores)])


def cores(n=1, m=None):
    return Request(n, n if m is None else m)


def per_node(alloc):
    """{node name: number of slots} of an allocation."""
    return {share[0].name: len(share[1]) for share in alloc.shares}


def free(pool):
    return [len(n.free) for n in pool.nodes]


def check_pool(pool, allocations=()):
    """Internal consistency: indexes, totals and that no slot / GPU is given twice."""
    alive = [n for n in pool.nodes if n.alive]
    assert pool.free_cores == sum(len(n.free) for n in alive)
    for f, bucket in enumerate(pool._by_free):
        for node in bucket:
            assert node.alive and len(node.free) == f
        assert bool(pool._nonempty >> f & 1) == bool(bucket)
    for node in alive:
        assert node in pool._by_free[len(node.free)]
        assert (node in pool._idle) == (len(node.free) == node.total)
    for node in pool.nodes:
        if not node.alive:
            assert node not in pool._idle
    used = {}
    used_gpus = {}
    for alloc in allocations:
        for node, slots, gpu_ids, mem in alloc.shares:
            for s in slots:
                assert (node.name, s) not in used, f"slot {node.name}[{s}] given twice"
                used[(node.name, s)] = True
            for g in gpu_ids:
                assert (node.name, g) not in used_gpus, f"GPU {g} of {node.name} given twice"
                used_gpus[(node.name, g)] = True
    for node in alive:
        mine = {s for (name, s) in used if name == node.name}
        assert mine.isdisjoint(node.free)
        assert sorted(mine | set(node.free)) == list(range(node.total))
        assert set(g for (name, g) in used_gpus if name == node.name).isdisjoint(node.free_gpus)


class TestSingleNodePacking:
    def test_single_core_best_fit_goes_to_fullest_node(self):
        pool = pool_of(4, 4, 4)
        a = pool.allocate(cores(2))  # n0: 2 free
        assert per_node(a) == {"n0": 2}
        b = pool.allocate(cores(3))  # n1: 1 free (fullest that holds 3)
        assert per_node(b) == {"n1": 3}
        c = pool.allocate(cores(1))
        assert per_node(c) == {"n1": 1}  # the fullest node with a free slot
        d = pool.allocate(cores(1))
        assert per_node(d) == {"n0": 1}
        check_pool(pool, [a, b, c, d])

    def test_k_cores_packed_on_one_node(self):
        pool = pool_of(4, 4)
        one = pool.allocate(cores(1))
        assert per_node(one) == {"n0": 1}
        four = pool.allocate(cores(4))
        assert per_node(four) == {"n1": 4}
        pool.release(four)
        three = pool.allocate(cores(3))
        assert per_node(three) == {"n0": 3}
        check_pool(pool, [one, three])

    def test_slots_are_consecutive_lowest_first(self):
        pool = pool_of(4)
        a = pool.allocate(cores(2))
        assert a.shares[0][1] == [0, 1]
        b = pool.allocate(cores(2))
        assert b.shares[0][1] == [2, 3]
        assert a.describe() == "n0[0:1]"
        pool.release(a)
        c = pool.allocate(cores(1))
        assert c.shares[0][1] == [0]

    def test_spread_over_as_few_nodes_as_possible(self):
        pool = pool_of(4, 4, 4, 4)
        x = pool.allocate(cores(3))  # n0
        y = pool.allocate(cores(4))  # n1
        z = pool.allocate(cores(3))  # n2
        pool.release(y)
        assert free(pool) == [1, 4, 1, 4]
        big = pool.allocate(cores(9))
        assert big.cores == 9
        assert len(big.shares) == 3  # 4 + 4 + 1, not 1 + 4 + 1 + 3
        assert per_node(big)["n1"] == 4 and per_node(big)["n3"] == 4
        check_pool(pool, [x, z, big])
        pool.release(big)
        eight = pool.allocate(cores(8))
        assert per_node(eight) == {"n1": 4, "n3": 4}
        check_pool(pool, [x, z, eight])

    def test_spread_uses_emptiest_first(self):
        pool = pool_of(2, 8, 4)
        alloc = pool.allocate(cores(12))
        assert per_node(alloc) == {"n1": 8, "n2": 4}
        assert alloc.cores == 12

    def test_does_not_fit(self):
        pool = pool_of(2, 2)
        a = pool.allocate(cores(3))
        assert a.cores == 3
        assert pool.allocate(cores(2)) is None
        assert sorted(free(pool)) == [0, 1]
        check_pool(pool, [a])

    def test_whole_pool(self):
        pool = pool_of(3, 5)
        a = pool.allocate(cores(8))
        assert a.cores == 8 and pool.free_cores == 0
        assert pool.allocate(cores(1)) is None
        pool.release(a)
        assert pool.free_cores == 8
        check_pool(pool)


class TestRanges:
    def test_range_takes_as_much_as_free_up_to_max(self):
        pool = pool_of(4, 4)
        a = pool.allocate(cores(1))
        b = pool.allocate(Request(2, 5))
        assert b.cores == 5
        c = pool.allocate(Request(1, UNLIMITED))
        assert c.cores == 2  # everything left
        assert pool.free_cores == 0
        check_pool(pool, [a, b, c])

    def test_range_needs_min_free(self):
        pool = pool_of(4)
        a = pool.allocate(cores(3))
        assert pool.allocate(Request(2, 4)) is None
        b = pool.allocate(Request(1, 4))
        assert b.cores == 1
        check_pool(pool, [a, b])

    def test_min_only_via_job_description(self):
        req = parse_job({"name": "r", "execution": {"exec": "x"}, "resources": {"numCores": {"min": 2}}}).resources.request()
        pool = pool_of(4, 4)
        alloc = pool.allocate(req)
        assert alloc.cores == 8


class TestWholeNodes:
    def test_numnodes_takes_only_idle_nodes(self):
        pool = pool_of(4, 4, 4)
        one = pool.allocate(cores(1))
        two = pool.allocate(Request(0, 0, 2, 2))
        assert sorted(per_node(two).values()) == [4, 4]
        assert per_node(one).keys().isdisjoint(per_node(two).keys())
        assert pool.allocate(Request(0, 0, 1, 1)) is None  # 3 cores free but no idle node
        check_pool(pool, [one, two])

    def test_numnodes_range(self):
        pool = pool_of(2, 2, 2)
        one = pool.allocate(cores(1))
        alloc = pool.allocate(Request(0, 0, 1, UNLIMITED))
        assert len(alloc.shares) == 2 and alloc.cores == 4
        assert pool.allocate(Request(0, 0, 1, 1)) is None
        check_pool(pool, [one, alloc])

    def test_numnodes_not_enough_idle(self):
        pool = pool_of(2, 2)
        one = pool.allocate(cores(1))
        assert pool.allocate(Request(0, 0, 2, 2)) is None
        pool.release(one)
        assert pool.allocate(Request(0, 0, 2, 2)).cores == 4

    def test_numnodes_with_numcores_is_per_node(self):
        pool = pool_of(4, 4, 4)
        filler = pool.allocate(cores(3))  # one node with 1 free
        alloc = pool.allocate(Request(2, 2, 2, 2))
        shares = per_node(alloc)
        assert len(shares) == 2 and set(shares.values()) == {2}
        assert per_node(filler).keys().isdisjoint(shares.keys())
        assert alloc.cores == 4
        check_pool(pool, [filler, alloc])

    def test_numnodes_with_numcores_waits_for_nodes(self):
        pool = pool_of(4, 4)
        filler = pool.allocate(cores(3))
        assert pool.allocate(Request(2, 2, 2, 2)) is None  # 5 cores free but one node has only 1
        pool.release(filler)
        assert pool.allocate(Request(2, 2, 2, 2)).cores == 4

    def test_numnodes_with_core_range(self):
        pool = pool_of(4, 4)
        filler = pool.allocate(cores(1))
        alloc = pool.allocate(Request(2, 8, 2, 2))
        assert sorted(per_node(alloc).values()) == [3, 4]
        check_pool(pool, [filler, alloc])


class TestGpusAndMemory:
    def test_gpus_per_node_not_shared(self):
        pool = pool_of(4, 4, gpus=(0, 1))
        allocs = [pool.allocate(Request(1, 1, 1, 1, gpus=1)) for _ in range(4)]
        assert all(a is not None for a in allocs)
        assert pool.allocate(Request(1, 1, 1, 1, gpus=1)) is None  # cores left, no GPU left
        assert pool.free_cores == 4
        check_pool(pool, allocs)
        got = sorted((a.shares[0][0].name, a.shares[0][2]) for a in allocs)
        assert got == [("n0", (0,)), ("n0", (1,)), ("n1", (0,)), ("n1", (1,))]

    def test_gpus_release(self):
        pool = pool_of(4, gpus=(0, 1, 2))
        a = pool.allocate(Request(1, 1, 1, 1, gpus=2))
        assert a.shares[0][2] == (0, 1)
        assert pool.allocate(Request(1, 1, 1, 1, gpus=2)) is None
        pool.release(a)
        b = pool.allocate(Request(1, 1, 1, 1, gpus=2))
        assert b.shares[0][2] == (0, 1)
        c = pool.allocate(Request(1, 1, 1, 1, gpus=1))
        assert c.shares[0][2] == (2,)
        check_pool(pool, [b, c])

    def test_gpu_request_without_numnodes_on_one_node(self):
        spec = parse_job({"name": "g", "execution": {"exec": "x"},
                          "resources": {"numCores": 2, "nodeCrs": {"gpu": 1}}})
        req = spec.resources.request()
        assert req.nodes_min is None and req.gpus == 1
        pool = pool_of(4, 4, gpus=(7,))
        a = pool.allocate(req)
        assert len(a.shares) == 1 and a.cores == 2 and a.shares[0][2] == (7,)
        b = pool.allocate(req)
        assert len(b.shares) == 1 and b.shares[0][0] is not a.shares[0][0]
        assert pool.allocate(req) is None
        check_pool(pool, [a, b])

    def test_gpu_numnodes_whole_nodes(self):
        pool = pool_of(2, 2, gpus=(0, 1))
        a = pool.allocate(Request(0, 0, 1, 1, gpus=2))
        assert a.cores == 2 and a.shares[0][2] == (0, 1)
        check_pool(pool, [a])

    def test_memory_accounting(self):
        pool = pool_of(4, 4, mem_mb=1000)
        a = pool.allocate(Request(1, 1, 1, 1, mem_mb=600))
        b = pool.allocate(Request(1, 1, 1, 1, mem_mb=600))
        assert a.shares[0][0] is not b.shares[0][0]
        assert pool.allocate(Request(1, 1, 1, 1, mem_mb=600)) is None
        c = pool.allocate(Request(1, 1, 1, 1, mem_mb=400))
        assert c is not None
        assert sum(n.free_mem for n in pool.nodes) == 2000 - 1600
        for x in (a, b, c):
            pool.release(x)
        assert [n.free_mem for n in pool.nodes] == [1000, 1000]

    def test_release_restores_everything(self):
        pool = pool_of(4, 2, 3, gpus=(0, 1), mem_mb=500)
        before = [(sorted(n.free), sorted(n.free_gpus), n.free_mem) for n in pool.nodes]
        allocs = [pool.allocate(r) for r in (Request(5, 5), Request(1, 1, 1, 1, gpus=1, mem_mb=100),
                                             Request(1, 2), Request(0, 0, 1, 1))]
        allocs = [a for a in allocs if a is not None]
        assert len(allocs) >= 3
        check_pool(pool, allocs)
        for a in reversed(allocs):
            pool.release(a)
        assert [(sorted(n.free), sorted(n.free_gpus), n.free_mem) for n in pool.nodes] == before
        assert pool.free_cores == 9 and pool.used_cores == 0
        check_pool(pool)


class TestAdmission:
    def test_cores_more_than_total(self):
        pool = pool_of(4, 4)
        why = pool.why_never_fits(cores(9))
        assert why and "9 cores" in why and "8" in why
        assert pool.why_never_fits(cores(8)) is None

    def test_nodes_more_than_total(self):
        pool = pool_of(4, 4)
        why = pool.why_never_fits(Request(0, 0, 3, 3))
        assert why and "3 nodes" in why and "2" in why
        assert pool.why_never_fits(Request(0, 0, 2, 2)) is None

    def test_cores_per_node_too_many(self):
        pool = pool_of(4, 2)
        why = pool.why_never_fits(Request(3, 3, 2, 2))
        assert why and "3 cores" in why and "only 1" in why
        assert pool.why_never_fits(Request(3, 3, 1, 1)) is None

    def test_gpus(self):
        pool = pool_of(4, 4, gpus=(0,))
        assert pool.why_never_fits(Request(1, 1, 1, 1, gpus=2))
        assert "GPU" in pool.why_never_fits(Request(1, 1, 2, 2, gpus=2))
        assert pool.why_never_fits(Request(1, 1, 2, 2, gpus=1)) is None
        assert pool.why_never_fits(Request(1, 1, None, None, gpus=2))
        assert pool.why_never_fits(Request(5, 5, None, None, gpus=1))
        assert pool.why_never_fits(Request(4, 4, None, None, gpus=1)) is None

    def test_memory(self):
        pool = pool_of(4, mem_mb=100)
        assert pool.why_never_fits(Request(1, 1, 1, 1, mem_mb=200))
        assert pool.why_never_fits(Request(1, 1, None, None, mem_mb=200))
        assert pool.why_never_fits(Request(1, 1, 1, 1, mem_mb=100)) is None

    def test_could_fit_now(self):
        pool = pool_of(2, 2)
        a = pool.allocate(cores(3))
        assert pool.could_fit_now(cores(1))
        assert not pool.could_fit_now(cores(2))
        assert not pool.could_fit_now(Request(0, 0, 2, 2))
        pool.release(a)
        assert pool.could_fit_now(Request(2, 2, 2, 2))


class TestNodeLoss:
    def test_mark_lost_removes_slots(self):
        pool = pool_of(4, 4)
        assert pool.total_cores == 8
        pool.mark_lost(pool.by_name["n0"])
        assert pool.total_cores == 4 and pool.free_cores == 4
        assert [n.name for n in pool.alive_nodes] == ["n1"]
        a = pool.allocate(cores(4))
        assert per_node(a) == {"n1": 4}
        assert pool.allocate(cores(1)) is None
        assert pool.allocate(Request(0, 0, 1, 1)) is None
        assert pool.why_never_fits(cores(5))
        assert pool.why_never_fits(Request(0, 0, 2, 2))
        check_pool(pool, [a])

    def test_mark_lost_with_running_allocation(self):
        pool = pool_of(4, 4)
        a = pool.allocate(cores(6))  # spans both nodes
        assert pool.free_cores == 2
        lost = a.shares[0][0]
        pool.mark_lost(lost)
        other = [n for n in pool.nodes if n is not lost][0]
        assert pool.free_cores == len(other.free)
        pool.release(a)  # the share on the dead node does not come back
        assert pool.free_cores == 4 and pool.total_cores == 4 and pool.used_cores == 0
        pool.mark_lost(lost)  # twice: no effect
        assert pool.free_cores == 4
        check_pool(pool)

    def test_lost_node_with_gpus_not_used(self):
        pool = pool_of(2, 2, gpus=(0,))
        pool.mark_lost(pool.nodes[0])
        a = pool.allocate(Request(1, 1, 1, 1, gpus=1))
        assert a.shares[0][0].name == "n1"
        assert pool.allocate(Request(1, 1, 1, 1, gpus=1)) is None


def test_random_allocate_release_keeps_pool_consistent():
    rng = random.Random(42)
    pool = ResourcePool(parse_nodes_option("4,8,2,6,1", gpus=(0, 1), mem_mb=64))
    live = []
    requests = [cores(1), cores(3), cores(9), Request(2, 6), Request(1, UNLIMITED), Request(0, 0, 1, 1),
                Request(0, 0, 2, UNLIMITED), Request(2, 2, 2, 2), Request(1, 1, 1, 2, gpus=1),
                Request(1, 2, None, None, gpus=1, mem_mb=32)]
    for step in range(3000):
        if live and rng.random() < 0.45:
            pool.release(live.pop(rng.randrange(len(live))))
        else:
            req = rng.choice(requests)
            free_before = pool.free_cores
            alloc = pool.allocate(req)
            if alloc is not None:
                assert alloc.cores >= req.cores_min * (req.nodes_min or 1)
                if req.nodes_min is not None:
                    assert req.nodes_min <= len(alloc.shares) <= req.nodes_max
                    for node, slots, gpu_ids, mem in alloc.shares:
                        assert len(gpu_ids) == req.gpus and mem == req.mem_mb
                        if req.cores_min:
                            assert req.cores_min <= len(slots) <= req.cores_max
                        else:
                            assert len(slots) == node.total
                elif not req.gpus and req.cores_max <= pool.max_slots:
                    # a task one node can hold is packed on one node
                    assert len(alloc.shares) == 1 and req.cores_min <= alloc.cores <= req.cores_max
                elif not req.gpus:
                    assert alloc.cores == min(req.cores_max, free_before)
                assert pool.free_cores == free_before - alloc.cores
                live.append(alloc)
            elif req.nodes_min is None and not req.gpus:
                most_free = max((len(n.free) for n in pool.nodes if n.ready), default=0)
                assert free_before < req.cores_min or (req.cores_max <= pool.max_slots
                                                       and most_free < req.cores_min)
        if step % 50 == 0:
            check_pool(pool, live)
    for a in live:
        pool.release(a)
    check_pool(pool)
    assert pool.free_cores == 21


def test_a_job_one_node_can_hold_waits_for_one_node_instead_of_splitting():
    pool = ResourcePool(parse_nodes_option("3,3"))
    first, second = pool.allocate(Request(2, 2)), pool.allocate(Request(2, 2))
    assert {first.shares[0][0].name, second.shares[0][0].name} == {"n0", "n1"}
    assert pool.free_cores == 2
    assert pool.allocate(Request(2, 2)) is None  # 1 + 1 free: it waits rather than splitting
    pool.release(first)
    assert [s[0].name for s in pool.allocate(Request(2, 2)).shares] == [first.shares[0][0].name]


def test_a_job_larger_than_any_node_spreads_over_as_few_nodes_as_possible():
    pool = ResourcePool(parse_nodes_option("4,4,4"))
    pool.allocate(Request(1, 1))
    alloc = pool.allocate(Request(8, 8))
    assert alloc.cores == 8 and len(alloc.shares) == 2


def test_a_range_within_one_node_takes_what_the_emptiest_node_has():
    pool = ResourcePool(parse_nodes_option("4,4"))
    pool.allocate(Request(1, 1))
    alloc = pool.allocate(Request(2, 4))
    assert len(alloc.shares) == 1 and alloc.cores == 4
    alloc = pool.allocate(Request(2, 4))
    assert len(alloc.shares) == 1 and alloc.cores == 3
    assert pool.allocate(Request(2, 4)) is None  # nothing left on any one node
