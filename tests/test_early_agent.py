"""The local node agent is started before the service's own imports (qcg_hier/launch/early_agent.py):
when the guess is right the service uses it, when it is wrong or the command fails it is killed."""
from __future__ import annotations

import subprocess
import time

import psutil

from conftest import run_service, service_command, service_env
from qcg_hier.launch.early_agent import CONFIG_OPTION, wants_local_agent

LOCAL = {}
SLURM = {"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_CPUS_PER_NODE": "4(x2)"}


def test_local_mode_wants_a_local_agent():
    assert wants_local_agent(["--file-path", "f.json"], LOCAL)
    assert wants_local_agent(["--nodes", "2,2", "--net"], LOCAL)


def test_no_local_agent_where_the_service_launches_otherwise():
    assert not wants_local_agent(["--file-path", "f.json", "--fake-launch"], LOCAL)
    assert not wants_local_agent(["--governor", "--nodes", "4"], LOCAL)
    assert not wants_local_agent(["--partition-nodes=2", "--nodes", "4"], LOCAL)
    assert not wants_local_agent(["--help"], LOCAL)
    assert not wants_local_agent(["--file-path", "f.json"], SLURM)  # agents start with srun


def test_inside_an_allocation_explicit_nodes_or_local_resources_launch_locally():
    assert wants_local_agent(["--nodes", "2,2"], SLURM)
    assert wants_local_agent(["--resources", "local"], SLURM)
    assert wants_local_agent(["--resources=local"], SLURM)
    assert not wants_local_agent(["--resources", "slurm"], SLURM)


def test_the_guess_is_the_services_judgement_of_an_allocation():
    # a node list without core counts is no usable allocation: the service runs locally
    assert wants_local_agent(["--file-path", "f.json"], {"SLURM_JOB_NODELIST": "n[1-2]"})
    assert not wants_local_agent(["--file-path", "f.json"], {"SLURM_NODELIST": "n1", "SLURM_TASKS_PER_NODE": "2"})


def test_the_manager_side_spells_the_agents_options_as_the_agent_does():
    # the agent imports nothing of qcg_hier (and early_agent nothing slow): the names are written twice
    from qcg_hier.launch import early_agent, launcher
    from qcg_hier_agent import agent

    assert early_agent.CONFIG_OPTION == agent.CONFIG_OPTION
    assert launcher.PIPE_ADDRESS == agent.STDIO


def _waiting_agents(parent_pid: int | None = None) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "ppid", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and CONFIG_OPTION in (proc.info["cmdline"] or ()):
            if parent_pid is None or proc.info["ppid"] == parent_pid:
                found.append(proc)
    return found


def test_the_service_uses_the_agent_started_ahead(tmp_path):
    run = run_service(tmp_path / "wd", [{"request": "submit", "jobs": [
        {"name": "t", "execution": {"exec": "/bin/true"}}]},
        {"request": "control", "command": "finishAfterAllTasksDone"}], args=["--log", "debug"])
    assert run.report()["t"]["state"] == "SUCCEED"
    log = (run.sdir / "agent-local.log").read_text()
    assert "started ahead of the service" in log, log


def test_a_failed_command_leaves_no_waiting_agent(tmp_path):
    proc = subprocess.Popen(service_command() + ["--file-path", str(tmp_path / "r.json"), "--nodes", "0,x"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=service_env(), cwd=tmp_path)
    seen = []
    while proc.poll() is None:
        seen += [p.pid for p in _waiting_agents(proc.pid)]
        time.sleep(0.005)
    _, err = proc.communicate()
    assert proc.returncode == 2, err
    assert seen, "no agent was started ahead of the service: the test proves nothing"
    for pid in set(seen):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, \
            f"agent {pid} started ahead of a failed command is still running"
