"""Partitions of the governor's nodes, and the child managers it starts over them.

`--partition-nodes N` (local emulation: each child is a local process over its share of the
`--nodes` spec) and `--slurm-partition-nodes N` (inside an allocation: each child is started
by srun on its partition's first node and starts the agents of its partition's nodes) make
ceil(nodes / N) partitions of consecutive nodes. A child that dies is started again (at most
5 times a minute); the governor re-queues its work meanwhile.
"""
import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

from ..auth import Credentials, client_env
from ..launch.slurm import SrunFlags

log = logging.getLogger("qcg_hier")
RESTARTS_PER_MINUTE = 5


def split(nodes: list, per_partition: int) -> list[tuple[int, int]]:
    """[begin, end) node index ranges of ceil(len / per_partition) partitions."""
    if per_partition < 1:
        raise ValueError("the number of nodes per partition must be at least 1")
    return [(b, min(b + per_partition, len(nodes))) for b in range(0, len(nodes), per_partition)]


def nodes_option(nodes: list) -> str:
    """A partition's nodes as a --nodes spec (names kept)."""
    return ",".join(f"{n.name}:{n.cores}" for n in nodes)


class Partition:
    __slots__ = ("name", "begin", "end", "nodes", "process", "restarts", "gave_up")

    def __init__(self, index: int, begin: int, end: int, nodes: list):
        self.name = f"partition-{index}"
        self.begin, self.end = begin, end
        self.nodes = nodes
        self.process = None
        self.restarts: list[float] = []
        self.gave_up = False


class ChildStarter:
    """Starts one child manager per partition and starts it again when it dies."""

    def __init__(self, nodes: list, per_partition: int, config, service_dir, credentials: Credentials | None,
                 slurm: bool):
        self.partitions = {}
        for i, (b, e) in enumerate(split(nodes, per_partition)):
            part = Partition(i, b, e, nodes[b:e])
            self.partitions[part.name] = part
        self.config = config
        self.service_dir = service_dir
        self.credentials = credentials
        self.slurm = slurm
        self.flags = SrunFlags() if slurm else None
        self.governor_address = None

    @property
    def count(self) -> int:
        return len(self.partitions)

    def start_all(self, governor_address: str) -> None:
        self.governor_address = governor_address
        if self.slurm and shutil.which("srun") is None:
            raise RuntimeError("srun not found: cannot start the partitions' managers")
        for part in self.partitions.values():
            self._start(part)
        log.info("started %d child managers (%s)", self.count, "srun" if self.slurm else "local processes")

    def command(self, part: Partition) -> list[str]:
        c = self.config
        argv = [sys.executable, "-m", "qcg_hier", "--parent", self.governor_address, "--id", part.name,
                # the governor's jobs.report covers the campaign (with each task's child): the children
                # write none, which saves them a line per task
                "--wd", c.wd, "--log", c.log_level, "--report-format", "none",
                "--auth", c.auth, "--nl-ready-threshold", str(c.nl_ready_threshold),
                "--nl-init-timeout", str(c.nl_init_timeout),
                "--child-heartbeat", str(c.child_heartbeat), "--child-timeout", str(c.child_timeout)]
        for flag, on in (("--fake-launch", c.fake_launch), ("--disable-nl", c.disable_nl),
                         ("--system-core", c.system_core)):
            if on:
                argv.append(flag)
        if c.envschema != "auto":
            argv += ["--envschema", c.envschema]
        if getattr(c, "local_agents", None):
            argv += ["--local-agents", str(c.local_agents)]  # children launch; a governor never does
        if c.net_bind:
            argv += ["--net-bind", c.net_bind]
        if not self.slurm:
            return argv + ["--nodes", nodes_option(part.nodes)]
        first = part.nodes[0].name
        # the child counts nodes in the whole allocation; the governor's own range may start later
        offset = c.slurm_limit_nodes_range_begin or 0
        return (["srun", *self.flags.overlap, "-N", "1", "-n", "1", "-w", first, "-J", part.name,
                 "--kill-on-bad-exit=0", self.flags.cpu_bind_none, "-Q", "-D", c.wd] + argv
                + ["--slurm-limit-nodes-range-begin", str(offset + part.begin),
                   "--slurm-limit-nodes-range-end", str(offset + part.end)])

    def _start(self, part: Partition) -> None:
        env = dict(os.environ)
        for name, value in client_env(self.governor_address, self.credentials).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        out = open(self.service_dir / f"{part.name}.log", "ab")
        try:
            part.process = subprocess.Popen(self.command(part), stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, close_fds=True, env=env,
                                            start_new_session=True)
        finally:
            out.close()

    # ----- failures -----
    def exited(self, name: str) -> bool:
        part = self.partitions.get(name)
        return part is not None and part.process is not None and part.process.poll() is not None

    def restartable(self, name: str) -> bool:
        part = self.partitions.get(name)
        return part is not None and not part.gave_up

    def restart_dead(self, children: dict) -> None:
        """Start again every partition whose process ended and whose child is not connected."""
        now = time.monotonic()
        for part in self.partitions.values():
            if part.gave_up or part.process is None or part.process.poll() is None:
                continue
            entry = children.get(part.name)
            if entry is not None and entry.connected:
                continue  # its loss is noticed first (the launcher's watch)
            part.restarts = [t for t in part.restarts if now - t < 60]
            if len(part.restarts) >= RESTARTS_PER_MINUTE:
                part.gave_up = True
                log.error("child %s keeps dying (%d times within a minute): not started again (see %s.log)",
                          part.name, RESTARTS_PER_MINUTE + 1, part.name)
                continue
            part.restarts.append(now)
            log.warning("starting child %s again (its process exited with %s)", part.name, part.process.returncode)
            self._start(part)

    async def stop_all(self, grace: float) -> None:
        """Children were told to exit: wait for them, then SIGTERM, then SIGKILL their process groups."""
        deadline = time.monotonic() + grace
        procs = [p.process for p in self.partitions.values() if p.process is not None]
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
            alive = [p for p in procs if p.poll() is None]
            if not alive:
                return
            log.warning("%d children still running: sending %s", len(alive), signal.Signals(sig).name)
            for p in alive:
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
            end = time.monotonic() + wait
            while any(p.poll() is None for p in alive) and time.monotonic() < end:
                await asyncio.sleep(0.02)
