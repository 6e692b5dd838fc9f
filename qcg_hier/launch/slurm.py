"""Running inside a Slurm allocation: nodes from the environment, srun flags for this Slurm,
the agents' srun step, and the SLURM_* variables that describe a task's own allocation.

Scheduling unit: a CPU. A node offers SLURM_JOB_CPUS_PER_NODE slots (upstream used task
slots, SLURM_TASKS_PER_NODE, so an allocation without --ntasks-per-node showed one slot per
node); SLURM_TASKS_PER_NODE is used only when the CPU counts are missing.
"""
import os
import re
import shutil
import subprocess

from ..core.nodespec import NodeSpec, compress_counts, slurm_nodes


def allocation_nodes(env=None, begin: int | None = None, end: int | None = None) -> list[NodeSpec]:
    env = os.environ if env is None else env
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    counts = env.get("SLURM_JOB_CPUS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    return slurm_nodes(nodelist, counts, begin, end)


class SrunFlags:
    """What this srun understands: `--overlap` exists from 20.11, `--cpu-bind` from 18.08."""

    def __init__(self, version: tuple | None = None):
        self.version = version if version is not None else srun_version()

    @property
    def overlap(self) -> list[str]:
        return ["--overlap"] if self.version >= (20, 11) else []

    @property
    def cpu_bind_none(self) -> str:
        return "--cpu-bind=none" if self.version >= (18, 8) else "--cpu_bind=none"


def srun_version() -> tuple:
    try:
        out = subprocess.run(["srun", "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return (0, 0)
    m = re.search(r"(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


class SrunAgents:
    """All node agents started by ONE srun step over the allocation's nodes (not one srun per node)."""

    restartable = False  # a lost node stays lost

    def __init__(self, nodes: list[NodeSpec], wd: str, log_path: str, flags: SrunFlags | None = None):
        self.nodes = nodes
        self.wd = wd
        self.log_path = log_path
        self.flags = flags or SrunFlags()
        self.process = None

    def command(self, agent_argv: list) -> list[str]:
        n = len(self.nodes)
        cpus = min(node.cores for node in self.nodes)
        return (["srun", *self.flags.overlap, "-N", str(n), "-n", str(n), "--ntasks-per-node=1",
                 "-c", str(cpus), "-w", ",".join(node.name for node in self.nodes), "--kill-on-bad-exit=0",
                 self.flags.cpu_bind_none, "-Q", "-D", self.wd, "-J", "qcg-hier-agents"] + agent_argv)

    def start(self, agent_argv: list) -> None:
        if shutil.which("srun") is None:
            raise RuntimeError("srun not found: cannot start node agents in this allocation")
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(self.command(agent_argv), stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, close_fds=True, start_new_session=True)

    def poll(self):
        return self.process.poll() if self.process else None


def task_environment(shares, hostfile: str | None) -> dict:
    """SLURM_* variables describing a task's own allocation (upstream's list)."""
    names = [share[0].name for share in shares]
    per_node = [len(share[1]) for share in shares]
    total = sum(per_node)
    nodelist = ",".join(names)
    compressed = compress_counts(per_node)
    env = {
        "SLURM_NNODES": str(len(names)), "SLURM_JOB_NUM_NODES": str(len(names)),
        "SLURM_STEP_NUM_NODES": str(len(names)),
        "SLURM_NODELIST": nodelist, "SLURM_JOB_NODELIST": nodelist, "SLURM_STEP_NODELIST": nodelist,
        "SLURM_NPROCS": str(total), "SLURM_NTASKS": str(total), "SLURM_STEP_NUM_TASKS": str(total),
        "SLURM_JOB_CPUS_PER_NODE": compressed, "SLURM_TASKS_PER_NODE": compressed,
        "SLURM_STEP_TASKS_PER_NODE": compressed,
        "SLURM_NTASKS_PER_NODE": str(per_node[0]) if len(set(per_node)) == 1 else None,
        "SLURM_OVERLAP": "1",  # a task may run srun itself next to the agents' step
        # the agents' step leaves these behind; older sruns read them as options of a nested srun.
        # (Binding is done by the agent itself; SLURM_CPU_BIND would only make srun talk.)
        "SLURM_CPUS_PER_TASK": None, "SLURM_CPU_BIND": None, "SLURM_CPU_BIND_LIST": None,
        "SLURM_CPU_BIND_TYPE": None, "SLURM_CPU_BIND_VERBOSE": None, "SLURM_DISTRIBUTION": None,
    }
    if hostfile:
        env["SLURM_HOSTFILE"] = hostfile
    return env


def hostfile_text(shares) -> str:
    """One line per slot, as upstream (srun -m arbitrary and mpirun read it)."""
    return "".join(f"{share[0].name}\n" * len(share[1]) for share in shares)
