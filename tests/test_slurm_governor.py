"""The governor inside a real allocation (the local 4 x 4 cluster): `--slurm-partition-nodes N` starts
one child per N nodes with srun, each child starts the agents of its own nodes. A task tells its
node by $SLURMD_NODENAME."""
from __future__ import annotations

import json
import sys
import time
from collections import Counter

import psutil

from conftest import wait_for
from slurm_helpers import finish_salloc, salloc_service, slurm_cluster, start_salloc_service  # noqa: F401

from qcg_hier.api import Manager

FINISH = {"request": "control", "command": "finishAfterAllTasksDone"}


def report(run) -> list[dict]:
    return [json.loads(line) for line in (run.sdir / "jobs.report").read_text().splitlines()]


def iteration_lines(run, name: str) -> list[dict]:
    return [e for e in report(run) if e["name"].startswith(name + ":")]


def test_a_campaign_spreads_over_every_partition_and_a_dependency_crosses_them(slurm_cluster, tmp_path):
    wd = tmp_path / "wd"
    jobs = [
        {"name": "sweep", "iteration": {"stop": 32},
         "execution": {"script": "sleep 0.3; echo $SLURMD_NODENAME > sweep.${it}.node"}},
        {"name": "first", "resources": {"tags": ["partition-0"]},
         "execution": {"script": "echo $SLURMD_NODENAME > first.out"}},
        {"name": "second", "resources": {"tags": ["partition-3"]}, "dependencies": {"after": ["first"]},
         "execution": {"script": "cat first.out > second.out; echo $SLURMD_NODENAME >> second.out"}},
    ]
    run = salloc_service(wd, [{"request": "submit", "jobs": jobs}, FINISH], args=["--slurm-partition-nodes", "1"],
                         timeout=120)
    nodes = Counter((wd / f"sweep.{i}.node").read_text().strip() for i in range(32))
    assert set(nodes) == {"n1", "n2", "n3", "n4"}, nodes
    assert (wd / "second.out").read_text().split() == ["n1", "n4"]
    lines = iteration_lines(run, "sweep")
    assert len(lines) == 32 and all(e["state"] == "SUCCEED" for e in lines)
    # each child runs on its own partition's node
    assert all(e["runtime"]["allocation"].startswith(f"n{int(e['runtime']['manager'][-1]) + 1}[") for e in lines)
    status = json.loads((run.sdir / "final_status.json").read_text())
    assert status["Resources"]["TotalCores"] == 16 and status["Resources"]["TotalNodes"] == 4
    assert sorted(c["name"] for c in status["Children"]) == [f"partition-{i}" for i in range(4)]
    for i in range(4):  # every child started the agent of its own node only
        agent_logs = list((wd / f".qcgpjm-service-partition-{i}").glob("agent-*.log"))
        assert [p.name for p in agent_logs] == [f"agent-n{i + 1}.log"], agent_logs


def test_tags_route_jobs_to_partitions_of_two_nodes(slurm_cluster, tmp_path):
    wd = tmp_path / "wd"
    jobs = [{"name": "tagged", "iteration": {"stop": 12}, "resources": {"tags": ["partition-1"]},
             "execution": {"script": "echo $SLURMD_NODENAME > tagged.${it}.node"}},
            {"name": "pair", "resources": {"numNodes": 2, "numCores": 2, "tags": ["partition-0"]},
             "execution": {"script": "srun -n 4 --overlap bash -c 'echo $SLURMD_NODENAME' > pair.out"}}]
    run = salloc_service(wd, [{"request": "submit", "jobs": jobs}, FINISH], args=["--slurm-partition-nodes", "2"],
                         timeout=120)
    assert {(wd / f"tagged.{i}.node").read_text().strip() for i in range(12)} <= {"n3", "n4"}
    assert sorted((wd / "pair.out").read_text().split()) == ["n1", "n1", "n2", "n2"]  # a line per slot
    pair = [e for e in report(run) if e["name"] == "pair"][0]
    assert pair["state"] == "SUCCEED" and pair["runtime"]["manager"] == "partition-0"


def test_kill9_of_a_child_loses_no_task_and_wait4all_returns(slurm_cluster, tmp_path):
    wd = tmp_path / "wd"
    jobs = [{"name": "work", "iteration": {"stop": 48},
             "execution": {"script": "sleep 0.5; echo ${it} >> done.$SLURMD_NODENAME"}}]
    run = start_salloc_service(wd, [{"request": "submit", "jobs": jobs}],
                               args=["--slurm-partition-nodes", "2", "--child-heartbeat", "0.5",
                                     "--child-timeout", "4"])
    try:
        sdir = run.sdir
        assert wait_for(lambda: (sdir / "address").exists(), 60), "the governor never advertised its address"
        m = Manager(str(sdir))
        assert wait_for(lambda: m.info("work")["jobs"]["work"]["data"]["iterations"]["finished"] >= 6, 60)
        victims = [p for p in psutil.process_iter(["cmdline", "name"])
                   if p.info["name"] != "srun" and "--id" in (p.info["cmdline"] or [])
                   and "partition-1" in p.info["cmdline"]
                   and "qcg_hier" in p.info["cmdline"] and str(wd) in p.info["cmdline"]]
        assert len(victims) == 1, victims
        victims[0].kill()
        t0 = time.monotonic()
        m.wait4all(timeout=120)
        waited = time.monotonic() - t0
        info = m.info("work", withChilds=True)["jobs"]["work"]["data"]
        assert info["status"] == "SUCCEED" and info["iterations"]["finished"] == 48
        m.finish()
    finally:
        run = finish_salloc(run, timeout=90)
    assert "child partition-1 lost" in (sdir / "service.log").read_text()
    done = Counter(int(x) for p in wd.glob("done.*") for x in p.read_text().split())
    assert set(done) == set(range(48)), f"missing iterations: {set(range(48)) - set(done)}"
    assert waited < 100


def test_a_governor_with_auth_none_binds_loopback_in_an_allocation(slurm_cluster, tmp_path):
    """--auth none: anyone who reaches the port runs commands as the user, so the governor's
    sockets (requests and children) stay on 127.0.0.1 unless --net-bind says otherwise, also
    inside an allocation (where it opened every interface for its children)."""
    wd = tmp_path / "wd"
    # a task (every virtual node is this host) lists the governor's listening sockets, less those
    # salloc holds (salloc's own socket is inherited by the command it runs: not the governor's)
    look = ("import json, psutil\n"
            "procs = [p for p in psutil.process_iter(['cmdline']) if '--slurm-partition-nodes' in (p.info['cmdline'] or [])]\n"
            "def listening(ps): return {(c.laddr.ip, c.laddr.port) for p in ps for c in p.net_connections('tcp') "
            "if c.status == psutil.CONN_LISTEN}\n"
            "salloc = listening([p for p in procs if p.name() == 'salloc'])\n"
            "own = listening([p for p in procs if p.name() != 'salloc']) - salloc\n"
            "print(json.dumps(sorted({ip for ip, _ in own})))\n")
    jobs = [{"name": "look", "execution": {"exec": sys.executable, "args": ["-c", look], "stdout": "listen.json"}}]
    run = salloc_service(wd, [{"request": "submit", "jobs": jobs}, FINISH],
                         args=["--slurm-partition-nodes", "2", "--net", "--auth", "none"], timeout=120)
    assert [e["state"] for e in report(run) if e["name"] == "look"] == ["SUCCEED"]
    assert json.loads((wd / "listen.json").read_text()) == ["127.0.0.1"]
    assert "binds 127.0.0.1 only" in (run.sdir / "service.log").read_text()
