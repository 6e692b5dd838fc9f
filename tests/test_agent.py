"""Tests of the node-local launcher agent (``python -m qcg_hier_agent``).

Every test starts a real agent process against a zmq ROUTER bound here on a
random local port and drives it with protocol frames.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

import orjson
import psutil
import pytest
import zmq

AGENT_CMD = [sys.executable, "-m", "qcg_hier_agent"]
DONE_FIELDS = ("kind", "tid", "pid", "rc", "start", "end", "cpu", "maxrss_kb", "reason", "error")
WAIT = 10.0  # generous timeout for anything that should happen "soon"


def done_dict(msg):
    assert msg[0] == "done" and len(msg) == len(DONE_FIELDS), msg
    return dict(zip(DONE_FIELDS, msg, strict=True))


def wait_until(pred, timeout=WAIT, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    return pred()


def pid_gone(pid):
    """True when the process no longer exists (or is only a zombie)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Manager:
    """A minimal manager: a ROUTER socket driving one agent process."""

    def __init__(self, tmp_path, curve_secret=None):
        self.tmp_path = tmp_path
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve_secret is not None:
            self.sock.setsockopt(zmq.CURVE_SERVER, 1)
            self.sock.setsockopt(zmq.CURVE_SECRETKEY, curve_secret)
        self.sock.bind("tcp://127.0.0.1:*")
        self.addr = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.proc = None
        self.node = None
        self.inbox = []
        self.ready = None

    # -- agent process
    def start(self, *extra, node="node-1", env=None, manager_timeout=30.0, expect_ready=True):
        self.node = node
        args = [*AGENT_CMD, "--manager", self.addr, "--node", node,
                "--manager-timeout", str(manager_timeout), *extra]
        self.log_path = self.tmp_path / f"agent-{node}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=env, cwd=self.tmp_path)
        if expect_ready:
            self.ready = self.expect("ready")
        return self.proc

    def close(self, graceful=True):
        if self.proc is not None and self.proc.poll() is None and graceful:
            try:
                self.send(["exit"])
                self.proc.wait(3)
            except Exception:
                pass
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.sock.close(0)
        self.ctx.term()

    # -- messages
    def send(self, *msgs):
        self.sock.send_multipart([self.node.encode(), orjson.dumps(list(msgs))])

    def _receive(self, timeout):
        if not self.sock.poll(max(0, int(timeout * 1000))):
            return False
        ident, frame = self.sock.recv_multipart()
        assert ident == self.node.encode()
        msgs = orjson.loads(frame)
        assert isinstance(msgs, list) and all(isinstance(m, list) for m in msgs), msgs
        self.inbox.extend(msgs)
        return True

    def wait_for(self, pred, timeout=WAIT, what="message"):
        deadline = time.monotonic() + timeout
        while True:
            for i, m in enumerate(self.inbox):
                if pred(m):
                    return self.inbox.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} within {timeout} s; got {self.inbox[-20:]}")
            self._receive(left)

    def expect(self, kind, timeout=WAIT):
        return self.wait_for(lambda m: m[0] == kind, timeout, what=repr(kind))

    def done(self, tid, timeout=WAIT):
        return done_dict(self.wait_for(lambda m: m[0] == "done" and m[1] == tid, timeout,
                                       what=f"done of task {tid}"))

    def run(self, spec, tid=1, timeout=WAIT):
        self.send(["run", tid, spec])
        return self.done(tid, timeout)

    def task(self, argv, **kw):
        spec = {"argv": argv, "wd": str(self.tmp_path)}
        spec.update(kw)
        return spec


@pytest.fixture
def mgr(tmp_path):
    m = Manager(tmp_path)
    yield m
    m.close()


@pytest.fixture
def agent(mgr):
    """A manager with a running agent."""
    mgr.start()
    return mgr


def read(path):
    with open(path) as f:
        return f.read()


def ok(done):
    assert done["rc"] == 0 and done["error"] is None and done["reason"] is None, done
    return done


# --------------------------------------------------------------------- basics


def test_ready_message(agent):
    info = agent.ready[1]
    assert info["node"] == "node-1"
    assert info["pid"] == agent.proc.pid
    assert info["host"] == socket.gethostname()
    assert info["cpus"] == sorted(os.sched_getaffinity(0))


def test_true_and_exit_code(agent):
    before = time.time()
    d = ok(agent.run(agent.task(["/bin/true"]), tid=1))
    assert d["pid"] > 0 and d["pid"] != agent.proc.pid
    assert before - 1 <= d["start"] <= d["end"] <= time.time() + 1
    assert isinstance(d["cpu"], float) and d["cpu"] >= 0
    d = agent.run(agent.task(["sh", "-c", "exit 3"]), tid=2)
    assert d["rc"] == 3 and d["pid"] > 0 and d["error"] is None and d["reason"] is None


def test_killed_by_signal_rc_negative(agent):
    d = agent.run(agent.task(["sh", "-c", "kill -USR1 $$"]))
    assert d["rc"] == -signal.SIGUSR1 and d["reason"] is None


def test_redirections(agent, tmp_path):
    (tmp_path / "in.txt").write_text("hello from stdin\n")
    spec = agent.task(["sh", "-c", "cat; echo to-err >&2"], stdin=str(tmp_path / "in.txt"),
                      stdout=str(tmp_path / "out.txt"), stderr=str(tmp_path / "err.txt"))
    ok(agent.run(spec, tid=1))
    assert read(tmp_path / "out.txt") == "hello from stdin\n"
    assert read(tmp_path / "err.txt") == "to-err\n"

    # same file for stdout and stderr: shared descriptor, nothing overwritten;
    # an existing file is truncated
    (tmp_path / "both.txt").write_text("old content that must disappear\n" * 10)
    spec = agent.task(["sh", "-c", "echo one; echo two >&2; echo three"],
                      stdout=str(tmp_path / "both.txt"), stderr=str(tmp_path / "both.txt"))
    ok(agent.run(spec, tid=2))
    assert read(tmp_path / "both.txt") == "one\ntwo\nthree\n"
    assert (tmp_path / "both.txt").stat().st_mode & 0o777 == 0o644 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_default_stdio_is_devnull(agent, tmp_path):
    out = tmp_path / "links.txt"
    code = ("import os,sys; open(sys.argv[1],'w').write(' '.join("
            "os.readlink('/proc/self/fd/%d' % i) for i in range(3)))")
    ok(agent.run(agent.task([sys.executable, "-c", code, str(out)])))
    assert read(out) == "/dev/null /dev/null /dev/null"


def test_no_descriptor_leak_and_clean_signal_state(agent, tmp_path):
    # only 0, 1, 2 (+ the descriptor used by listdir itself)
    code = "import os; print(sorted(int(x) for x in os.listdir('/proc/self/fd')))"
    ok(agent.run(agent.task([sys.executable, "-c", code], stdout=str(tmp_path / "fds.txt")), tid=1))
    assert json.loads(read(tmp_path / "fds.txt")) == [0, 1, 2, 3]
    # no blocked and no ignored signals leak from the agent into tasks
    ok(agent.run(agent.task(["cat", "/proc/self/status"], stdout=str(tmp_path / "st.txt")), tid=2))
    status = dict(line.split(":\t", 1) for line in read(tmp_path / "st.txt").splitlines() if ":\t" in line)
    assert int(status["SigBlk"], 16) == 0
    # (glibc's posix_spawn leaves its internal signals 32 and 33 ignored: not ours to fix)
    assert int(status["SigIgn"], 16) & 0x7FFFFFFF == 0


def test_environment(mgr, tmp_path):
    env = dict(os.environ, QCG_T_BASE="base", QCG_T_DROP="drop", QCG_T_OVER="agent")
    mgr.start(env=env)
    script = 'echo "$QCG_T_BASE|${QCG_T_DROP-unset}|$QCG_T_OVER|${QCG_T_NEW-unset}|${QCG_T_TASK-unset}"'
    mgr.send(["env", {"QCG_T_NEW": "new", "QCG_T_OVER": "manager", "QCG_T_GONE": None}])
    spec = mgr.task(["sh", "-c", script], stdout=str(tmp_path / "1.txt"),
                    env={"QCG_T_TASK": "task", "QCG_T_DROP": None})
    ok(mgr.run(spec, tid=1))
    assert read(tmp_path / "1.txt") == "base|unset|manager|new|task\n"
    # the task delta does not stick to the base environment
    ok(mgr.run(mgr.task(["sh", "-c", script], stdout=str(tmp_path / "2.txt")), tid=2))
    assert read(tmp_path / "2.txt") == "base|drop|manager|new|unset\n"
    # a later env update is seen by a task with the same delta as before
    mgr.send(["env", {"QCG_T_BASE": None}])
    spec["stdout"] = str(tmp_path / "3.txt")
    ok(mgr.run(spec, tid=3))
    assert read(tmp_path / "3.txt") == "|unset|manager|new|task\n"


def test_per_task_environment_wins_and_does_not_stick(mgr, tmp_path):
    mgr.start(env=dict(os.environ, QCG_T_BASE="base"))
    script = 'echo "$QCG_T_BASE|$QCG_T_JOB|${QCG_T_TASK-unset}"'
    shared = {"QCG_T_JOB": "job", "QCG_T_BASE": "job-base"}
    for tid, own in ((1, {"QCG_T_TASK": "one"}), (2, {"QCG_T_TASK": "two", "QCG_T_JOB": "task-job"}), (3, None)):
        spec = mgr.task(["sh", "-c", script], stdout=str(tmp_path / f"{tid}.txt"), env=shared)
        if own:
            spec["tenv"] = own
        ok(mgr.run(spec, tid=tid))
    assert [read(tmp_path / f"{tid}.txt") for tid in (1, 2, 3)] == [
        "job-base|job|one\n", "job-base|task-job|two\n", "job-base|job|unset\n"]


def test_path_search_uses_task_path(agent, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    prog = bindir / "qcg-test-prog"
    prog.write_text("#!/bin/sh\necho found \"$@\"\n")
    prog.chmod(0o755)
    spec = agent.task(["qcg-test-prog", "x"], stdout=str(tmp_path / "o.txt"),
                      env={"PATH": f"{bindir}:/usr/bin:/bin"})
    ok(agent.run(spec))
    assert read(tmp_path / "o.txt") == "found x\n"


def test_working_directory_created(agent, tmp_path):
    wd = tmp_path / "a" / "b" / "c"
    ok(agent.run({"argv": ["sh", "-c", "pwd > here.txt"], "wd": str(wd)}))
    assert read(wd / "here.txt").strip() == str(wd)


def test_working_directory_error(agent):
    d = agent.run({"argv": ["/bin/true"], "wd": "/proc/qcg-no-such-dir/x"})
    assert d["rc"] is None and d["pid"] == 0
    assert "cannot create working directory '/proc/qcg-no-such-dir/x'" in d["error"]


def test_missing_executable(agent):
    d = agent.run(agent.task(["qcg-no-such-program", "arg"]), tid=1)
    assert d["rc"] is None and d["pid"] == 0 and d["reason"] is None
    assert d["error"] == "cannot execute 'qcg-no-such-program': No such file or directory"
    d = agent.run(agent.task(["/nonexistent/prog"]), tid=2)
    assert d["rc"] is None and "'/nonexistent/prog'" in d["error"]
    # the agent keeps working
    ok(agent.run(agent.task(["/bin/true"]), tid=3))


def test_stdout_in_missing_directory(agent, tmp_path):
    path = str(tmp_path / "missing" / "out.txt")
    d = agent.run(agent.task(["/bin/true"], stdout=path))
    assert d["rc"] is None and d["pid"] == 0
    assert d["error"] == f"cannot open stdout '{path}': No such file or directory"


def test_invalid_spec_reported(agent):
    agent.send(["run", 1, {"wd": "/tmp"}], ["run", 2, {"argv": [], "wd": "/tmp"}])
    for tid in (1, 2):
        d = agent.done(tid)
        assert d["rc"] is None and "invalid task specification" in d["error"]


def test_malformed_input_does_not_kill_agent(agent):
    agent.sock.send_multipart([agent.node.encode(), b"not json at all"])
    agent.sock.send_multipart([agent.node.encode(), b'{"a": 1}'])
    agent.send(["run"], [1, 2], "nokind", ["no-such-kind", 1], ["cancel"], ["env", 5], ["run", 5])
    d = agent.done(5)
    assert d["rc"] is None and "invalid task specification" in d["error"]
    agent.send(["ping", "ok"])
    assert agent.expect("pong")[1] == "ok"
    ok(agent.run(agent.task(["/bin/true"]), tid=6))
    assert agent.proc.poll() is None


def test_agent_import_is_light():
    code = "import sys, qcg_hier_agent.agent; print(sorted(m for m in sys.modules if m.startswith('qcg_hier')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.replace("'", '"')) == ["qcg_hier_agent", "qcg_hier_agent.agent"]


# --------------------------------------------------------------------- timing, signals


def test_walltime(agent):
    d = agent.run(agent.task(["sleep", "30"], wt=0.5))
    assert d["reason"] == "walltime"
    assert d["rc"] == -signal.SIGTERM
    assert d["error"] == "wall time 0.5s exceeded: killed"
    assert 0.4 <= d["end"] - d["start"] < 5


def test_walltime_grace_then_sigkill(agent):
    spec = agent.task(["bash", "-c", "trap '' TERM; sleep 30"], wt=1.5, grace=0.5)
    d = agent.run(spec)
    assert d["reason"] == "walltime" and d["rc"] == -signal.SIGKILL
    assert 1.9 <= d["end"] - d["start"] < 6


def test_cancel(agent):
    agent.send(["run", 1, agent.task(["sleep", "30"])])
    time.sleep(0.2)
    agent.send(["cancel", 1, 5.0])
    d = agent.done(1)
    assert d["reason"] == "canceled" and d["rc"] == -signal.SIGTERM and d["error"] is None
    assert d["end"] - d["start"] < 5
    # unknown / finished task ids are ignored
    agent.send(["cancel", 1, 1.0], ["cancel", 12345, 1.0], ["ping", "still-alive"])
    assert agent.expect("pong")[1] == "still-alive"


def test_cancel_grace_then_sigkill(agent, tmp_path):
    flag = tmp_path / "ready.txt"
    agent.send(["run", 1, agent.task(["bash", "-c", "trap '' TERM; echo ready; sleep 30"], stdout=str(flag))])
    assert wait_until(lambda: flag.exists() and read(flag) == "ready\n")
    t0 = time.time()
    agent.send(["cancel", 1, 0.5])
    d = agent.done(1)
    assert d["reason"] == "canceled" and d["rc"] == -signal.SIGKILL
    assert 0.4 <= d["end"] - t0 < 5


def test_cpu_binding(agent, tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    code = "import os; print(sorted(os.sched_getaffinity(0)))"
    specs = {1: [cpus[0]], 2: [cpus[-1]], 3: None, 5: cpus}
    agent.send(*[["run", tid, agent.task([sys.executable, "-c", code], stdout=str(tmp_path / f"{tid}.txt"),
                                         cpus=c)] for tid, c in specs.items()])
    for tid, c in specs.items():
        ok(agent.done(tid))
        assert json.loads(read(tmp_path / f"{tid}.txt")) == (c if c is not None else cpus)
    d = agent.run(agent.task(["/bin/true"], cpus=[100000]), tid=4)
    assert d["rc"] is None and d["error"].startswith("cannot bind to CPUs [100000]")
    # the agent's own mask is unchanged
    assert psutil.Process(agent.proc.pid).cpu_affinity() == cpus


def test_own_process_group(agent, tmp_path):
    code = "import os; print(os.getpgid(0) == os.getpid(), os.getpgid(0) != os.getpgid(os.getppid()))"
    ok(agent.run(agent.task([sys.executable, "-c", code], stdout=str(tmp_path / "pg.txt"))))
    assert read(tmp_path / "pg.txt") == "True True\n"


def test_background_child_killed(agent, tmp_path):
    ok(agent.run(agent.task(["sh", "-c", "sleep 100 & echo $!"], stdout=str(tmp_path / "bg.txt"))))
    pid = int(read(tmp_path / "bg.txt"))
    assert wait_until(lambda: pid_gone(pid), 5), f"background process {pid} survived its task"


def test_rusage(agent):
    code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.25: pass"
    d = ok(agent.run(agent.task([sys.executable, "-c", code])))
    assert d["cpu"] >= 0.1
    assert isinstance(d["maxrss_kb"], int) and d["maxrss_kb"] > 0


def test_batch_of_500(agent):
    spec = agent.task(["/bin/true"])
    agent.send(*[["run", tid, spec] for tid in range(500)])
    pids = set()
    for tid in range(500):
        d = ok(agent.done(tid, timeout=30))
        pids.add(d["pid"])
    assert len(pids) == 500


# --------------------------------------------------------------------- liveness


def test_ping_pong(agent):
    agent.send(["ping", 1], ["ping", {"x": [1, 2]}])
    assert agent.expect("pong")[1] == 1
    assert agent.expect("pong")[1] == {"x": [1, 2]}


def test_heartbeat_when_idle(mgr):
    mgr.start("--heartbeat-interval", "0.2")
    t0 = time.time()
    hb1 = mgr.expect("hb", timeout=5)
    hb2 = mgr.expect("hb", timeout=5)
    assert isinstance(hb1[1], float) and t0 - 1 <= hb1[1] <= hb2[1] <= time.time() + 1


def _start_sleeper(mgr, tmp_path, tid=1):
    out = tmp_path / f"sleeper{tid}.txt"
    mgr.send(["run", tid, mgr.task(["sh", "-c", "echo $$; exec sleep 100"], stdout=str(out))])
    assert wait_until(lambda: out.exists() and read(out).strip())
    pid = int(read(out))
    assert psutil.pid_exists(pid)
    return pid


def test_a_silent_manager_whose_connection_is_up_is_waited_for(mgr, tmp_path):
    """A manager that is stopped or busy keeps its connection: the agent must not kill its tasks
    (they would run twice) however long the silence."""
    log_path = tmp_path / "agent-silent.log"
    mgr.start("--log-file", str(log_path), manager_timeout=1.5)
    pid = _start_sleeper(mgr, tmp_path)
    time.sleep(5)  # more than three timeouts
    assert mgr.proc.poll() is None and psutil.pid_exists(pid)
    assert "its connection is up: waiting" in log_path.read_text()
    mgr.send(["ping", 1])
    assert mgr.expect("pong")[1] == 1


def test_a_manager_whose_connection_is_gone_makes_the_agent_kill_its_tasks_and_exit(mgr, tmp_path):
    mgr.start(manager_timeout=1.5)
    pid = _start_sleeper(mgr, tmp_path)
    t0 = time.monotonic()
    mgr.sock.close(0)  # the manager's end goes, as when its process dies
    assert mgr.proc.wait(WAIT) == 3
    assert time.monotonic() - t0 < 5
    assert pid_gone(pid)


def test_pings_keep_agent_alive(mgr):
    mgr.start("--heartbeat-interval", "0.2", manager_timeout=1.5)
    for i in range(8):
        mgr.send(["ping", i])
        assert mgr.expect("pong")[1] == i
        time.sleep(0.25)
    assert mgr.proc.poll() is None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_kills_tasks(mgr, tmp_path, sig):
    mgr.start()
    pid = _start_sleeper(mgr, tmp_path)
    mgr.proc.send_signal(sig)
    assert mgr.proc.wait(WAIT) == 0
    assert pid_gone(pid)
    d = mgr.done(1)
    assert d["reason"] == "canceled" and d["rc"] == -signal.SIGKILL


def test_exit_message(agent, tmp_path):
    pid = _start_sleeper(agent, tmp_path, tid=7)
    agent.send(["exit"])
    d = agent.done(7)
    assert d["reason"] == "canceled" and d["rc"] == -signal.SIGKILL and d["pid"] == pid
    assert agent.expect("bye")[1] == "node-1"
    assert agent.proc.wait(WAIT) == 0
    assert pid_gone(pid)


def test_parent_death_signal(mgr, tmp_path):
    """With --parent-death-signal the agent goes away (killing its tasks) with its parent."""
    launcher = ("import subprocess, sys, time\n"
                "p = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)\n"
                "print(p.pid, flush=True)\n"
                "time.sleep(60)\n")
    mgr.node = "orphan"
    parent = subprocess.Popen([sys.executable, "-c", launcher, *AGENT_CMD, "--manager", mgr.addr,
                               "--node", "orphan", "--parent-death-signal"],
                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        agent_pid = int(parent.stdout.readline())
        mgr.expect("ready")
        task_pid = _start_sleeper(mgr, tmp_path)
        parent.kill()
        parent.wait()
        d = mgr.done(1)
        assert d["reason"] == "canceled" and d["pid"] == task_pid
        assert mgr.expect("bye")[1] == "orphan"
        assert wait_until(lambda: pid_gone(agent_pid) and pid_gone(task_pid), 5)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()


def test_log_file(mgr, tmp_path):
    log_path = tmp_path / "logs" / "agent.log"
    log_path.parent.mkdir()
    mgr.start("--log-file", str(log_path), "--log-level", "debug", node="logged")
    code = "import os; print(sorted(int(x) for x in os.listdir('/proc/self/fd')))"
    ok(mgr.run(mgr.task([sys.executable, "-c", code], stdout=str(tmp_path / "fds.txt"))))
    assert json.loads(read(tmp_path / "fds.txt")) == [0, 1, 2, 3]  # the log file does not leak
    mgr.send(["exit"])
    mgr.expect("bye")
    assert mgr.proc.wait(WAIT) == 0
    text = read(log_path)
    assert "logged" in text and "exit requested" in text


def _ready_then_exit(router, proc, node: str) -> None:
    """The agent `node` says ready, is told to exit, says bye and exits 0; whatever happens, the
    agent and the router are gone afterwards."""
    try:
        assert router.poll(WAIT * 1000)
        ident, frame = router.recv_multipart()
        assert ident == node.encode() and orjson.loads(frame)[0][0] == "ready"
        router.send_multipart([ident, orjson.dumps([["exit"]])])
        assert orjson.loads(router.recv_multipart()[1]) == [["bye", node]]
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        router.close(0)


def test_ipc_transport(tmp_path):
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    addr = f"ipc://{tmp_path}/mgr.sock"
    router.bind(addr)
    proc = subprocess.Popen([*AGENT_CMD, "--manager", addr, "--node", "ipc-node"], stdin=subprocess.DEVNULL)
    _ready_then_exit(router, proc, "ipc-node")
    ctx.term()


# --------------------------------------------------------------------- over its stdin and stdout


class PipeManager:
    """A manager that is the agent's parent, talking over its stdin/stdout (`--manager stdio`):
    each frame after its length, 4 bytes big-endian."""

    def __init__(self, tmp_path):
        self.log = tmp_path / "agent-stdio.log"
        self.proc = subprocess.Popen([*AGENT_CMD, "--manager", "stdio", "--node", "pipe-node",
                                      "--log-file", str(self.log)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.received = b""

    def send(self, *msgs):
        frame = orjson.dumps(list(msgs))
        self.proc.stdin.write(len(frame).to_bytes(4, "big") + frame)
        self.proc.stdin.flush()

    def _read(self, size, deadline):
        """`size` bytes from the agent's stdout; None at its end; an error past the deadline."""
        fd = self.proc.stdout.fileno()
        while len(self.received) < size:
            left = deadline - time.monotonic()
            assert left > 0 and select.select([fd], [], [], left)[0], "the agent sent nothing in time"
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self.received += chunk
        data, self.received = self.received[:size], self.received[size:]
        return data

    def _read_frame(self, deadline):
        head = self._read(4, deadline)
        body = head and self._read(int.from_bytes(head, "big"), deadline)
        return None if body is None else orjson.loads(body)

    def expect(self, kind, count=1, timeout=WAIT):
        deadline = time.monotonic() + timeout
        found = []
        while len(found) < count:
            msgs = self._read_frame(deadline)
            assert msgs is not None, f"the agent closed its stdout before {count} {kind!r}: {found}"
            found += [m for m in msgs if m[0] == kind]
        return found

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def piped(tmp_path):
    m = PipeManager(tmp_path)
    yield m
    m.close()


def test_stdio_link(piped, tmp_path):
    ready = piped.expect("ready")[0][1]
    assert ready["node"] == "pipe-node"
    piped.send(["run", 1, {"argv": ["/bin/true"], "wd": str(tmp_path)}],
               ["run", 2, {"argv": ["/bin/sh", "-c", "exit 3"], "wd": str(tmp_path)}])
    done = {d["tid"]: d for d in map(done_dict, piped.expect("done", 2))}
    assert done[1]["rc"] == 0 and done[2]["rc"] == 3
    piped.send(["exit"])
    assert piped.expect("bye") == [["bye", "pipe-node"]]
    assert piped.proc.wait(WAIT) == 0


def test_stdio_link_frames_larger_than_a_pipe(piped, tmp_path):
    """A batch bigger than the pipe's buffer arrives whole (the agent reads frames in pieces)."""
    piped.expect("ready")
    pad = "x" * 600
    runs = [["run", i, {"argv": ["/bin/true", pad], "wd": str(tmp_path)}] for i in range(400)]
    piped.send(*runs)  # about 270 kB in one frame
    done = [done_dict(d) for d in piped.expect("done", 400)]
    assert sorted(d["tid"] for d in done) == list(range(400)) and {d["rc"] for d in done} == {0}


def test_stdio_link_closed_kills_tasks_and_exits(piped, tmp_path):
    piped.expect("ready")
    piped.send(["run", 1, {"argv": ["/bin/sleep", "60"], "wd": str(tmp_path)}])
    sleeper = wait_until(lambda: [p for p in psutil.Process(piped.proc.pid).children() if p.name() == "sleep"])
    assert sleeper
    piped.proc.stdin.close()  # the manager is gone
    assert piped.proc.wait(WAIT) == 3
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in sleeper)
    assert "closed its pipe" in piped.log.read_text()


# --------------------------------------------------------------------- started ahead of its manager


def test_options_from_stdin(tmp_path):
    """An agent started with --config-from-stdin waits for its options on stdin, then serves."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    proc = subprocess.Popen([*AGENT_CMD, "--config-from-stdin"], stdin=subprocess.PIPE)
    try:
        time.sleep(0.3)
        assert proc.poll() is None, "the agent did not wait for its options"
        assert not router.poll(0)
        proc.stdin.write(orjson.dumps(["--manager", f"tcp://127.0.0.1:{port}", "--node", "ahead"]) + b"\n")
        proc.stdin.close()
    finally:
        _ready_then_exit(router, proc, "ahead")
        ctx.term()


def test_options_from_stdin_end_of_file_exits_quietly():
    out = subprocess.run([*AGENT_CMD, "--config-from-stdin"], stdin=subprocess.DEVNULL, capture_output=True,
                         text=True, timeout=WAIT)
    assert out.returncode == 0 and out.stderr == ""


def test_options_from_stdin_not_a_list_is_an_error():
    out = subprocess.run([*AGENT_CMD, "--config-from-stdin"], input=b'{"manager": "x"}\n', capture_output=True,
                         timeout=WAIT)
    assert out.returncode != 0 and b"expected a JSON list of arguments" in out.stderr


# --------------------------------------------------------------------- CURVE


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")
def test_curve_connection(tmp_path):
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    keys = tmp_path / "agent-keys.json"
    keys.write_text(json.dumps({"public": client_public.decode(), "secret": client_secret.decode()}))
    m = Manager(tmp_path, curve_secret=server_secret)
    try:
        # `=`: a Z85 key begins with '-' once in 85 runs, and would then read as an option (flaky)
        m.start(f"--curve-server-key={server_public.decode()}", "--curve-keys-file", str(keys))
        assert m.ready[1]["node"] == "node-1"
        ok(m.run(m.task(["/bin/true"])))
    finally:
        m.close()


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")
def test_plain_agent_cannot_talk_to_curve_server(tmp_path):
    _, server_secret = zmq.curve_keypair()
    m = Manager(tmp_path, curve_secret=server_secret)
    try:
        m.start(expect_ready=False)
        assert not m.sock.poll(1000), "a plain agent got through to a CURVE server"
    finally:
        m.close(graceful=False)


def test_tasks_die_with_the_agent_even_on_kill_9(tmp_path):
    """The agent's watchdog kills every task process group when the agent is SIGKILLed."""
    import signal as _signal
    import subprocess as _subprocess
    import sys as _sys
    import time as _time

    import zmq as _zmq
    ctx = _zmq.Context.instance()
    router = ctx.socket(_zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    agent = _subprocess.Popen([_sys.executable, "-m", "qcg_hier_agent", "--manager", f"tcp://127.0.0.1:{port}",
                               "--node", "w", "--manager-timeout", "60"])
    try:
        assert router.poll(10000)
        ident, _ = router.recv_multipart()
        pidfile = tmp_path / "pids"
        spec = {"argv": ["/bin/sh", "-c", f"echo $$ >> {pidfile}; sleep 100 & echo $! >> {pidfile}; wait"],
                "wd": str(tmp_path)}
        import orjson as _orjson
        router.send_multipart([ident, _orjson.dumps([["run", 1, spec]])])
        deadline = _time.time() + 10
        while (not pidfile.exists() or len(pidfile.read_text().split()) < 2) and _time.time() < deadline:
            _time.sleep(0.05)
        pids = [int(p) for p in pidfile.read_text().split()]
        agent.send_signal(_signal.SIGKILL)
        agent.wait(5)
        deadline = _time.time() + 5
        alive = pids
        while alive and _time.time() < deadline:
            alive = [p for p in pids if _alive(p)]
            _time.sleep(0.05)
        assert not alive, f"tasks {alive} outlived the agent"
    finally:
        if agent.poll() is None:
            agent.kill()
        router.close(0)


def _alive(pid: int) -> bool:
    import os as _os
    try:
        _os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its reaper is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
