"""Black-box tests of what a task gets from `qcg-pm-service` (batch-file mode).

Variables, environment, working directories, redirections, CPU binding and
dependencies (from the session-wide `happy_run`); launch failures; environment
modules and virtualenvs for real; and no task left running when the service is
stopped or killed.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (HAPPY_STDIN, env_file, finish_background, iterations_of, leftover_processes, pid_alive, run_service,
                      start_service, wait_for, when)




def _alloc_nodes(entry: dict) -> dict[str, int]:
    """{node: number of slots} from a report runtime allocation like `n0[0:1],n1[1]`."""
    out = {}
    for node, slots in re.findall(r"([^,\[\]]+)\[([^\]]*)\]", entry["runtime"]["allocation"]):
        out[node] = len(slots.split(":"))
    return out


# ================================================================ ordinary jobs (happy_run)
def test_all_ordinary_jobs_succeed(happy_run):
    report = happy_run.report()
    failed = {n: (e["state"], e.get("messages")) for n, e in report.items() if e["state"] != "SUCCEED"}
    assert not failed, f"jobs not SUCCEED: {failed}\n{happy_run.describe()}"


def test_plain_job_stdout(happy_run):
    assert (happy_run.wd / "plain.out").read_text() == "plain ok\n"


def test_iterative_job_has_one_line_per_iteration_and_one_for_the_job(happy_run):
    names = sorted(n for n in happy_run.report() if n == "iter" or n.startswith("iter:"))
    assert names == ["iter", "iter:0", "iter:1", "iter:2"]
    entries = [e for e in happy_run.report_entries() if e["name"].startswith("iter")]
    assert len(entries) == 3 + 1


def test_launch_variables_of_iterations(happy_run):
    report = happy_run.report()
    for it in range(3):
        node = next(iter(_alloc_nodes(report[f"iter:{it}"])))
        text = (happy_run.wd / f"iter_{it}.out").read_text()
        assert text == f"{it} {it} 1 1 {node} {happy_run.wd} iter\n"


def test_values_iteration_itval(happy_run):
    for it, value in enumerate(["alpha", "beta", "gamma"]):
        assert (happy_run.wd / f"vals_{it}.out").read_text() == f"{value} {it}\n"
    assert happy_run.report()["vals:2"]["state"] == "SUCCEED"


def test_multi_node_job_variables_and_environment(happy_run):
    entry = happy_run.report()["wide"]
    nodes = _alloc_nodes(entry)
    assert sorted(nodes) == ["n0", "n1"] and sum(nodes.values()) == 4, entry["runtime"]
    ncores, nnodes, nlist = (happy_run.wd / "wide.vars").read_text().split()
    assert (ncores, nnodes) == ("4", "2")
    assert sorted(nlist.split(",")) == ["n0", "n1"]
    env = env_file(happy_run.wd / "wide.env")
    assert env["QCG_PM_NNODES"] == "2"
    assert env["QCG_PM_NODELIST"] == nlist
    assert env["QCG_PM_NPROCS"] == "4"
    assert env["QCG_PM_NTASKS"] == "4"
    assert env["QCG_PM_TASKS_PER_NODE"] == ",".join(str(nodes[n]) for n in nlist.split(","))
    assert env["QCG_PM_STEP_ID"]


def test_script_shell_dollars_reach_bash_untouched(happy_run):
    lines = dict(line.split("=", 1) for line in (happy_run.wd / "script.out").read_text().splitlines())
    assert lines["home"] == os.environ["HOME"]
    assert lines["braced"] == os.environ["HOME"]
    assert lines["arith"] == "6"
    # `$$` is the shell's own pid, i.e. the task's process
    assert lines["pid"] == happy_run.report()["script"]["runtime"]["pid"]


def test_relative_wd_is_created(happy_run):
    deep = happy_run.wd / "sub" / "dir" / "deep"
    assert deep.is_dir()
    assert (deep / "here.txt").read_text().strip() == str(deep)
    assert (deep / "wd.out").read_text() == "in-wd\n"  # stdout is relative to the job's wd
    assert happy_run.report()["wdjob"]["runtime"]["wd"] == str(deep)


def test_stdin_stdout_stderr_redirection(happy_run):
    wd = happy_run.wd
    assert (wd / "cat.out").read_text() == HAPPY_STDIN
    assert (wd / "cat.err").read_text() == ""
    assert (wd / "streams.out").read_text() == "to-out\n" + HAPPY_STDIN
    assert (wd / "streams.err").read_text() == "to-err\n"
    assert sorted((wd / "merged.txt").read_text().splitlines()) == ["to-err", "to-out"]


def test_job_env_and_qcg_variables(happy_run):
    env = env_file(happy_run.wd / "env1.out")
    assert env["MY_VAR"] == "my value"
    assert env["OTHER_VAR"] == "a=b"
    assert env["PATH"] == os.environ["PATH"]  # the service environment is inherited
    node = next(iter(_alloc_nodes(happy_run.report()["envjob"])))
    assert env["QCG_PM_NNODES"] == "1"
    assert env["QCG_PM_NODELIST"] == node
    assert env["QCG_PM_NPROCS"] == "1"
    assert env["QCG_PM_NTASKS"] == "1"
    assert env["QCG_PM_TASKS_PER_NODE"] == "1"
    assert env["QCG_PM_STEP_ID"]
    assert "QCG_PM_CPU_SET" not in env  # as upstream: single-core jobs do not get it


def test_step_ids_differ_between_tasks(happy_run):
    ids = [env_file(happy_run.wd / f)["QCG_PM_STEP_ID"] for f in ("env1.out", "cpu2.env", "wide.env")]
    assert len(set(ids)) == 3, ids


def _cpu_list(text: str) -> set[int]:
    cpus = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def test_two_core_job_gets_cpu_set_matching_its_binding(happy_run):
    env = env_file(happy_run.wd / "cpu2.env")
    assert env["QCG_PM_NPROCS"] == "2"
    assert "QCG_PM_CPU_SET" in env, "a 2-core job must get QCG_PM_CPU_SET"
    cpu_set = [int(c) for c in env["QCG_PM_CPU_SET"].split(",")]
    mine = os.sched_getaffinity(0)
    assert len(cpu_set) == len(set(cpu_set)) == min(2, len(mine))
    assert set(cpu_set) <= mine
    allowed = (happy_run.wd / "cpu2.aff").read_text().split(":", 1)[1].strip()
    assert _cpu_list(allowed) == set(cpu_set), "the task must really be bound to QCG_PM_CPU_SET"


def test_dependencies_whole_job_one_iteration_and_per_iteration(happy_run):
    report = happy_run.report()
    iters = iterations_of(report, "iter")
    assert when(report["dep_whole"], "SCHEDULED") >= when(report["iter"], "SUCCEED")
    assert when(report["dep_whole"], "SCHEDULED") >= max(when(e, "SUCCEED") for e in iters.values())
    assert when(report["dep_one"], "SCHEDULED") >= when(iters[1], "SUCCEED")
    per_it = iterations_of(report, "dep_perit")
    assert sorted(per_it) == [0, 1, 2]
    for it, entry in per_it.items():
        assert entry["state"] == "SUCCEED"
        assert when(entry, "SCHEDULED") >= when(iters[it], "SUCCEED"), f"dep_perit:{it} started before iter:{it} ended"


def test_min_max_cores(happy_run):
    ncores, nprocs = (happy_run.wd / "minmax.out").read_text().split()
    assert ncores == nprocs
    assert 1 <= int(ncores) <= 3
    assert sum(_alloc_nodes(happy_run.report()["minmax"]).values()) == int(ncores)


# ================================================================ launch failures
@pytest.fixture(scope="module")
def failures_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("failures") / "wd"
    wd.mkdir()
    (wd / "afile").write_text("a regular file\n")
    true = {"exec": "/bin/true"}
    requests = [
        {"request": "submit", "jobs": [{"name": "good", "execution": {"exec": "/bin/echo", "args": ["good"],
                                                                       "stdout": "good.out"}}]},
        {"request": "submit", "jobs": [
            {"name": "noexe", "execution": {"exec": "/nonexistent/qcg-no-such-program"}},
            {"name": "noexe_path", "execution": {"exec": "qcg-no-such-program-on-path"}},
            {"name": "sibling", "execution": true}]},
        {"request": "submit", "jobs": [{"name": "procwd", "execution": {**true, "wd": "/proc/qcg-no-such/wd"}}]},
        {"request": "submit", "jobs": [{"name": "filewd_below", "execution": {**true, "wd": "afile/sub"}},
                                       {"name": "filewd", "execution": {**true, "wd": "afile"}}]},
        {"request": "submit", "jobs": [{"name": "outmiss", "execution": {**true, "stdout": "missing/dir/out.txt"}}]},
        {"request": "submit", "jobs": [{"name": "walltime", "execution": {"exec": "sleep", "args": ["30"]},
                                        "resources": {"wt": "2s"}}]},
        {"request": "submit", "jobs": [{"name": "kill9", "execution": {"script": "kill -9 $$"}}]},
        {"request": "submit", "jobs": [{"name": "after_failed", "dependencies": {"after": ["noexe"]},
                                        "execution": true}]},
        {"request": "submit", "jobs": [{"name": "good_last", "execution": true}]},
        {"request": "control", "command": "finishAfterAllTasksDone"},
    ]
    return run_service(wd, requests, nodes="2,2", timeout=60)


def _failed(run, name: str) -> str:
    entry = run.report()[name]
    assert entry["state"] == "FAILED", f"{name}: {entry['state']} {entry.get('messages')}"
    assert entry.get("messages"), f"{name} FAILED without a message"
    return entry["messages"]


def test_failures_do_not_stop_the_rest(failures_run):
    report = failures_run.report()
    for name in ("good", "sibling", "good_last"):
        assert report[name]["state"] == "SUCCEED", (name, report[name])
    assert (failures_run.wd / "good.out").read_text() == "good\n"
    status = failures_run.final_status()
    assert status["JobStats"]["TotalJobs"] == 12


def test_nonexistent_executable_fails_with_cannot_execute(failures_run):
    assert "cannot execute" in _failed(failures_run, "noexe")
    assert "/nonexistent/qcg-no-such-program" in _failed(failures_run, "noexe")
    assert "cannot execute" in _failed(failures_run, "noexe_path")


def test_dependency_on_failed_job_is_omitted(failures_run):
    entry = failures_run.report()["after_failed"]
    assert entry["state"] == "OMITTED"
    assert "noexe" in entry.get("messages", "")


def test_unwritable_wd_fails_naming_the_working_directory(failures_run):
    message = _failed(failures_run, "procwd")
    assert "working directory" in message and "/proc/qcg-no-such/wd" in message


def test_wd_through_a_regular_file_fails(failures_run):
    for name in ("filewd_below", "filewd"):
        assert "working directory" in _failed(failures_run, name)


def test_stdout_in_missing_directory_fails_naming_stdout(failures_run):
    message = _failed(failures_run, "outmiss")
    assert "stdout" in message and "missing/dir/out.txt" in message


def test_wall_time_is_enforced(failures_run):
    message = _failed(failures_run, "walltime")
    assert "wall time" in message
    entry = failures_run.report()["walltime"]
    took = (when(entry, "FAILED") - when(entry, "EXECUTING")).total_seconds()
    assert 1.5 <= took <= 5, f"a 2s wall time ended the task after {took:.2f} s"


def test_kill_9_of_a_task_fails_naming_the_signal(failures_run):
    message = _failed(failures_run, "kill9")
    assert "SIGKILL" in message or "signal 9" in message
    assert failures_run.report()["kill9"]["runtime"]["exit_code"] == "-9"


# ================================================================ environment modules, venv
_MODULES_LOCK = "/tmp/qcg-hier-tests-apt.lock"


def _ensure_environment_modules() -> None:
    """Debian's environment-modules, installed here if missing (root only)."""
    if Path("/usr/share/modules/init/bash").exists():
        return
    if os.geteuid() != 0:
        pytest.fail("environment-modules is not installed and the tests do not run as root: "
                    "run `apt-get install -y environment-modules` first")
    with open(_MODULES_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if Path("/usr/share/modules/init/bash").exists():
            return
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "environment-modules"]):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
            if proc.returncode != 0:
                pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    assert Path("/usr/share/modules/init/bash").exists(), "environment-modules installed but no init script"


@pytest.mark.slow
def test_environment_modules_are_loaded(tmp_path):
    _ensure_environment_modules()
    job_mods = tmp_path / "job-modules"
    svc_mods = tmp_path / "service-modules"
    job_mods.mkdir()
    svc_mods.mkdir()
    (job_mods / "testmod").write_text("#%Module1.0\nsetenv QCG_TEST_MOD hello\n")
    (svc_mods / "svcmod").write_text("#%Module1.0\nsetenv QCG_TEST_SVCMOD from-service-path\n")
    requests = [{"request": "submit", "jobs": [
        {"name": "modexec", "execution": {"exec": "printenv", "args": ["QCG_TEST_MOD"], "modules": ["testmod"],
                                          "env": {"MODULEPATH": str(job_mods)}, "stdout": "modexec.out",
                                          "stderr": "modexec.err"}},
        {"name": "modscript", "execution": {"script": 'echo "svc=$QCG_TEST_SVCMOD"', "modules": ["svcmod"],
                                            "stdout": "modscript.out", "stderr": "modscript.err"}},
    ]}]
    run = run_service(tmp_path / "wd", requests, nodes="2", env={"MODULEPATH": str(svc_mods)})
    report = run.report()
    for name in ("modexec", "modscript"):
        err = (run.wd / f"{name}.err").read_text() if (run.wd / f"{name}.err").exists() else ""
        assert report[name]["state"] == "SUCCEED", f"{name}: {report[name].get('messages')}\nstderr: {err}"
    assert (run.wd / "modexec.out").read_text() == "hello\n"
    assert (run.wd / "modscript.out").read_text() == "svc=from-service-path\n"


@pytest.mark.slow
def test_virtualenv_is_activated(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    code = "import sys; print(sys.prefix)"
    requests = [{"request": "submit", "jobs": [
        {"name": "venvexec", "execution": {"exec": "python", "args": ["-c", code], "venv": str(venv),
                                           "stdout": "venvexec.out", "stderr": "venvexec.err"}},
        {"name": "venvscript", "execution": {"script": f'python -c "{code}"', "venv": str(venv),
                                             "stdout": "venvscript.out", "stderr": "venvscript.err"}},
    ]}]
    run = run_service(tmp_path / "wd", requests, nodes="2")
    report = run.report()
    for name in ("venvexec", "venvscript"):
        assert report[name]["state"] == "SUCCEED", (name, report[name].get("messages"),
                                                   (run.wd / f"{name}.err").read_text())
        printed = (run.wd / f"{name}.out").read_text().strip()
        assert os.path.realpath(printed) == os.path.realpath(venv), f"{name} ran outside the venv: {printed}"


# ================================================================ no orphans
_LONG_TASK = "echo $$ > task.pid.tmp && mv task.pid.tmp task.pid; sleep 100 & echo $! > child.pid.tmp && " \
             "mv child.pid.tmp child.pid; wait"


def _start_long_task(tmp_path, background):
    run = start_service(tmp_path / "wd", [{"request": "submit", "jobs": [
        {"name": "long", "execution": {"script": _LONG_TASK}}]}], nodes="2")
    background.append(run)
    child = run.wd / "child.pid"
    if not wait_for(lambda: child.exists() or run.proc.poll() is not None, 30):
        pytest.fail("the long task did not start within 30 s\n" + run.describe())
    assert run.proc.poll() is None, "the service ended early\n" + finish_background(run).describe()
    pids = [int((run.wd / "task.pid").read_text()), int(child.read_text())]
    assert all(pid_alive(p) for p in pids)
    return run, pids


@pytest.mark.slow
def test_sigterm_of_the_service_kills_running_tasks(tmp_path, background):
    run, pids = _start_long_task(tmp_path, background)
    t0 = time.monotonic()
    run.proc.send_signal(signal.SIGTERM)
    finish_background(run, timeout=20)
    exited = time.monotonic() - t0
    assert run.returncode is not None and exited < 10, f"the service took {exited:.1f} s to stop\n{run.describe()}"
    assert wait_for(lambda: not any(pid_alive(p) for p in pids), 5), \
        f"task processes {[p for p in pids if pid_alive(p)]} survived the service's SIGTERM"
    assert "Traceback" not in run.stderr, run.describe()
    assert not leftover_processes(run.sdir)
    # interrupted, not cancelled: not ended, so no report line, and --resume runs it again
    assert "long" not in run.report(), run.report()
    assert any("interrupted" in json.loads(line) for line in (run.sdir / "journal").read_text().splitlines())
    assert (run.sdir / "final_status.json").exists()


@pytest.mark.slow
def test_sigkill_of_the_service_agent_kills_tasks(tmp_path, background):
    run, pids = _start_long_task(tmp_path, background)
    agents = leftover_processes(run.sdir)
    assert agents, "no node agent process found"
    os.kill(run.proc.pid, signal.SIGKILL)  # the service only, not its process group
    finish_background(run, timeout=10)
    t0 = time.monotonic()
    gone = wait_for(lambda: not any(pid_alive(p) for p in pids), 15)
    took = time.monotonic() - t0
    assert gone, f"task processes {[p for p in pids if pid_alive(p)]} still run 15 s after the service was killed"
    assert wait_for(lambda: not leftover_processes(run.sdir), 5), "the node agent outlived its service"
    print(f"tasks gone {took:.2f} s after SIGKILL of the service")


def test_a_task_that_cannot_be_prepared_fails_alone_and_frees_its_cores(tmp_path):
    """A failure to prepare a task after its submit was accepted (here the hostfile of a 2-node
    task, in a working directory that cannot be made) ends that task FAILED with the reason; the
    submit was answered as accepted, and the cores go to the next job. A 300-byte name (its
    hostfile name too long as it is) runs."""
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "blocker").write_text("a file, not a directory")
    long_name = "n" * 300
    two_nodes = {"numNodes": {"exact": 2}, "numCores": {"exact": 2}}
    requests = [{"request": "submit", "jobs": [
        {"name": "badwd", "execution": {"exec": "/bin/true", "wd": "blocker/sub"}, "resources": two_nodes}]},
        {"request": "submit", "jobs": [
            {"name": long_name, "execution": {"exec": "/bin/true"}, "resources": two_nodes},
            {"name": "all", "execution": {"exec": "/bin/true"}, "resources": {"numCores": {"exact": 4}},
             "dependencies": {"after": ["badwd"]}},
            {"name": "after", "execution": {"exec": "/bin/true"}, "resources": {"numCores": {"exact": 4}}}]},
        {"request": "control", "command": "finishAfterAllTasksDone"}]
    run = run_service(wd, requests, nodes="2,2", timeout=30)
    assert run.reply(1)["code"] == 0 and run.reply(2)["code"] == 0, run.describe()
    report = run.report()
    assert report["badwd"]["state"] == "FAILED", report["badwd"]
    assert "cannot prepare the task" in report["badwd"]["messages"], report["badwd"]
    assert report["after"]["state"] == "SUCCEED" and report[long_name]["state"] == "SUCCEED"
    assert report["all"]["state"] == "OMITTED"
    hostfiles = sorted(p.name for p in wd.glob(".*.hostfile"))
    assert hostfiles[0] == ".after.hostfile" and len(hostfiles) == 2, hostfiles
    assert hostfiles[1].startswith(".nnnn") and len(hostfiles[1]) < 255, hostfiles  # cut, with a hash
