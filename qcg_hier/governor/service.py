"""The governor (`qcg-governor`, `qcg-pm-service --governor`): a manager whose "nodes" are child managers.

It is the manager service unchanged (requests, journal, reports, PUB events, status) over
the same scheduling core, with two parts swapped: the pool is a `ChildPool` (children as
bins of cores with tags) and the launcher is the `ChildLauncher` (iterations go to
children in chunks, their ends come back in batches). So the governor owns the one queue
and dependency graph of the campaign, and every request works against it as against one
manager. A lost child's running work goes back to the queue as a retry, as a lost node's
does in a manager.
"""
import asyncio
import logging
import time

from .. import protocol
from ..core.childpool import ChildPool
from ..launch.launcher import Callbacks
from ..service.handlers import Handlers, check_entity_request
from ..service.manager import ManagerService
from ..service.zmqinterface import advertised_host
from .childlink import ChildLauncher, LinkSettings

log = logging.getLogger("qcg_hier")
# iterations handed out per scheduling pass: a 128,000-core campaign would otherwise hand out a
# quarter of a million in one go, seconds without a heartbeat
DISPATCH_SLICE = 8192


class GovernorService(ManagerService):
    def __init__(self, config, nodes, service_dir, instance_id, starter=None):
        self.starter = starter
        super().__init__(config, nodes, service_dir, instance_id)
        self.fake = False  # --fake-launch is passed down: the children fake, the governor dispatches
        self.executing_on_launch = False
        self.core.max_starts = DISPATCH_SLICE
        self.handlers = GovernorHandlers(self)
        self._waiting_submits: list = []  # (request, future) held until the governor's own children joined

    def _make_pool(self, nodes):
        return ChildPool()

    def _make_launcher(self):
        config = self.config
        callbacks = Callbacks(self._on_ready, self._on_finished, self._on_node_lost, self._on_node_ready,
                              self._on_fatal)
        settings = LinkSettings(heartbeat=config.child_heartbeat, timeout=config.child_timeout,
                                register_timeout=config.nl_init_timeout)
        credentials = self.network.credentials if self.network is not None else None
        bind = config.net_bind or "127.0.0.1"
        host = "0.0.0.0" if bind == "*" else bind
        return ChildLauncher(callbacks, self, credentials, self.zap, settings, self.starter,
                             bind_host=host, advertise_host=advertised_host(bind))

    async def _network_open(self) -> None:
        try:
            self.launcher.start_children(self.zmq_address)
        except (OSError, RuntimeError) as exc:
            self._on_fatal(f"cannot start the child managers: {exc}")

    # ------------------------------------------------------------ requests
    def hold_submit(self, request: dict) -> asyncio.Future:
        """The governor's own children are still starting: the reply waits for them (upstream buffered
        and answered without the job names, which broke its own client)."""
        future = asyncio.get_running_loop().create_future()
        self._waiting_submits.append((request, future))
        return future

    def replay(self, records: list) -> int:
        """--resume: the governor's journal is the campaign's record; its children start afresh and the
        iterations they were running at the crash run again (as retries)."""
        self.core.check_fit = False
        try:
            return super().replay(records)
        finally:
            self.core.check_fit = True

    def _advertise(self) -> None:
        """Clients find the address once the governor's own children have joined (they are told it)."""
        if self.launcher.ready:
            super()._advertise()

    def _on_ready(self) -> None:
        if self.zmq_address is not None:
            super()._advertise()
        waiting, self._waiting_submits = self._waiting_submits, []
        for request, future in waiting:
            if not future.done():
                future.set_result(self.handle(request))
        self.kick()

    async def shutdown(self) -> None:
        for _request, future in self._waiting_submits:
            if not future.done():
                future.set_result(protocol.error("The governor stopped before its children joined"))
        self._waiting_submits = []
        await super().shutdown()

    def remove(self, name: str) -> None:
        super().remove(name)
        self.launcher.forget(name)

    # ------------------------------------------------------------ the children
    def child_attached(self, name: str, specs: list, tags: tuple) -> None:
        self.pool.attach(name, specs, tags)
        self.core.follow_capacity()

    def running_task(self, name: str, it: int):
        job = self.core.jobs.get(name)
        return job.running.get(it) if job is not None else None

    def child_executing(self, started: dict) -> None:
        """{job name: [iterations]} a child has started."""
        tasks = []
        for name, its in started.items():
            job = self.core.jobs.get(name)
            if job is not None:
                running = job.running
                tasks += [t for t in map(running.get, its) if t is not None]
        if tasks:
            self.core.executing(tasks, time.time())
            self._process_events()

    def child_usage(self, name: str, used: int) -> None:
        child = self.pool.by_name.get(name)
        if child is not None and child.alive:
            child.used = used

    def child_gave_back(self, name: str, back: dict) -> None:
        """A leaving child returned work it had not started; it gets no more (its running tasks finish)."""
        child = self.pool.by_name.get(name)
        if child is not None:
            self.pool.mark_lost(child, permanent=False)
        now = time.time()
        for name, its in back.items():
            for it in its:
                task = self.running_task(name, it)
                if task is not None:
                    self.core.give_back(task, now)
        self._process_events()
        self.kick()

    # ------------------------------------------------------------ status
    def status(self, final: bool = False) -> dict:
        out = super().status(final)
        out["Children"] = out["Nodes"]
        return out


class GovernorHandlers(Handlers):
    """A manager's request handlers, plus children registering, and submits held until the governor's
    own children have joined."""

    def r_register(self, req: dict) -> dict:
        params = check_entity_request(req, "register", "manager", ("id", "address", "resources"))
        try:
            return protocol.ok(self.s.launcher.register(params))
        except ValueError as exc:
            return protocol.error(f"Register request failed: {exc}")

    def r_submit(self, req: dict):
        if not self.s.launcher.ready:
            return self.s.hold_submit(req)
        return super().r_submit(req)
