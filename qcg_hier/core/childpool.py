"""A governor's resource pool: its child managers, seen as bins of cores with tags.

The governor does not place tasks on cores (each child's own scheduler does that); it
decides which child gets which iterations. `Scheduler` runs unchanged over this pool:
a child plays the part of a node, and an "allocation" is a claim on a child's capacity.

Capacity: a child may hold up to `ceil(total * prefetch)` cores of work at once, counted
from what the governor handed out and has not yet heard finish. With `prefetch` above 1 a
child always has the next tasks queued while its results travel to the governor, and a
fast or big child takes more work, because its capacity frees up sooner or in larger parts.
A child's prefetch follows the length of its recent tasks (`observe`): it holds about
QUEUE_SECONDS of work per core beyond what runs, so that a child running millisecond tasks
refills itself from its own queue instead of waiting for the governor after every task, while
long tasks are not hoarded by one child (at the end of a campaign the others would stay idle).

Routing policy (`allocate`): among the children whose tags include all of the request's and
whose nodes could hold it, idle cores are filled first (the child with the most idle cores),
and only when no child has idle cores left does the prefetch room fill (the child with the
most room). The child that took the previous iteration of the same request keeps taking
them while it stays the right choice, so consecutive iterations go out as one chunk.
"""
import math

from .resources import ResourcePool

DEFAULT_PREFETCH = 2.0  # the least: one refill per core queued
QUEUE_SECONDS = 0.05  # queued work per core beyond what runs, in seconds of the child's recent tasks
MAX_PREFETCH = 32.0


class Child:
    """One attached child manager."""

    __slots__ = ("name", "tags", "tagset", "specs", "shape", "total", "max_node_cores", "limit",
                 "outstanding", "alive", "ready", "used", "claims", "mean_runtime")

    def __init__(self, name: str):
        self.name = name
        self.outstanding = 0  # cores of iterations handed out and not yet reported finished
        self.alive = True
        self.ready = False
        self.used = 0  # cores in use, as the child last reported
        self.claims: dict = {}  # cores -> the ChildAlloc every task of that size on this child shares
        self.mean_runtime = None  # seconds, a moving mean over its recent tasks (see ChildPool.observe)

    def describe_resources(self, specs: list, tags: tuple, prefetch: float) -> None:
        self.specs = list(specs)
        self.tags = tuple(tags)
        self.tagset = frozenset(tags)
        self.shape = ResourcePool(self.specs)  # for "could this child ever hold it"
        self.total = sum(s.cores for s in self.specs)
        self.max_node_cores = max((s.cores for s in self.specs), default=0)
        self.limit = math.ceil(self.total * prefetch)

    # (conditional expressions, not max(): these run several times per task handed out)
    @property
    def room(self) -> int:
        room = self.limit - self.outstanding
        return room if room > 0 else 0

    @property
    def idle(self) -> int:
        idle = self.total - self.outstanding
        return idle if idle > 0 else 0

    def need(self, req) -> int:
        """Cores one task of `req` takes from this child's capacity (the minimum it asks for)."""
        if req.nodes_min is None:
            return req.cores_min if req.cores_min > 1 else 1
        return req.nodes_min * (req.cores_min or self.max_node_cores)


class ChildAlloc:
    """A claim of `cores` on a child. Immutable and shared by all such claims (no object per task);
    where a task ran, the child tells with its end (`Outcome.where`)."""

    __slots__ = ("child", "cores")

    def __init__(self, child: Child, cores: int):
        self.child = child
        self.cores = cores

    @property
    def shares(self) -> tuple:
        return ((self.child, (), (), 0),)

    @property
    def nodes(self) -> list:
        return [self.child]

    @property
    def manager(self) -> str:
        return self.child.name

    def describe(self) -> str:
        """Nothing while the task waits or runs in the child (upstream's clients parse the text)."""
        return ""


class ChildPool:
    def __init__(self, prefetch: float = DEFAULT_PREFETCH):
        self.prefetch = prefetch
        self.nodes: list[Child] = []  # named as ResourcePool's, for the Scheduler: a child is its "node"
        self.by_name: dict[str, Child] = {}
        self.free_cores = 0  # room summed over ready children: what the Scheduler may still hand out
        self.idle_cores = 0  # idle cores summed over ready children (no work handed out for them)
        self._current: dict = {}  # Request -> the child that took its last iteration
        self._eligible: dict = {}  # Request -> children with its tags that could ever hold it

    # ----- membership -----
    def attach(self, name: str, specs: list, tags: tuple) -> Child:
        """A child registers (or registers again, maybe with other nodes); it is not ready yet."""
        child = self.by_name.get(name)
        if child is None:
            child = Child(name)
            self.nodes.append(child)
            self.by_name[name] = child
        else:
            self.mark_lost(child, permanent=False)
        child.describe_resources(specs, tags, self.prefetch)
        child.alive = True
        self._eligible.clear()
        return child

    def mark_lost(self, child: Child, permanent: bool = True) -> None:
        if child.ready:
            self.free_cores -= child.room
            self.idle_cores -= child.idle
            child.ready = False
        if permanent:
            child.alive = False
        child.used = 0
        self._eligible.clear()

    def mark_ready(self, child: Child) -> None:
        child.alive = True
        if not child.ready:
            child.ready = True
            self.free_cores += child.room
            self.idle_cores += child.idle
        self._eligible.clear()

    # ----- totals -----
    @property
    def alive_nodes(self) -> list:
        """The real nodes of every live child (what iteration resource schedulers count)."""
        return [spec for c in self.nodes if c.alive for spec in c.specs]

    @property
    def total_cores(self) -> int:
        return sum(c.total for c in self.nodes if c.alive)

    @property
    def used_cores(self) -> int:
        return sum(c.used for c in self.nodes if c.alive)

    def usage(self) -> tuple:
        """(nodes, total cores, used cores, free cores) of the live children."""
        total, used = self.total_cores, self.used_cores
        return len(self.alive_nodes), total, used, total - used

    def rows(self) -> list:
        return [{"name": c.name, "total": c.total, "used": c.used, "queued": c.outstanding, "tags": list(c.tags),
                 "state": "ready" if c.ready else ("lost" if not c.alive else "waiting")} for c in self.nodes]

    # ----- admission -----
    def eligible(self, req) -> list:
        found = self._eligible.get(req)
        if found is None:
            wanted = frozenset(req.tags)
            found = [c for c in self.nodes if c.alive and wanted <= c.tagset and c.shape.why_never_fits(req) is None]
            self._eligible[req] = found
        return found

    def why_never_fits(self, req) -> str | None:
        if self.eligible(req):
            return None
        alive = [c for c in self.nodes if c.alive]
        if not alive:
            return "no child manager is attached to the governor"
        wanted = frozenset(req.tags)
        tagged = [c for c in alive if wanted <= c.tagset]
        if not tagged:
            have = "; ".join(f"{c.name}: {', '.join(c.tags) or '-'}" for c in alive)
            return f"no attached child has all the tags {', '.join(req.tags)} (children's tags: {have})"
        biggest = max(tagged, key=lambda c: c.total)
        return (f"no single child can hold it (a task runs inside one child); the largest"
                f"{' with these tags' if req.tags else ''}, {biggest.name}, {biggest.shape.why_never_fits(req)}")

    def could_fit_now(self, req) -> bool:
        for child in self.eligible(req):
            if child.ready and child.room >= child.need(req):
                return True
        return False

    # ----- handing out -----
    def allocate(self, req) -> ChildAlloc | None:
        child = self._current.get(req)
        if child is not None and child.ready:
            cores = child.need(req)
            left = child.total - child.outstanding  # idle cores of the current child
            if (left < cores and self.idle_cores > 0) or child.limit - child.outstanding < cores:
                child = None
        else:
            child = None
        if child is None:
            child = self._best(req, "idle") if self.idle_cores > 0 else None
            child = child or self._best(req, "room")
            if child is None:
                return None
            self._current[req] = child
            cores = child.need(req)
        idle = child.idle
        child.outstanding += cores
        self.free_cores -= cores  # room was at least `cores`
        self.idle_cores -= idle - child.idle
        claim = child.claims.get(cores)
        if claim is None:
            claim = child.claims[cores] = ChildAlloc(child, cores)
        return claim

    def _best(self, req, measure: str) -> Child | None:
        best, most = None, 0
        for c in self.eligible(req):
            amount = getattr(c, measure)
            if c.ready and amount >= c.need(req) and amount > most:
                best, most = c, amount
        return best

    def observe(self, child: Child, seconds: float) -> None:
        """A task ran `seconds` on `child`: its prefetch follows the mean length of its recent tasks."""
        seconds = seconds if seconds > 0 else 0.0  # (a child's clock may step back)
        mean = child.mean_runtime
        mean = child.mean_runtime = seconds if mean is None else mean + (seconds - mean) / 16
        prefetch = 1 + QUEUE_SECONDS / mean if mean > 0 else MAX_PREFETCH
        limit = math.ceil(child.total * min(max(prefetch, self.prefetch), MAX_PREFETCH))
        if limit != child.limit:
            room = child.room
            child.limit = limit
            if child.ready:
                self.free_cores += child.room - room

    def release(self, alloc: ChildAlloc) -> None:
        child = alloc.child
        room, idle = child.room, child.idle
        child.outstanding -= alloc.cores
        if child.ready:
            self.free_cores += child.room - room
            self.idle_cores += child.idle - idle
