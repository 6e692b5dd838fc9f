"""qcg-pm-service inside Slurm allocations.

Unit tests of qcg_hier.launch.slurm (no Slurm needed), then black-box runs of
`salloc -Q -N4 --ntasks-per-node=4 qcg-pm-service --file-path ... --wd ...` on the local
4 x 4 cluster of scripts/slurm-cluster.sh (started by the `slurm_cluster` fixture; the
tests never skip). All virtual nodes are this host: a task tells its node by
$SLURMD_NODENAME.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from conftest import states, wait_for
from slurm_helpers import (NODE_NAMES, alloc_nodes, apt_install, clean_env, describe, env_file, finish_salloc, first_node,
                           salloc_service, slurm_cluster, start_salloc_service)  # noqa: F401 (fixture)
from test_escapes import marked, new_marker, setsid_escape
from qcg_hier.core.errors import ResourceSpecError
from qcg_hier.core.nodespec import NodeSpec
from qcg_hier.launch import models, slurm
from qcg_hier.launch.slurm import SrunAgents, SrunFlags
from qcg_hier.launch.slurmenv import in_allocation

REPO = Path(__file__).resolve().parent.parent
MPI_SOURCE = REPO / "tests" / "data" / "mpi_hello.c"
MPI_NOTES = REPO / "tests" / "data" / "MPI_NOTES.md"
FINISH = {"request": "control", "command": "finishAfterAllTasksDone"}


# ====================================================================== unit tests (no Slurm)
def _names(nodes):
    return [n.name for n in nodes]


def test_allocation_nodes_compressed_lists_and_counts():
    env = {"SLURM_JOB_NODELIST": "n[001-016,020],gpu[1-2]", "SLURM_JOB_CPUS_PER_NODE": "4(x16),2,8(x2)"}
    nodes = slurm.allocation_nodes(env)
    assert _names(nodes) == [f"n{i:03d}" for i in range(1, 17)] + ["n020", "gpu1", "gpu2"]
    assert [n.cores for n in nodes] == [4] * 16 + [2, 8, 8]
    nodes = slurm.allocation_nodes({"SLURM_JOB_NODELIST": "a[1-3]", "SLURM_JOB_CPUS_PER_NODE": "4(x2),2"})
    assert [(n.name, n.cores) for n in nodes] == [("a1", 4), ("a2", 4), ("a3", 2)]
    # one count for every node
    nodes = slurm.allocation_nodes({"SLURM_JOB_NODELIST": "c[7-9]", "SLURM_JOB_CPUS_PER_NODE": "6"})
    assert [(n.name, n.cores) for n in nodes] == [("c7", 6), ("c8", 6), ("c9", 6)]


def test_allocation_nodes_prefers_cpus_and_falls_back_to_tasks_per_node():
    env = {"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_CPUS_PER_NODE": "8(x2)", "SLURM_TASKS_PER_NODE": "1(x2)"}
    assert [n.cores for n in slurm.allocation_nodes(env)] == [8, 8]  # CPUs, not task slots (upstream)
    env = {"SLURM_NODELIST": "n[1-2]", "SLURM_TASKS_PER_NODE": "3,1"}
    assert [(n.name, n.cores) for n in slurm.allocation_nodes(env)] == [("n1", 3), ("n2", 1)]
    assert in_allocation(env)
    assert not in_allocation({"SLURM_JOB_NODELIST": "n1"})  # no counts: not usable
    assert not in_allocation({})
    with pytest.raises(ResourceSpecError):
        slurm.allocation_nodes({"SLURM_JOB_NODELIST": "n[1-3]", "SLURM_JOB_CPUS_PER_NODE": "4(x2)"})


def test_allocation_nodes_range_limits():
    env = {"SLURM_JOB_NODELIST": "n[1-4]", "SLURM_JOB_CPUS_PER_NODE": "4(x4)"}
    assert _names(slurm.allocation_nodes(env, 1, 3)) == ["n2", "n3"]
    assert _names(slurm.allocation_nodes(env, 2)) == ["n3", "n4"]
    assert _names(slurm.allocation_nodes(env, None, 1)) == ["n1"]
    assert slurm.allocation_nodes(env, 4) == []


def _opts(**kw):
    base = dict(gpus=None, nodes=None, resources="auto", slurm_limit_nodes_range_begin=None,
                slurm_limit_nodes_range_end=None, mem_per_node=None, slurm_resources_file=None)
    base.update(kw)
    return SimpleNamespace(**base)


def test_resolve_nodes_in_an_allocation(monkeypatch):
    from qcg_hier.cli import resolve_nodes

    for var in [v for v in os.environ if v.startswith("SLURM_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("SLURM_JOB_NODELIST", "n[1-4]")
    monkeypatch.setenv("SLURM_JOB_CPUS_PER_NODE", "4(x3),2")
    opts = _opts(slurm_limit_nodes_range_begin=1, slurm_limit_nodes_range_end=4)
    nodes = resolve_nodes(opts)
    assert opts.slurm is True
    assert [(n.name, n.cores, n.mem_mb) for n in nodes] == [("n2", 4, 0), ("n3", 4, 0), ("n4", 2, 0)]
    with pytest.raises(ResourceSpecError, match="no nodes left"):
        resolve_nodes(_opts(slurm_limit_nodes_range_begin=4))
    # --nodes and --resources local win over the allocation
    opts = _opts(nodes="a:2,b:3")
    assert [(n.name, n.cores) for n in resolve_nodes(opts)] == [("a", 2), ("b", 3)] and not opts.slurm
    opts = _opts(resources="local")
    assert len(resolve_nodes(opts)) == 1 and not opts.slurm


def test_srun_flags_by_version():
    old = SrunFlags((17, 2))
    assert old.overlap == [] and old.cpu_bind_none == "--cpu_bind=none"
    new = SrunFlags((22, 5))
    assert new.overlap == ["--overlap"] and new.cpu_bind_none == "--cpu-bind=none"
    assert SrunFlags((20, 11)).overlap == ["--overlap"] and SrunFlags((20, 2)).overlap == []
    assert SrunFlags((18, 8)).cpu_bind_none == "--cpu-bind=none"


def _shares(*per_node):
    return [(NodeSpec(f"n{i + 1}", 4), list(range(k)), ()) for i, k in enumerate(per_node)]


def test_task_environment_two_nodes_uneven():
    env = slurm.task_environment(_shares(3, 1), "/w/.j.hostfile")
    assert env["SLURM_NNODES"] == env["SLURM_JOB_NUM_NODES"] == env["SLURM_STEP_NUM_NODES"] == "2"
    assert env["SLURM_NODELIST"] == env["SLURM_JOB_NODELIST"] == env["SLURM_STEP_NODELIST"] == "n1,n2"
    assert env["SLURM_NTASKS"] == env["SLURM_NPROCS"] == env["SLURM_STEP_NUM_TASKS"] == "4"
    assert env["SLURM_TASKS_PER_NODE"] == env["SLURM_JOB_CPUS_PER_NODE"] == "3,1"
    assert env.get("SLURM_NTASKS_PER_NODE") is None  # not uniform: removed (None), never a wrong value
    assert env["SLURM_HOSTFILE"] == "/w/.j.hostfile"
    assert env["SLURM_OVERLAP"] == "1"
    # left behind by the agents' step: removed (None), so a nested srun does not read them
    assert env["SLURM_CPU_BIND"] is None and env["SLURM_CPUS_PER_TASK"] is None


def test_task_environment_two_nodes_uniform():
    env = slurm.task_environment(_shares(2, 2), None)
    assert env["SLURM_TASKS_PER_NODE"] == "2(x2)"
    assert env["SLURM_NTASKS_PER_NODE"] == "2"
    assert env["SLURM_NTASKS"] == "4" and env["SLURM_NNODES"] == "2"
    assert "SLURM_HOSTFILE" not in env


def test_hostfile_text_one_line_per_slot():
    assert slurm.hostfile_text(_shares(3, 1)) == "n1\nn1\nn1\nn2\n"
    assert slurm.hostfile_text(_shares(1)) == "n1\n"


def _option(cmd, flag):
    assert cmd.count(flag) == 1, cmd
    return cmd[cmd.index(flag) + 1]


def test_srun_agents_command():
    nodes = [NodeSpec(f"n{i}", 4) for i in range(1, 5)]
    agent = ["python", "-m", "qcg_hier_agent", "--manager", "tcp://h:1"]
    cmd = SrunAgents(nodes, "/wd", "/wd/agents.out", SrunFlags((22, 5))).command(agent)
    assert cmd[0] == "srun" and cmd.count("srun") == 1
    assert _option(cmd, "-N") == "4" and _option(cmd, "-n") == "4"
    assert "--ntasks-per-node=1" in cmd
    assert _option(cmd, "-w") == "n1,n2,n3,n4"
    assert "--overlap" in cmd and "--cpu-bind=none" in cmd
    assert cmd[-len(agent):] == agent
    old = SrunAgents(nodes[:2], "/wd", "/wd/agents.out", SrunFlags((17, 2))).command(agent)
    assert "--overlap" not in old and "--cpu_bind=none" in old
    assert _option(old, "-N") == "2" and _option(old, "-n") == "2" and _option(old, "-w") == "n1,n2"


def test_srunmpi_places_one_rank_per_slot():
    ex = SimpleNamespace(model="srunmpi", model_opts={"srun_args": ["--mpi=pmi2"]})
    argv, env = models.wrap(ex, ["./hello"], _shares(3, 1), "/w/.j.hostfile", lambda s: None)
    assert argv[0] == "srun" and argv[-2:] == ["--mpi=pmi2", "./hello"]
    assert _option(argv, "-N") == "2" and _option(argv, "-n") == "4" and _option(argv, "-m") == "arbitrary"
    # with -m arbitrary, -w lists a node per task (or names a file of them), not just the nodes
    assert _option(argv, "-w") == "/w/.j.hostfile"
    argv, _ = models.wrap(ex, ["./hello"], _shares(3, 1), None, lambda s: None)
    assert _option(argv, "-w") == "n1,n1,n1,n2"


def test_disable_nl_srun_step():
    step = models.srun_step(["prog", "a"], _shares(3), 90)
    assert step[:1] == ["srun"] and "--exact" in step and step[-2:] == ["prog", "a"]
    assert _option(step, "-N") == "1" and _option(step, "-n") == "1" and _option(step, "-c") == "3"
    assert _option(step, "-w") == "n1"


# ====================================================================== in the sandbox cluster
def _hostname_jobs():
    return {"name": "spread", "iteration": {"stop": 32},
            "execution": {"script": 'sleep 0.2; echo "$SLURMD_NODENAME"', "stdout": "spread.${it}"}}


@pytest.fixture(scope="module")
def main_run(slurm_cluster, tmp_path_factory):
    """One service in a 4-node allocation running the ordinary checks side by side."""
    wd = tmp_path_factory.mktemp("slurm-main") / "wd"
    jobs = [
        _hostname_jobs(),
        {"name": "two", "resources": {"numNodes": 2, "numCores": 2},
         "execution": {"script": 'cat "$SLURM_HOSTFILE" > two.hosts; env > two.env'}},
        {"name": "nested", "execution": {"script": "srun -N1 -n1 printenv SLURMD_NODENAME",
                                         "stdout": "nested.out", "stderr": "nested.err"}},
        {"name": "omp", "resources": {"numCores": 3},
         "execution": {"script": 'echo "$OMP_NUM_THREADS $QCG_PM_NPROCS"', "model": "threads",
                       "stdout": "omp.out"}},
        {"name": "wt_default", "resources": {"wt": "2s"}, "execution": {"exec": "sleep", "args": ["30"]}},
        {"name": "wt_srunmpi", "resources": {"numCores": 2, "wt": "2s"},
         "execution": {"exec": "sleep", "args": ["30"], "model": "srunmpi"}},
    ]
    requests = [{"request": "submit", "jobs": jobs}, {"request": "resourcesInfo"}, FINISH]
    run = salloc_service(wd, requests, timeout=60)
    run.by_name = run.report(unique=True)
    return run


def test_single_core_tasks_use_every_node(main_run):
    wd = main_run.wd
    seen = {}
    for it in range(32):
        entry = main_run.by_name[f"spread:{it}"]
        assert entry["state"] == "SUCCEED", describe(main_run)
        node = (wd / f"spread.{it}").read_text().strip()
        assert node == first_node(entry), f"iteration {it} ran on {node}, allocated {entry['runtime']['allocation']}"
        seen[node] = seen.get(node, 0) + 1
    assert sorted(seen) == NODE_NAMES, seen
    assert main_run.by_name["spread"]["state"] == "SUCCEED"
    text = main_run.log_text
    assert "4 of 4 agents ready" in text
    for node in NODE_NAMES:
        assert (main_run.sdir / f"agent-{node}.log").exists()


def test_two_node_job_sees_its_own_allocation(main_run):
    entry = main_run.by_name["two"]
    assert entry["state"] == "SUCCEED", describe(main_run)
    nodes = alloc_nodes(entry)
    assert len(nodes) == 2 and set(nodes.values()) == {2}, entry["runtime"]["allocation"]
    order = list(nodes)
    hosts = (main_run.wd / "two.hosts").read_text().split()
    assert hosts == [order[0]] * 2 + [order[1]] * 2  # one line per slot
    env = env_file(main_run.wd / "two.env")
    assert env["SLURM_NNODES"] == "2"
    assert env["SLURM_NTASKS"] == "4"
    assert env["SLURM_TASKS_PER_NODE"] == "2(x2)"
    assert env["SLURM_NODELIST"].split(",") == order
    assert env["SLURMD_NODENAME"] == order[0]  # it runs on its first node
    assert Path(env["SLURM_HOSTFILE"]).parent == main_run.wd
    assert env["SLURM_OVERLAP"] == "1"
    assert env["QCG_PM_NODELIST"].split(",") == order


def test_task_may_run_srun_itself(main_run):
    entry = main_run.by_name["nested"]
    assert entry["state"] == "SUCCEED", (main_run.wd / "nested.err").read_text()
    out = (main_run.wd / "nested.out").read_text().split()
    assert len(out) == 1 and out[0] in NODE_NAMES, out


def test_threads_model_sets_omp_num_threads(main_run):
    assert main_run.by_name["omp"]["state"] == "SUCCEED"
    assert (main_run.wd / "omp.out").read_text().split() == ["3", "3"]


@pytest.mark.parametrize("job", ["wt_default", "wt_srunmpi"])
def test_wall_time_enforced_in_allocation(main_run, job):
    entry = main_run.by_name[job]
    assert entry["state"] == "FAILED", entry
    assert "wall time" in entry["messages"], entry["messages"]
    h, m, s = entry["runtime"]["rtime"].split(":")
    assert 1.5 <= float(s) + 60 * int(m) + 3600 * int(h) < 10, entry["runtime"]["rtime"]


def test_resources_info_in_allocation(main_run):
    data = main_run.reply(2)["data"]
    assert data["total_nodes"] == 4 and data["total_cores"] == 16, data
    assert data["used_cores"] + data["free_cores"] == 16
    final = main_run.final_status()["Resources"]
    assert final["TotalNodes"] == 4 and final["TotalCores"] == 16


def test_srun_version_of_the_sandbox(slurm_cluster):
    flags = SrunFlags()
    assert flags.version >= (22, 5), flags.version
    assert flags.overlap == ["--overlap"]


def test_disable_nl_tasks_are_srun_steps_on_their_nodes(slurm_cluster, tmp_path):
    jobs = [{"name": "steps", "iteration": {"stop": 16},
             "execution": {"script": 'sleep 0.2; echo "$SLURMD_NODENAME $SLURM_STEP_ID"', "stdout": "s.${it}"}},
            {"name": "wt", "resources": {"wt": "2s"}, "execution": {"exec": "sleep", "args": ["30"]}}]
    run = salloc_service(tmp_path / "wd", [{"request": "submit", "jobs": jobs}, FINISH], args=["--disable-nl"])
    report = run.report()
    nodes = set()
    for it in range(16):
        entry = report[f"steps:{it}"]
        assert entry["state"] == "SUCCEED", describe(run)
        assert entry["runtime"]["pname"] == "srun"
        node, step = (run.wd / f"s.{it}").read_text().split()
        assert node == first_node(entry) and step.isdigit()
        nodes.add(node)
    assert len(nodes) > 1, nodes
    assert report["wt"]["state"] == "FAILED" and "wall time" in report["wt"]["messages"]
    assert not list(run.sdir.glob("agent-n*.log"))  # no node agents: one local agent only


def test_limit_nodes_range(slurm_cluster, tmp_path):
    jobs = [{"name": "r", "iteration": {"stop": 16},
             "execution": {"script": 'sleep 0.2; echo "$SLURMD_NODENAME"', "stdout": "r.${it}"}}]
    run = salloc_service(tmp_path / "wd", [{"request": "submit", "jobs": jobs}, {"request": "resourcesInfo"}, FINISH],
                         args=["--slurm-limit-nodes-range-begin", "1", "--slurm-limit-nodes-range-end", "3"])
    report = run.report()
    seen = set()
    for it in range(16):
        assert report[f"r:{it}"]["state"] == "SUCCEED", describe(run)
        seen.add((run.wd / f"r.{it}").read_text().strip())
    assert seen == {"n2", "n3"}
    assert sorted(p.name for p in run.sdir.glob("agent-n*.log")) == ["agent-n2.log", "agent-n3.log"]
    data = run.reply(2)["data"]
    assert data["total_nodes"] == 2 and data["total_cores"] == 8, data


def _agent_pid(log: Path) -> int | None:
    try:
        first = log.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    m = re.search(r"\(pid (\d+)\)", first) or re.search(r"agent\[(\d+)\]", first)
    return int(m.group(1)) if m else None


def test_lost_agent_tasks_are_requeued(slurm_cluster, tmp_path):
    jobs = [{"name": "k", "iteration": {"stop": 64},
             "execution": {"script": 'sleep 0.5; echo "$SLURMD_NODENAME"', "stdout": "k.${it}"}}]
    run = start_salloc_service(tmp_path / "wd", [{"request": "submit", "jobs": jobs}, FINISH])
    victim = "n2"
    try:
        log = run.sdir / f"agent-{victim}.log"
        deadline = time.monotonic() + 30
        pid = None
        while pid is None and time.monotonic() < deadline and run.proc.poll() is None:
            pid = _agent_pid(log)
            time.sleep(0.02)
        assert pid is not None, f"no agent pid in {log}"
        agent = psutil.Process(pid)
        cmdline = " ".join(agent.cmdline())
        assert "qcg_hier_agent" in cmdline and "srun" not in agent.name() and str(run.sdir) in cmdline, cmdline
        # kill it while it runs tasks (mid-campaign): they must be re-queued, not lost
        # (a child with the agent's own command line is its watchdog, not a task)
        agent_argv = agent.cmdline()

        def tasks():
            found = []
            for child in agent.children():
                with contextlib.suppress(psutil.Error):
                    if child.cmdline() != agent_argv:
                        found.append(child)
            return found

        deadline = time.monotonic() + 10
        while not tasks() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert tasks(), "the agent never ran a task"
        os.kill(pid, signal.SIGKILL)
    except BaseException:
        finish_salloc(run, timeout=5, expect_rc=None)
        raise
    finish_salloc(run, timeout=60)
    report = run.report()
    retried = []
    for it in range(64):
        entry = report[f"k:{it}"]
        assert entry["state"] == "SUCCEED", describe(run)
        hist = states(entry)
        if hist.count("SCHEDULED") > 1:
            retried.append(it)
            assert hist.index("QUEUED", hist.index("EXECUTING")) < len(hist) - 1, hist
            assert first_node(entry) != victim  # the lost node gets no more work
            assert (run.wd / f"k.{it}").read_text().strip() == first_node(entry)
    assert report["k"]["state"] == "SUCCEED"
    assert retried, "no iteration was retried"
    assert re.search(rf"agent {victim} lost \(silent for", run.log_text), describe(run)
    assert re.search(rf"node {victim} lost: [1-9]\d* running tasks re-queued", run.log_text)


@pytest.mark.parametrize("how", ["scancel", "kill-9-service"])
def test_escaped_processes_do_not_outlive_their_task_or_the_allocation(slurm_cluster, tmp_path, how):
    """A task's process that left its process group (setsid) dies at its task's end; that of a
    running task dies with the allocation: on scancel, or when the service is killed with -9 (salloc
    then gives the allocation up)."""
    ends, runs = new_marker(), new_marker()
    wd = tmp_path / "wd"
    jobs = [{"name": "ends", "execution": {"script": f"{setsid_escape(ends)}; touch ended"}},
            {"name": "runs", "execution": {"script": f"{setsid_escape(runs)}; touch running; sleep 100"}}]
    run = start_salloc_service(wd, [{"request": "submit", "jobs": jobs}])
    try:
        started = wait_for(lambda: ((wd / "ended").exists() and (wd / "running").exists())
                           or run.proc.poll() is not None, 40)
        assert started and run.proc.poll() is None, f"the tasks did not start\n{describe(run)}"
        assert wait_for(lambda: not marked(ends), 5), "a setsid process outlived its task"
        assert marked(runs), "the running task's setsid process is gone early"
        t0 = time.monotonic()
        if how == "scancel":
            subprocess.run(["scancel", "--name", run.job_name], env=clean_env(), capture_output=True, timeout=30,
                           check=True)
        else:
            service = [p for p in psutil.Process(run.proc.pid).children() if "--file-path" in p.cmdline()]
            assert len(service) == 1, service
            service[0].kill()
        gone = wait_for(lambda: not marked(runs), 15)
        took = time.monotonic() - t0
    except BaseException:
        finish_salloc(run, timeout=5, expect_rc=None)
        raise
    finally:
        for proc in marked(ends, runs):
            with contextlib.suppress(psutil.Error):
                proc.kill()
    finish_salloc(run, timeout=30, expect_rc=None)
    assert gone, f"a running task's setsid process still ran 15 s after {how}"
    print(f"setsid process gone {took:.2f} s after {how}")


# ====================================================================== MPI across two nodes
def _ensure_mpich() -> str:
    """mpicc.mpich, installing Debian's mpich + libmpich-dev (as MPI_NOTES.md recommends) if missing."""
    cc = shutil.which("mpicc.mpich")
    if cc:
        return cc
    apt_install("mpich", "libmpich-dev")
    cc = shutil.which("mpicc.mpich")
    assert cc, "mpicc.mpich still missing after apt-get install mpich libmpich-dev"
    return cc


def test_mpi_hello_on_two_nodes_srunmpi(slurm_cluster, tmp_path):
    assert MPI_SOURCE.exists() and MPI_NOTES.exists(), "tests/data/mpi_hello.c and MPI_NOTES.md are expected"
    cc = _ensure_mpich()
    binary = tmp_path / "mpi_hello"
    proc = subprocess.run([cc, "-o", str(binary), str(MPI_SOURCE)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    shm_before = set(Path("/dev/shm").glob("ucx_shm_posix_*"))
    jobs = [{"name": "hello", "resources": {"numNodes": 2, "numCores": 2},
             "execution": {"exec": str(binary), "model": "srunmpi", "model_opts": {"srun_args": ["--mpi=pmi2"]},
                           "stdout": "hello.out", "stderr": "hello.err"}}]
    try:
        run = salloc_service(tmp_path / "wd", [{"request": "submit", "jobs": jobs}, FINISH], timeout=60)
    finally:
        for leftover in set(Path("/dev/shm").glob("ucx_shm_posix_*")) - shm_before:
            leftover.unlink(missing_ok=True)
    entry = run.report()["hello"]
    err = (run.wd / "hello.err").read_text() if (run.wd / "hello.err").exists() else ""
    assert entry["state"] == "SUCCEED", f"{entry}\n{err}"
    lines = (run.wd / "hello.out").read_text().splitlines()
    ranks = {}
    for line in lines:
        m = re.fullmatch(r"rank (\d+) of (\d+) on (\S+)", line)
        assert m and m.group(2) == "4", f"unexpected line {line!r} (singletons mean PMI is not wired)\n{lines}"
        ranks[int(m.group(1))] = m.group(3)
    assert sorted(ranks) == [0, 1, 2, 3], lines
    allocated = alloc_nodes(entry)
    assert len(allocated) == 2
    assert set(ranks.values()) == set(allocated), (ranks, entry["runtime"]["allocation"])
    # ranks follow the hostfile: two per node, in allocation order
    order = list(allocated)
    assert [ranks[r] for r in range(4)] == [order[0], order[0], order[1], order[1]], ranks


# ================================================================ readiness threshold and late agents
def test_scheduling_starts_at_the_ready_threshold_and_a_late_agent_adds_its_node(tmp_path):
    """--nl-ready-threshold 0.5 of 4 agents: scheduling starts with the 2nd; the 3rd and 4th,
    arriving later, each make their node ready at once."""
    from qcg_hier.launch.launcher import AgentLauncher, AgentSettings, Callbacks
    from qcg_hier.launch.taskspec import TaskContext

    events = []
    callbacks = Callbacks(on_ready=lambda: events.append("ready"), on_finished=lambda f: None,
                          on_node_lost=lambda n, p: events.append(("lost", n)),
                          on_node_ready=lambda n: events.append(("node", n)))
    ctx = TaskContext(str(tmp_path), "x", {}, {}, binding=True, slurm_env=True)
    routes = {f"n{i}": f"n{i}" for i in range(1, 5)}
    launcher = AgentLauncher(callbacks, ctx, str(tmp_path), routes, starter=None,
                             settings=AgentSettings(ready_threshold=0.5))
    info = {"host": "h", "pid": 1, "cpus": [0, 1]}
    launcher._agent_ready(launcher.agents["n1"], info)
    assert events == [("node", "n1")] and not launcher.ready
    launcher._agent_ready(launcher.agents["n3"], info)
    assert events[-2:] == [("node", "n3"), "ready"] and launcher.ready
    launcher._agent_ready(launcher.agents["n4"], info)  # late: its node joins at once
    assert events[-1] == ("node", "n4") and events.count("ready") == 1
    assert ctx.cpu_maps["n4"] == [0, 1]  # and its CPUs are known for binding


def test_agents_not_ready_within_the_init_timeout_stop_the_service(tmp_path):
    import asyncio

    from qcg_hier.launch.launcher import AgentLauncher, AgentSettings, Callbacks
    from qcg_hier.launch.taskspec import TaskContext

    class SilentStarter:  # agents that never connect
        restartable = False
        process = None

        def poll(self):
            return None

    fatal = []
    callbacks = Callbacks(on_ready=lambda: None, on_finished=lambda f: None, on_node_lost=lambda n, p: None,
                          on_node_ready=lambda n: None, on_fatal=fatal.append)
    launcher = AgentLauncher(callbacks, TaskContext(str(tmp_path), "x", {}, {}, binding=True), str(tmp_path),
                             {"n1": "n1", "n2": "n2"}, SilentStarter(),
                             AgentSettings(heartbeat=0.05, init_timeout=0.3))
    asyncio.run(asyncio.wait_for(launcher._watch(), 5))
    assert fatal and "0 of 2 node agents ready within --nl-init-timeout 0.3 s" in fatal[0]


def test_slurm_resources_file_comes_before_every_other_source(tmp_path, monkeypatch):
    """Upstream's JSON resources (how its governor gave partitions their nodes), even with --nodes."""
    import json

    from qcg_hier.cli import resolve_nodes

    path = tmp_path / "res.json"
    path.write_text(json.dumps({"type": "LOCAL", "nodes": [{"name": "a", "total_cores": 3},
                                                           {"name": "b", "total_cores": 2, "gpus": ["0"]}]}))
    opts = _opts(slurm_resources_file=str(path), nodes="8")
    nodes = resolve_nodes(opts)
    assert [(n.name, n.cores, n.gpus) for n in nodes] == [("a", 3, ()), ("b", 2, ("0",))]
    assert opts.slurm is False  # type LOCAL: no srun
    path.write_text(json.dumps({"nodes": [{"name": "a", "total_cores": 0}]}))
    with pytest.raises(ResourceSpecError, match="res.json: node a: 'total_cores' must be a positive integer"):
        resolve_nodes(_opts(slurm_resources_file=str(path)))
    path.write_text("{not json")
    with pytest.raises(ResourceSpecError, match="res.json"):
        resolve_nodes(_opts(slurm_resources_file=str(path)))
