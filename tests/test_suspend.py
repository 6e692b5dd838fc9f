"""A whole service stopped and continued (Slurm's job suspend: SIGSTOP, later SIGCONT, to every
process of the job) for longer than the agent link's timeouts: the silence is its own, not a peer's,
so no agent is lost, no task killed or run again."""
import signal
import time

import psutil

from conftest import finish_background, start_service, wait_for
from qcg_hier.launch.launcher import stalled

LINK_TIMEOUT = 10.0  # the manager's and the agent's default silence limits


def _job_tree(pid: int) -> list[psutil.Process]:
    top = psutil.Process(pid)
    return [top] + top.children(recursive=True)


def test_a_suspended_and_resumed_service_loses_nothing(tmp_path, background):
    jobs = [{"name": "s", "iteration": {"stop": 4},
             "execution": {"script": "echo $$ >> pids.txt; sleep 2"}}]
    run = start_service(tmp_path / "wd", [{"request": "submit", "jobs": jobs},
                                          {"request": "control", "command": "finishAfterAllTasksDone"}],
                        nodes="4")
    background.append(run)
    pids = run.wd / "pids.txt"
    assert wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 4, 20)
    procs = _job_tree(run.proc.pid)
    assert len(procs) >= 6  # the service, its agent, four tasks (and their sleeps)
    for p in procs:
        p.send_signal(signal.SIGSTOP)
    time.sleep(LINK_TIMEOUT * 1.3)
    for p in reversed(procs):
        try:
            p.send_signal(signal.SIGCONT)
        except psutil.NoSuchProcess:
            pass
    finish_background(run, timeout=30)
    assert run.returncode == 0, run.describe()
    assert len(pids.read_text().split()) == 4, "a task ran again"
    agent_log = "\n".join(p.read_text() for p in run.sdir.glob("agent-*.log"))
    assert "no message from the manager" not in agent_log
    assert "stood still" in agent_log and "stood still" in run.log_text  # both noticed their own pause
    assert "lost" not in run.log_text and "restarting" not in run.log_text, run.log_text
    report = [line for line in (run.sdir / "jobs.report").read_text().splitlines() if '"s:' in line]
    assert len(report) == 4 and all('"state":"SUCCEED"' in line for line in report), report


def test_a_pause_of_half_a_timeout_between_two_ticks_is_a_stall():
    assert not stalled(10.5, 10.0, 2.0)  # one tick of the watch
    assert stalled(14.0, 10.0, 2.0)  # this process stood still for 4 s: the peer's silence proves nothing
