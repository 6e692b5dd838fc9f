"""Several local agents: in local mode the (virtual) nodes are shared out among agent processes, so
that tasks are spawned side by side on several CPUs (one Python process spawns a few thousand a
second at best). Each agent serves its own nodes; one that dies takes only its own tasks along."""
from __future__ import annotations

import os
import re
import signal
import subprocess

from conftest import (SERVICE_DIR, finish_background, iterations_of, run_service, service_command,
                      service_env, start_service, states, wait_for)
from qcg_hier.launch import early_agent
from qcg_hier.launch.early_agent import agent_count, agent_names

FINISH = {"request": "control", "command": "finishAfterAllTasksDone"}
# each task writes its node and its parent (the agent that spawned it: bash is spawned directly)
WHO = "echo ${it} $QCG_PM_NODELIST $PPID >> who.txt"


def test_one_agent_per_node_up_to_the_cpus_at_most_eight():
    assert agent_count(4, cpus=2) == 2
    assert agent_count(1, cpus=64) == 1  # one node: one agent
    assert agent_count(3, cpus=64) == 3
    assert agent_count(100, cpus=64) == early_agent.MAX_AGENTS == 8


def test_local_agents_option_wins_but_no_agent_goes_without_a_node():
    assert agent_count(4, requested=1, cpus=2) == 1
    assert agent_count(4, requested=3, cpus=2) == 3
    assert agent_count(2, requested=5, cpus=64) == 2


def test_the_first_agent_keeps_the_old_name():
    assert agent_names(1) == ["local"]
    assert agent_names(3) == ["local", "local-2", "local-3"]


def test_the_agents_started_ahead_are_counted_from_the_command_line(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert early_agent._count_from(["--nodes", "2,2,2"]) == 3
    assert early_agent._count_from(["--nodes=a:2,b:2"]) == 2
    assert early_agent._count_from([]) == 1  # the default: one node, all CPUs
    assert early_agent._count_from(["--nodes", "1,1,1", "--local-agents", "2"]) == 2


def _agent_pids(sdir) -> dict[str, int]:
    """Agent name -> pid of its latest process, from the agents' own logs."""
    pids = {}
    for log in sorted(sdir.glob("agent-*.log")):
        for name, pid in re.findall(r"agent (\S+) \(pid (\d+)\) connected", log.read_text()):
            pids[name] = int(pid)
    return pids


def _who(wd) -> dict[int, tuple[str, int]]:
    """Iteration -> (node, spawning agent pid)."""
    rows = [line.split() for line in (wd / "who.txt").read_text().splitlines()]
    return {int(it): (node, int(ppid)) for it, node, ppid in rows}


def test_nodes_are_shared_out_among_agents_round_robin(tmp_path):
    wd = tmp_path / "wd"
    reqs = [{"request": "submit", "jobs": [{"name": "w", "iteration": {"stop": 4},
                                            "execution": {"script": WHO + "; sleep 0.3"}}]}, FINISH]
    run = run_service(wd, reqs, nodes="1,1,1,1", args=["--local-agents", "2", "--log", "debug"])
    pids = _agent_pids(run.sdir)
    assert sorted(pids) == ["local", "local-2"] and pids["local"] != pids["local-2"], pids
    for name in pids:
        log = (run.sdir / f"agent-{name}.log").read_text()
        assert "started ahead of the service" in log, log  # both imported while the service did
    who = _who(wd)
    assert len(who) == 4
    for node, ppid in who.values():
        assert ppid == (pids["local"] if node in ("n0", "n2") else pids["local-2"]), (who, pids)
    assert all(e["state"] == "SUCCEED" for e in iterations_of(run.report(), "w").values())


def test_one_agent_when_asked(tmp_path):
    wd = tmp_path / "wd"
    reqs = [{"request": "submit", "jobs": [{"name": "w", "iteration": {"stop": 2},
                                            "execution": {"script": WHO}}]}, FINISH]
    run = run_service(wd, reqs, nodes="1,1", args=["--local-agents", "1"])
    pids = _agent_pids(run.sdir)
    assert list(pids) == ["local"], pids
    assert {ppid for _, ppid in _who(wd).values()} == {pids["local"]}


def test_a_bad_agent_count_is_refused_clearly(tmp_path):
    for bad in ("0", "-1", "two"):
        proc = subprocess.run(service_command() + ["--file-path", str(tmp_path / "r.json"), "--local-agents", bad],
                              capture_output=True, text=True, env=service_env(), cwd=tmp_path, timeout=60)
        assert proc.returncode == 2 and "--local-agents" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_a_killed_agent_takes_only_its_own_tasks_along(tmp_path, background):
    wd = tmp_path / "wd"
    script = WHO + "; while [ ! -e go.flag ]; do sleep 0.05; done"
    reqs = [{"request": "submit", "jobs": [{"name": "s", "iteration": {"stop": 4}, "execution": {"script": script}}]},
            FINISH]
    run = start_service(wd, reqs, nodes="1,1,1,1", args=["--local-agents", "2"])
    background.append(run)
    sdir = wd / SERVICE_DIR
    assert wait_for(lambda: (wd / "who.txt").exists() and len(_who(wd)) == 4, 20), run.proc.poll()
    before = _agent_pids(sdir)
    os.kill(before["local-2"], signal.SIGKILL)
    (wd / "go.flag").touch()
    finish_background(run, timeout=30)
    assert run.returncode == 0, run.describe()
    assert "restarting the node agent local-2" in run.log_text
    after = _agent_pids(sdir)
    assert after["local"] == before["local"] and after["local-2"] != before["local-2"], (before, after)
    its = iterations_of(run.report(), "s")
    assert all(e["state"] == "SUCCEED" for e in its.values()), {i: states(e) for i, e in its.items()}
    retried = {i for i, e in its.items() if "QUEUED" in states(e)}
    assert retried == {1, 3}, {i: states(e) for i, e in its.items()}  # n1 and n3: the killed agent's
    runs = (wd / "who.txt").read_text().split("\n")
    assert len([r for r in runs if r]) == 6  # the other agent's two tasks ran once


def test_a_closed_pipe_channel_writes_nowhere(tmp_path):
    """Frames for an agent whose pipes were closed (it died; it is restarted later) must not land in
    whatever file has since been given the same descriptor number."""
    import asyncio

    from qcg_hier.launch.pipelink import PipeChannel

    async def scenario():
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        channel = PipeChannel(os.fdopen(w1, "wb"), os.fdopen(r2, "rb"), lambda frames: None)
        channel.close()
        with open(tmp_path / "report", "wb") as victim:
            assert victim.fileno() in (w1, r2)  # the freed number is given out again
            channel.send(b'["run"]')
        os.close(r1)
        os.close(w2)

    asyncio.run(scenario())
    assert (tmp_path / "report").read_bytes() == b""
