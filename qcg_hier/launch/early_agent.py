"""The local node agent, started before the service's own imports.

A service in local mode needs one agent process, and both start by importing for a tenth
of a second or so. Started first thing, the agent imports while the service does, then
waits on a pipe for its options (the service's address and keys exist only once the
service has bound its socket). Without this the first task waited for the agent's whole
start-up after the service's.

The agent is started only when the command line says the launch will be local; when the
service then does not use it (the guess was wrong, or the command failed), it is killed.
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

_waiting = None  # the started agent, until handed over or discarded


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
    """Start the agent if the command line will want one; it waits for `hand_over`."""
    global _waiting
    if _waiting is not None or not wants_local_agent(args, environ):
        return
    # its log file names the service directory, as the options it gets later do: `ps` (and tools
    # that look for a service's processes) see which service it belongs to
    service_dir = service_dir_path(_option_value(args, "--wd") or ".",
                                   _option_value(args, "--id") or default_instance_id())
    argv = [sys.executable, "-m", "qcg_hier_agent", "--parent-death-signal", CONFIG_OPTION,
            "--log-file", os.path.join(service_dir, AGENT_LOG)]
    try:
        _waiting = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
    except OSError:
        _waiting = None  # the service starts its agent the usual way


def hand_over(options: list):
    """The waiting agent, given its options (a list of command-line arguments); None when there is
    no agent waiting or it is gone (the caller then starts one itself)."""
    import orjson  # not at the top: the agent is started before anything slow is imported

    global _waiting
    process, _waiting = _waiting, None
    if process is None:
        return None
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
    """The service will not use the waiting agent: it must not outlive the service."""
    global _waiting
    process, _waiting = _waiting, None
    if process is not None:
        _kill(process)


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
