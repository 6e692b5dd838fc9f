"""Nothing a task starts escapes, even when it leaves the task's process group.

A process that calls setsid (`setsid sleep ... &` in a script) or a double-forked daemon is not
in its task's process group, so killing that group misses it. The agent is a child subreaper (it
adopts them), tells their task by a marker in their environment, and kills them at the task's
end, on cancel and when it exits; its watchdog finds them by that marker when the agent itself is
killed with -9 (see README, "No orphans").

Every escaped process here is `sleep <unique number>`: it is looked for by that argv element.
"""
from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import finish_background, leftover_processes, start_service, wait_for
from test_agent import Manager, ok, read, wait_until

_count = itertools.count(1)

# A double-forked daemon: fork, setsid, fork again, the middle process exits; the grandchild
# (`sleep MARKER`) has lost its parent and is in a session of its own. Prints its pid once it runs.
DAEMON = r'''
import os, sys, time
marker = sys.argv[1]
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    pid = os.fork()
    if pid == 0:
        os.execvp("sleep", ["sleep", marker])
    os.write(w, b"%d" % pid)
    os._exit(0)
os.wait()
os.close(w)
pid = int(os.read(r, 64))
want = b"sleep\0" + marker.encode() + b"\0"
while open("/proc/%d/cmdline" % pid, "rb").read() != want:
    time.sleep(0.01)
print(pid, flush=True)
'''


def new_marker(seconds: int = 900) -> str:
    """A sleep duration no other process has on its command line."""
    return f"{seconds}.{os.getpid() % 10000:04d}{next(_count):03d}{int(time.time() * 1000) % 1000:03d}"


def setsid_escape(marker: str) -> str:
    """Shell that starts `sleep MARKER` in a session of its own and waits until it runs."""
    return (f"setsid sleep {marker} & p=$!; "
            f"until [ \"$(tr '\\0' ' ' < /proc/$p/cmdline 2>/dev/null)\" = 'sleep {marker} ' ]; do sleep 0.01; done")


def marked(*markers: str) -> list[psutil.Process]:
    """The running (not zombie) processes with one of `markers` in their argv."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and any(m in (proc.info["cmdline"] or ()) for m in markers):
            found.append(proc)
    return found


def assert_gone(markers, timeout: float, what: str) -> float:
    """Wait until no process has one of `markers`; return how long that took."""
    t0 = time.monotonic()
    gone = wait_for(lambda: not marked(*markers), timeout)
    took = time.monotonic() - t0
    assert gone, f"{[p.info['cmdline'] for p in marked(*markers)]} still run {timeout} s after {what}"
    return took


@pytest.fixture
def markers():
    """A maker of markers; whatever still runs with one of them at the end is killed."""
    made: list[str] = []

    def make(seconds: int = 900) -> str:
        made.append(new_marker(seconds))
        return made[-1]

    yield make
    for proc in marked(*made):
        try:
            proc.kill()
        except psutil.Error:
            pass


@pytest.fixture
def daemon(tmp_path):
    """Shell running the double-forked daemon `sleep MARKER` (its pid to stdout)."""
    path = tmp_path / "daemon.py"
    path.write_text(DAEMON)
    return lambda marker: f"{sys.executable} {path} {marker}"


@pytest.fixture
def agent(tmp_path):
    m = Manager(tmp_path)
    m.start()
    yield m
    m.close()


def _start_running_task(agent, tmp_path, script: str, tid=1):
    """Run `script`, then keep the task running; return once the script is through."""
    flag = tmp_path / f"ready{tid}"
    agent.send(["run", tid, agent.task(["sh", "-c", f"{script}; echo ready > {flag}; exec sleep 100"])])
    assert wait_until(lambda: flag.exists() and read(flag) == "ready\n"), f"task {tid} did not get ready"


# --------------------------------------------------------------------- the task's end, cancel


def test_setsid_process_is_killed_at_its_task_end(agent, markers):
    m = markers()
    ok(agent.run(agent.task(["sh", "-c", setsid_escape(m)])))
    took = assert_gone([m], 3, "its task ended")
    print(f"setsid process gone {took:.3f} s after its task's end")


def test_double_forked_daemon_is_killed_at_its_task_end(agent, markers, daemon):
    m = markers()
    ok(agent.run(agent.task(["sh", "-c", daemon(m)])))
    took = assert_gone([m], 3, "its task ended")
    print(f"daemon gone {took:.3f} s after its task's end")


def test_escaped_processes_live_as_long_as_their_task_and_die_on_cancel(agent, tmp_path, markers, daemon):
    """Adopted while their task runs (other tasks end meanwhile), they are left alone; the
    cancel of their task kills them."""
    m1, m2 = markers(), markers()
    _start_running_task(agent, tmp_path, f"{setsid_escape(m1)}; {daemon(m2)} > /dev/null")
    for tid in range(10, 20):  # task ends: the agent looks for adopted processes
        ok(agent.run(agent.task(["/bin/true"]), tid=tid))
    time.sleep(0.3)
    assert len(marked(m1, m2)) == 2, "an escaped process of a running task was killed"
    agent.send(["cancel", 1, 5.0])
    d = agent.done(1)
    assert d["reason"] == "canceled"
    took = assert_gone([m1, m2], 3, "their task was cancelled")
    print(f"escaped processes gone {took:.3f} s after the cancel")


def test_adopted_processes_that_end_are_reaped(agent, tmp_path, markers, daemon):
    short = markers(0)  # sleeps well under a second
    out = tmp_path / "daemon.pid"
    _start_running_task(agent, tmp_path, f"{daemon(short)} > {out}")
    pid = int(read(out))
    me = psutil.Process(agent.proc.pid)
    assert psutil.Process(pid).ppid() == agent.proc.pid, "the agent did not adopt the orphan"
    ok(agent.run(agent.task(["/bin/true"]), tid=2))
    assert wait_until(lambda: not psutil.pid_exists(pid), 5), "an adopted process that ended was not reaped"
    assert not [c for c in me.children() if c.status() == psutil.STATUS_ZOMBIE]
    agent.send(["ping", "alive"])
    assert agent.expect("pong")[1] == "alive"


def test_the_proc_scan_finds_the_same_children_as_the_kernel_list():
    """Where the kernel has no /proc/<pid>/task/<pid>/children, the agent scans /proc instead."""
    from qcg_hier_agent import agent as agent_module

    kids = [subprocess.Popen(["sleep", "30"]) for _ in range(3)]
    try:
        listed = open(f"/proc/{os.getpid()}/task/{os.getpid()}/children", "rb").read()
        scanned = agent_module._children_by_scan(os.getpid())
        assert sorted(scanned.split()) == sorted(listed.split())
        assert {int(p) for p in scanned.split()} >= {k.pid for k in kids}
    finally:
        for k in kids:
            k.kill()
            k.wait()


# --------------------------------------------------------------------- the agent's end


def test_exit_kills_escaped_processes(agent, tmp_path, markers, daemon):
    m1, m2 = markers(), markers()
    _start_running_task(agent, tmp_path, f"{setsid_escape(m1)}; {daemon(m2)} > /dev/null")
    agent.send(["exit"])
    agent.expect("bye")
    assert agent.proc.wait(10) == 0
    took = assert_gone([m1, m2], 3, "the agent was told to exit")
    print(f"escaped processes gone {took:.3f} s after exit")


def test_sigkill_of_the_agent_kills_escaped_processes(agent, tmp_path, markers, daemon):
    """The watchdog finds them by the marker in their environment, wherever they went; those with
    an emptied environment as descendants of a task, or as processes the agent adopted."""
    m1, m2, m3, m4 = markers(), markers(), markers(), markers()
    _start_running_task(agent, tmp_path, f"{setsid_escape(m1)}; {daemon(m2)} > /dev/null")
    _start_running_task(agent, tmp_path, f"env -i {setsid_escape(m3)}; env -i {daemon(m4)} > /dev/null", tid=2)
    ok(agent.run(agent.task(["/bin/true"]), tid=3))  # a task's end: the agent looks at what it adopted
    assert len(marked(m1, m2, m3, m4)) == 4
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait(5)
    took = assert_gone([m1, m2, m3, m4], 15, "kill -9 of the agent")
    print(f"escaped processes gone {took:.3f} s after kill -9 of the agent")


# --------------------------------------------------------------------- through the service (local mode)


def _escaping_service(tmp_path, background, markers, daemon):
    """A service running one task whose escaped processes run on (`sleep m1`, `sleep m2`) and one
    whose escaped process must die with it (`sleep m3`). A task run again (its agent lost) ends at once."""
    m1, m2, m3 = markers(), markers(), markers()
    wd = tmp_path / "wd"
    jobs = [{"name": "runs", "execution": {"script": f"[ -e once ] && exit 0; touch once; {setsid_escape(m1)}; "
                                                     f"{daemon(m2)} > /dev/null; touch ready; sleep 100"}},
            {"name": "ends", "execution": {"script": f"{setsid_escape(m3)}; touch ended"}}]
    run = start_service(wd, [{"request": "submit", "jobs": jobs}], nodes="2")
    background.append(run)
    if not wait_for(lambda: ((wd / "ready").exists() and (wd / "ended").exists()) or run.proc.poll() is not None, 30):
        pytest.fail("the tasks did not start within 30 s\n" + run.describe())
    assert run.proc.poll() is None, "the service ended early\n" + finish_background(run).describe()
    assert_gone([m3], 5, "its task ended")
    assert len(marked(m1, m2)) == 2
    return run, [m1, m2]


@pytest.mark.slow
def test_sigkill_of_the_service_kills_escaped_processes(tmp_path, background, markers, daemon):
    run, left = _escaping_service(tmp_path, background, markers, daemon)
    os.kill(run.proc.pid, signal.SIGKILL)  # the service only, not its process group
    finish_background(run, timeout=10)
    took = assert_gone(left, 15, "kill -9 of the service")
    assert wait_for(lambda: not leftover_processes(run.sdir), 5), "the node agent outlived its service"
    print(f"escaped processes gone {took:.3f} s after kill -9 of the service")


@pytest.mark.slow
def test_sigkill_of_a_local_agent_kills_escaped_processes(tmp_path, background, markers, daemon):
    run, left = _escaping_service(tmp_path, background, markers, daemon)
    agents = [p for p in leftover_processes(run.sdir) if p.ppid() == run.proc.pid]  # not their watchdogs
    assert len(agents) == 1, [p.info["cmdline"] for p in leftover_processes(run.sdir)]
    agents[0].kill()
    took = assert_gone(left, 15, "kill -9 of the agent")
    print(f"escaped processes gone {took:.3f} s after kill -9 of the agent")
