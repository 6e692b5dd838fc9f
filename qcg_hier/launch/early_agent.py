"""The local node agents: how many, and starting them before the service's own imports.

A service in local mode needs its agent processes, and they all start by importing for a
tenth of a second or so. Started first thing, the agents import while the service does, then
wait on a pipe for their options (the service's address and keys exist only once the
service has bound its socket). Without this the first task waited for the agents' whole
start-up after the service's.

The agents are started only when the command line says the launch will be local; the ones
the service then does not use (the guess was wrong, or the command failed) are killed.
This module must stay light: it runs before anything else is imported.
"""
import os
import signal
import subprocess
import sys

from ..service.naming import AGENT_LOG, default_instance_id, service_dir_path
from .slurmenv import in_allocation

# options after which the service never starts a local agent
NO_LOCAL_AGENT = ("--fake-launch", "--governor", "--slurm-partition-nodes", "--partition-nodes",
                  "--slurm-resources-file", "--resume", "--help", "--version")
CONFIG_OPTION = "--config-from-stdin"
MAX_AGENTS = 8  # beyond this, spawns of separate processes hardly add up (kernel locks, memory)

_waiting: list = []  # agents started ahead, until handed over or discarded


def agent_count(nodes: int, requested: int | None = None, cpus: int | None = None) -> int:
    """How many local agents serve `nodes` (virtual) nodes: `--local-agents`, else one per node up
    to the CPUs this process may use, at most MAX_AGENTS. One Python process spawns a few thousand
    tasks a second at best, spending most of it blocked in posix_spawn; the spawns of separate
    processes run side by side on separate CPUs."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0))
    return max(1, min(requested or min(cpus, MAX_AGENTS), nodes))


def agent_names(count: int) -> list[str]:
    """The first is "local" (its log is agent-local.log), the others "local-2", "local-3", ..."""
    return ["local"] + [f"local-{i}" for i in range(2, count + 1)]


def _count_from(args: list) -> int:
    nodes = _option_value(args, "--nodes")
    requested = _option_value(args, "--local-agents")
    return agent_count(len(nodes.split(",")) if nodes else 1,
                       int(requested) if requested and requested.isdigit() else None)


def wants_local_agent(args: list, environ) -> bool:
    """Whether this command line will run a manager that starts a local agent."""
    given = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    if given & set(NO_LOCAL_AGENT):
        return False
    return not in_allocation(environ) or "--nodes" in given or _option_value(args, "--resources") == "local"


def _option_value(args: list, name: str):
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1:]
    return None


def start(args: list, environ=os.environ) -> None:
    """Start the agents the command line will want; they wait for `hand_over`."""
    if _waiting or not wants_local_agent(args, environ):
        return
    # their log file names the service directory, as the options they get later do: `ps` (and tools
    # that look for a service's processes) see which service they belong to
    service_dir = service_dir_path(_option_value(args, "--wd") or ".",
                                   _option_value(args, "--id") or default_instance_id())
    argv = [sys.executable, "-m", "qcg_hier_agent", "--parent-death-signal", CONFIG_OPTION,
            "--log-file", os.path.join(service_dir, AGENT_LOG)]
    for _ in range(_count_from(args)):
        try:
            _waiting.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             close_fds=True))
        except OSError:
            break  # the service starts the others the usual way


def hand_over(options: list):
    """A waiting agent, given its options (a list of command-line arguments); None when there is
    no agent waiting or it is gone (the caller then starts one itself)."""
    import orjson  # not at the top: the agents are started before anything slow is imported

    if not _waiting:
        return None
    process = _waiting.pop(0)
    try:
        process.stdin.write(orjson.dumps(options) + b"\n")
        process.stdin.flush()  # stays open: with `--manager stdio` it is the agent's link
    except OSError:
        _kill(process)
        return None
    if process.poll() is not None:
        return None
    return process


def discard() -> None:
    """The service will not use the waiting agents: they must not outlive the service."""
    while _waiting:
        _kill(_waiting.pop())


def _kill(process) -> None:
    try:
        process.send_signal(signal.SIGKILL)
    except OSError:
        pass
    process.wait()
    for pipe in (process.stdin, process.stdout):
        try:
            pipe.close()
        except OSError:
            pass
