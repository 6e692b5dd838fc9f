"""The resource pool: nodes, their free slots, GPUs and memory, and the allocation rules.

A node offers `total` slots numbered 0..total-1. Which OS CPU a slot binds to is the
launch layer's business (it learns the real CPU ids from the node's agent), so the
core only ever hands out slot numbers.

Free slots are indexed by count: `_by_free[f]` holds the nodes that have exactly `f`
free slots, so "a node with at least k free slots, the fullest first" costs at most
one look per possible count, never a scan of all nodes.
"""
from dataclasses import dataclass

from .nodespec import NodeSpec


class Node:
    __slots__ = ("name", "total", "free", "gpus", "free_gpus", "mem_mb", "free_mem", "alive", "ready",
                 "tags")

    def __init__(self, spec: NodeSpec):
        self.name = spec.name
        self.total = spec.cores
        # a stack: the lowest slot numbers are handed out first
        self.free = list(range(spec.cores - 1, -1, -1))
        self.gpus = tuple(spec.gpus)
        self.free_gpus = list(reversed(spec.gpus))
        self.mem_mb = spec.mem_mb
        self.free_mem = spec.mem_mb
        self.alive = True  # False: lost for good (its slots no longer count)
        self.ready = True  # False: cannot receive work now (agent not up yet, or restarting)
        self.tags = spec.tags


@dataclass(frozen=True, slots=True)
class Request:
    """What one task needs. `nodes is None` means "any number of nodes" (numCores only)."""

    cores_min: int = 1
    cores_max: int = 1
    nodes_min: int | None = None
    nodes_max: int | None = None
    gpus: int = 0  # per node
    mem_mb: int = 0  # per node
    tags: tuple = ()  # sorted; only a governor routes by them (a manager's nodes carry none)


# One share of an allocation: (node, slots, gpu ids, memory MB).
Share = tuple


class Allocation:
    """Slots (and GPUs, memory) given to one task, possibly over several nodes."""

    __slots__ = ("shares",)

    def __init__(self, shares: list):
        self.shares = shares

    @property
    def cores(self) -> int:
        return sum(len(s[1]) for s in self.shares)

    @property
    def nodes(self) -> list:
        return [s[0] for s in self.shares]

    def describe(self) -> str:
        """Upstream's text form: `n0[0:1],n1[3]`."""
        return ",".join(f"{s[0].name}[{':'.join(map(str, s[1]))}]" for s in self.shares)


class ResourcePool:
    """Nodes that are alive count for admission; only those also ready receive work."""

    def __init__(self, specs: list[NodeSpec], ready: bool = True):
        self.nodes = [Node(s) for s in specs]
        self.by_name = {n.name: n for n in self.nodes}
        self.max_slots = max((n.total for n in self.nodes), default=0)
        self._by_free: list[dict] = [dict() for _ in range(self.max_slots + 1)]
        self._nonempty = 0  # bit f set <=> _by_free[f] is not empty
        self._idle: dict = {}
        self.free_cores = 0
        for node in self.nodes:
            node.ready = False
            if ready:
                self.mark_ready(node)

    # ----- bookkeeping of the free-slot index -----
    def _index(self, node: Node) -> None:
        free = len(node.free)
        self._by_free[free][node] = None
        self._nonempty |= 1 << free
        if free == node.total:
            self._idle[node] = None

    def _unindex(self, node: Node) -> None:
        free = len(node.free)
        bucket = self._by_free[free]
        del bucket[node]
        if not bucket:
            self._nonempty &= ~(1 << free)
        if free == node.total:
            del self._idle[node]

    # ----- totals -----
    @property
    def total_cores(self) -> int:
        return sum(n.total for n in self.nodes if n.alive)

    @property
    def used_cores(self) -> int:
        """Slots running tasks (a node whose agent is not up yet has none in use)."""
        return sum(n.total - len(n.free) for n in self.nodes if n.alive)

    @property
    def alive_nodes(self) -> list:
        return [n for n in self.nodes if n.alive]

    def usage(self) -> tuple:
        """(nodes, total cores, used cores, free cores) of the live nodes."""
        return len(self.alive_nodes), self.total_cores, self.used_cores, self.free_cores

    def rows(self) -> list:
        return [{"name": n.name, "total": n.total, "used": n.total - len(n.free),
                 "state": "ready" if n.ready else ("lost" if not n.alive else "waiting")} for n in self.nodes]

    # ----- admission -----
    def why_never_fits(self, req: Request) -> str | None:
        """A reason the request can never be met on the whole pool, or None if it could."""
        alive = self.alive_nodes
        if req.nodes_min is None:
            if req.gpus or req.mem_mb:
                if not any(self._node_can_ever(n, req.cores_min, req) for n in alive):
                    return "no node has the requested cores and node resources (gpu/mem)"
                return None
            total = sum(n.total for n in alive)
            if req.cores_min > total:
                return f"requires {req.cores_min} cores but the allocation has {total}"
            return None
        if req.nodes_min > len(alive):
            return f"requires {req.nodes_min} nodes but the allocation has {len(alive)}"
        per_node = req.cores_min if req.cores_min else 1
        able = sum(1 for n in alive if self._node_can_ever(n, per_node, req))
        if able < req.nodes_min:
            return (f"requires {req.nodes_min} nodes with {per_node} cores"
                    + (f", {req.gpus} GPUs" if req.gpus else "") + (f", {req.mem_mb} MB" if req.mem_mb else "")
                    + f" each, but only {able} such nodes exist")
        return None

    @staticmethod
    def _node_can_ever(node: Node, cores: int, req: Request) -> bool:
        # a node of unknown memory (mem_mb 0) does not account memory
        return (node.total >= cores and len(node.gpus) >= req.gpus
                and (not req.mem_mb or not node.mem_mb or node.mem_mb >= req.mem_mb))

    def could_fit_now(self, req: Request) -> bool:
        """Cheap necessary condition for allocate() to succeed (used to skip work)."""
        if req.nodes_min is None:
            return self.free_cores >= req.cores_min
        return self.free_cores >= max(req.cores_min, 1) * req.nodes_min

    # ----- allocation -----
    def allocate(self, req: Request) -> Allocation | None:
        """Allocate now or return None if it does not fit at this moment."""
        if req.nodes_min is None:
            if req.gpus or req.mem_mb:
                return self._allocate_constrained(req, 1, 1)
            return self._allocate_cores(req.cores_min, req.cores_max)
        if req.cores_min == 0 and not req.gpus and not req.mem_mb:
            return self._allocate_whole_nodes(req.nodes_min, req.nodes_max)
        return self._allocate_constrained(req, req.nodes_min, req.nodes_max)

    def _take(self, node: Node, count: int, gpus: int = 0, mem: int = 0) -> Share:
        self._unindex(node)
        free = node.free
        if count == 1:
            slots = [free.pop()]
        else:
            slots = free[-count:][::-1] if count else []
            del free[len(free) - count:]
        gpu_ids = ()
        if gpus:
            gpu_ids = tuple(node.free_gpus[-gpus:][::-1])
            del node.free_gpus[len(node.free_gpus) - gpus:]
        node.free_mem -= mem
        self.free_cores -= count
        self._index(node)
        return (node, slots, gpu_ids, mem)

    def _allocate_cores(self, cmin: int, cmax: int) -> Allocation | None:
        """numCores only. A task that one node can hold is placed on one node, waiting for one if
        need be (a `default` process sees one node's cores only; MPI ranks stay together); only a
        task larger than any node spreads, over as few nodes as possible."""
        want = min(cmax, self.free_cores)
        if want < cmin or want <= 0:
            return None
        by_free = self._by_free
        if cmax <= self.max_slots:
            if cmin < cmax:  # a range within one node: as much as the emptiest node has
                most = self._nonempty.bit_length() - 1
                if most < cmin:
                    return None
                return Allocation([self._take(next(iter(by_free[most])), min(cmax, most))])
            fits = self._nonempty >> want  # exact: the fullest node that still holds it (best fit)
            if not fits:
                return None
            f = want + (fits & -fits).bit_length() - 1
            return Allocation([self._take(next(iter(by_free[f])), want)])
        fits = self._nonempty >> want
        if fits:  # larger than some nodes, but one node with room holds it
            f = want + (fits & -fits).bit_length() - 1
            return Allocation([self._take(next(iter(by_free[f])), want)])
        # spread over as few nodes as possible: emptiest nodes first
        shares = []
        left = want
        for f in range(self.max_slots, 0, -1):
            while left and by_free[f]:
                node = next(iter(by_free[f]))
                shares.append(self._take(node, min(f, left)))
                left -= len(shares[-1][1])
            if not left:
                break
        return Allocation(shares)

    def _allocate_whole_nodes(self, nmin: int, nmax: int) -> Allocation | None:
        if len(self._idle) < nmin:
            return None
        chosen = list(self._idle)[:nmax]
        return Allocation([self._take(n, n.total) for n in chosen])

    def _allocate_constrained(self, req: Request, nmin: int, nmax: int) -> Allocation | None:
        """Per-node cores with optional GPU/memory: a scan over nodes (rare, small jobs)."""
        cmin = req.cores_min
        whole = cmin == 0  # numNodes without numCores: whole nodes
        picked = []
        for node in self.nodes:
            if not node.ready:
                continue
            free = len(node.free)
            if whole and free != node.total:
                continue
            if free < cmin or len(node.free_gpus) < req.gpus or (req.mem_mb and node.mem_mb and node.free_mem < req.mem_mb):
                continue
            picked.append(node)
            if len(picked) == nmax:
                break
        if len(picked) < nmin:
            return None
        shares = []
        for node in picked:
            count = node.total if whole else min(req.cores_max, len(node.free))
            shares.append(self._take(node, count, req.gpus, req.mem_mb if node.mem_mb else 0))
        return Allocation(shares)

    def release(self, alloc: Allocation) -> None:
        for node, slots, gpu_ids, mem in alloc.shares:
            indexed = node.ready
            if indexed:
                self._unindex(node)
            if len(slots) == 1:
                node.free.append(slots[0])
            else:
                node.free.extend(reversed(slots))
            if gpu_ids:
                node.free_gpus.extend(reversed(gpu_ids))
            node.free_mem += mem
            if indexed:
                self.free_cores += len(slots)
                self._index(node)

    # ----- liveness -----
    def mark_lost(self, node: Node, permanent: bool = True) -> None:
        """A node stops receiving work: for good (`permanent`), or until it is ready again."""
        if node.ready:
            self._unindex(node)
            self.free_cores -= len(node.free)
            node.ready = False
        if permanent:
            node.alive = False

    def mark_ready(self, node: Node) -> None:
        """A node (back) in service: its free slots join the pool."""
        node.alive = True
        if not node.ready:
            node.ready = True
            self._index(node)
            self.free_cores += len(node.free)
