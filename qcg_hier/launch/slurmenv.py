"""Whether this process runs inside a usable Slurm allocation, from its environment alone.

A module of its own, importing nothing: the local agent is started ahead of the service's imports
(early_agent.py) on the same judgement the service makes later (slurm.py)."""
import os


def in_allocation(env=None) -> bool:
    """A node list and the cores on those nodes: without the counts the allocation is not usable."""
    env = os.environ if env is None else env
    return bool((env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST"))
                and (env.get("SLURM_JOB_CPUS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")))
