"""Slurm's job suspend (`scontrol suspend`/`resume`: SIGSTOP, later SIGCONT, to the batch script,
the service in it, the agents' step and the tasks) for longer than the agent link's timeouts: each
process sees that it stood still itself, so no agent is lost and no task killed or run again."""
import json
import shlex
import subprocess
import time

import psutil

from conftest import SERVICE_ID, service_command
from slurm_helpers import clean_env, slurm_cluster  # noqa: F401 (fixture)

LINK_TIMEOUT = 10.0  # the manager's and the agents' default silence limits


def _slurm(*argv: str) -> str:
    return subprocess.run(argv, env=clean_env(), capture_output=True, text=True, timeout=30, check=True).stdout


def _job_state(job_id: str) -> str:
    info = _slurm("scontrol", "show", "job", "-o", job_id)
    return info.split("JobState=", 1)[1].split()[0]


def _wait_state(job_id: str, wanted: set, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    state = _job_state(job_id)
    while state not in wanted and time.monotonic() < deadline:
        time.sleep(0.1)
        state = _job_state(job_id)
    return state


def _campaign(tmp_path, sleep: float) -> tuple:
    """8 iterations that each write their pid and sleep: (wd, request file, the pids file)."""
    wd = tmp_path / "wd"
    wd.mkdir()
    jobs = [{"name": "s", "iteration": {"stop": 8}, "execution": {"script": f"echo $$ >> pids.txt; sleep {sleep}"}}]
    reqs = tmp_path / "reqs.json"
    reqs.write_text(json.dumps([{"request": "submit", "jobs": jobs},
                                {"request": "control", "command": "finishAfterAllTasksDone"}]))
    return wd, reqs, wd / "pids.txt"


def _all_started(pids, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while not (pids.exists() and len(pids.read_text().split()) == 8) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids.exists() and len(pids.read_text().split()) == 8


def test_a_suspended_and_resumed_allocation_loses_nothing(slurm_cluster, tmp_path):
    wd, reqs, pids = _campaign(tmp_path, sleep=2)
    service = shlex.join(service_command() + ["--file-path", str(reqs), "--wd", str(wd), "--id", SERVICE_ID])
    job_id = _slurm("sbatch", "--parsable", "-N2", "--ntasks-per-node=4", "-o", str(tmp_path / "job.out"),
                    "--wrap", service).strip().split(";")[0]
    try:
        assert _all_started(pids), (tmp_path / "job.out").read_text()
        _slurm("scontrol", "suspend", job_id)
        assert _job_state(job_id) == "SUSPENDED"
        time.sleep(LINK_TIMEOUT * 1.3)
        _slurm("scontrol", "resume", job_id)
        state = _wait_state(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, 60)
    finally:
        subprocess.run(["scancel", job_id], env=clean_env(), capture_output=True, timeout=30)
    sdir = wd / f".qcgpjm-service-{SERVICE_ID}"
    log = (sdir / "service.log").read_text()
    agent_logs = "\n".join(p.read_text() for p in sdir.glob("agent-*.log"))
    assert state == "COMPLETED", f"{state}\n{log}\n{agent_logs}"
    assert len(pids.read_text().split()) == 8, f"a task ran again\n{log}"
    assert " lost " not in log and "no message from the manager" not in agent_logs, f"{log}\n{agent_logs}"
    assert "stood still" in log and "stood still" in agent_logs  # each noticed its own pause
    report = [json.loads(line) for line in (sdir / "jobs.report").read_text().splitlines()]
    assert sorted(e["name"] for e in report if e["name"].startswith("s:")) == sorted(f"s:{i}" for i in range(8))
    assert all(e["state"] == "SUCCEED" for e in report), report


def test_a_manager_stopped_for_20_s_in_an_allocation_loses_nothing(slurm_cluster, tmp_path):
    """SIGSTOP of the manager alone (its agents and tasks go on) for twice the agents' timeout: the
    agents see its connection up and wait, so no agent is lost, no task killed or run again (both
    agents used to kill their tasks and exit, and every job ended FAILED)."""
    wd, reqs, pids = _campaign(tmp_path, sleep=3)
    argv = ["salloc", "-Q", "-N2", "--ntasks-per-node=4"] + service_command() + [
        "--file-path", str(reqs), "--wd", str(wd), "--id", SERVICE_ID]
    proc = subprocess.Popen(argv, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    sdir = wd / f".qcgpjm-service-{SERVICE_ID}"
    try:
        assert _all_started(pids)
        manager = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "--file-path" in p.cmdline() and p.name() != "salloc"]
        assert len(manager) == 1, manager
        manager[0].suspend()
        time.sleep(2 * LINK_TIMEOUT)
        manager[0].resume()
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (sdir / "service.log").read_text()
    agent_logs = "\n".join(p.read_text() for p in sdir.glob("agent-*.log"))
    assert proc.returncode == 0, out
    assert len(pids.read_text().split()) == 8, f"a task ran again\n{log}"
    assert " lost " not in log and "no message from the manager" not in agent_logs, f"{log}\n{agent_logs}"
    assert "connection is up: waiting" in agent_logs
    report = [json.loads(line) for line in (sdir / "jobs.report").read_text().splitlines()]
    assert sorted(e["name"] for e in report if e["name"].startswith("s:")) == sorted(f"s:{i}" for i in range(8))
    assert all(e["state"] == "SUCCEED" for e in report), report
