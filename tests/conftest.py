"""Shared helpers for the black-box tests of `qcg-pm-service` in batch-file mode.

The service always runs as a separate process, in a temporary working directory,
with `--id test`, so its service directory is `<wd>/.qcgpjm-service-test/`.

* `run_service(wd, requests, ...)` writes the request file, runs the service to the
  end and returns a `ServiceRun` (exit code, output, elapsed time, and readers for
  `service.log`, `jobs.report` and `final_status.json`).
* `start_service(...)` starts it in the background (signal tests).
* `happy_run` is one session-wide run of ordinary jobs that several tests inspect.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
SERVICE_ID = "test"
SERVICE_DIR = f".qcgpjm-service-{SERVICE_ID}"

_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}: ")
_REPLY = re.compile(r"^file request (\d+) \(([^)]*)\): (\{.*\})$")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes several seconds or installs software (never skipped)")


# ---------------------------------------------------------------- the command
def service_command() -> list[str]:
    """Our console script of the interpreter running the tests (not some other one on PATH), under the
    name no other package owns: upstream's package installs a `qcg-pm-service` of its own."""
    sibling = Path(sys.executable).parent / "qcg-hier-service"
    if sibling.exists():
        return [str(sibling)]
    found = shutil.which("qcg-hier-service")
    if found:
        return [found]
    return [sys.executable, "-m", "qcg_hier"]


def service_env(extra: dict | None = None) -> dict:
    """The test's environment without any Slurm job variables (the service must run locally)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SRUN_", "SALLOC_", "SBATCH_"))}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if extra:
        env.update(extra)
    return env


# ---------------------------------------------------------------- results
@dataclass
class ServiceRun:
    wd: Path
    argv: list
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    elapsed: float = 0.0
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def sdir(self) -> Path:
        return self.wd / SERVICE_DIR

    # ----- service.log -----
    @property
    def log_text(self) -> str:
        path = self.sdir / "service.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_messages(self) -> list[str]:
        """The messages of service.log without their time stamps (continuation lines joined)."""
        out: list[str] = []
        for line in self.log_text.splitlines():
            m = _LOG_LINE.match(line)
            if m:
                out.append(line[m.end():])
            elif out:
                out[-1] += "\n" + line
        return out

    def replies(self) -> dict[int, tuple[str, dict]]:
        """{request number (1-based): (request name, reply)} from the `file request N (...)` log lines."""
        out = {}
        for msg in self.log_messages():
            m = _REPLY.match(msg)
            if m:
                out[int(m.group(1))] = (m.group(2), json.loads(m.group(3)))
        return out

    def reply(self, number: int) -> dict:
        replies = self.replies()
        assert number in replies, f"no reply to request {number} in service.log\n{self.describe()}"
        return replies[number][1]

    # ----- jobs.report -----
    @property
    def report_path(self) -> Path:
        return self.sdir / "jobs.report"

    def report_entries(self) -> list[dict]:
        assert self.report_path.exists(), f"no jobs.report\n{self.describe()}"
        entries = []
        for n, line in enumerate(self.report_path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    entries.append(json.loads(line))
                except ValueError as exc:
                    raise AssertionError(f"jobs.report line {n} is not JSON: {line!r}: {exc}") from None
        return entries

    def report(self, unique: bool = True) -> dict[str, dict]:
        """jobs.report as {name: entry}; a name reported twice is an error unless not `unique` (last wins)."""
        by_name: dict[str, dict] = {}
        for entry in self.report_entries():
            assert not unique or entry["name"] not in by_name, f"{entry['name']} reported twice in jobs.report"
            by_name[entry["name"]] = entry
        return by_name

    def final_status(self) -> dict:
        path = self.sdir / "final_status.json"
        assert path.exists(), f"no final_status.json\n{self.describe()}"
        return json.loads(path.read_text())

    # ----- diagnostics -----
    def describe(self, log_lines: int = 40) -> str:
        log = self.log_text.splitlines()
        return (f"command: {' '.join(map(str, self.argv))}\nexit code: {self.returncode}, {self.elapsed:.2f} s\n"
                f"--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}\n"
                f"--- service.log (last {log_lines} lines)\n" + "\n".join(x[:600] for x in log[-log_lines:]))


# ---------------------------------------------------------------- report helpers
def states(entry: dict) -> list[str]:
    return [h["state"] for h in entry["history"]]


def when(entry: dict, state: str) -> datetime:
    """The (first) time an entry entered `state`, from its history."""
    for h in entry["history"]:
        if h["state"] == state:
            return datetime.fromisoformat(h["date"])
    raise AssertionError(f"{entry['name']} never was {state}: {states(entry)}")


def iterations_of(report: dict, job: str) -> dict[int, dict]:
    return {int(name.rsplit(":", 1)[1]): e for name, e in report.items() if name.startswith(job + ":")}


def pid_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (a zombie has finished running)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def env_file(path: Path) -> dict:
    """NAME=value lines (as `env` or `printenv` writes them) into a dict."""
    env = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            env[key] = value
    return env


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def leftover_processes(where: Path) -> list[psutil.Process]:
    """Processes still running that name `where` in their argv: for a service directory its node
    agents (their log files are in it); for a working directory also the children started in it."""
    key = str(where)
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(key in arg for arg in proc.info["cmdline"] or ()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


# ---------------------------------------------------------------- running the service
def _write_requests(path: Path, requests) -> None:
    if isinstance(requests, (bytes, str)):
        path.write_bytes(requests.encode() if isinstance(requests, str) else requests)
    else:
        path.write_text(json.dumps(requests))


def _argv(req_file: Path, wd: Path, nodes: str | None, args) -> list[str]:
    argv = service_command() + ["--file-path", str(req_file), "--wd", str(wd), "--id", SERVICE_ID]
    if nodes:
        argv += ["--nodes", nodes]
    return argv + [str(a) for a in args]


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_service(wd: Path, requests, *, nodes: str | None = "2,2", args=(), timeout: float = 60,
                env: dict | None = None, expect_rc: int | None = 0, check_leftovers: bool = True) -> ServiceRun:
    """Run the service on a request list (or raw file text) until it exits."""
    wd = Path(wd)
    wd.mkdir(parents=True, exist_ok=True)
    req_file = wd.parent / f"{wd.name}-reqs.json"
    _write_requests(req_file, requests)
    run = ServiceRun(wd=wd, argv=_argv(req_file, wd, nodes, args))
    t0 = time.monotonic()
    proc = subprocess.Popen(run.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=service_env(env), cwd=wd.parent, start_new_session=True)
    try:
        run.stdout, run.stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        run.stdout, run.stderr = proc.communicate()
        run.returncode = proc.returncode
        run.elapsed = time.monotonic() - t0
        for p in leftover_processes(run.sdir):
            p.kill()
        pytest.fail(f"the service did not finish within {timeout} s\n{run.describe()}")
    run.elapsed = time.monotonic() - t0
    run.returncode = proc.returncode
    if expect_rc is not None and run.returncode != expect_rc:
        pytest.fail(f"the service exited {run.returncode}, expected {expect_rc}\n{run.describe()}")
    if check_leftovers:
        assert_no_leftovers(run.sdir, 5)  # the agents get a moment to go after the service has exited
    return run


def assert_no_leftovers(sdir: Path, grace: float) -> None:
    """Nothing of the service may still run `grace` seconds on; whatever does is killed, and fails the test."""
    wait_for(lambda: not leftover_processes(sdir), grace)
    left = leftover_processes(sdir)
    for p in left:
        p.kill()
    assert not left, f"processes left behind by the service: {[p.info['cmdline'] for p in left]}"


def start_service(wd: Path, requests, *, nodes: str | None = "2,2", args=(), env: dict | None = None) -> ServiceRun:
    """Start the service in the background; the caller waits for / signals `run.proc`."""
    wd = Path(wd)
    wd.mkdir(parents=True, exist_ok=True)
    req_file = wd.parent / f"{wd.name}-reqs.json"
    _write_requests(req_file, requests)
    run = ServiceRun(wd=wd, argv=_argv(req_file, wd, nodes, args))
    run.proc = subprocess.Popen(run.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=service_env(env), cwd=wd.parent, start_new_session=True)
    return run


def finish_background(run: ServiceRun, timeout: float = 30) -> ServiceRun:
    """Collect a background service's exit (killing it if it does not end in time)."""
    try:
        run.stdout, run.stderr = run.proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(run.proc)
        run.stdout, run.stderr = run.proc.communicate()
    run.returncode = run.proc.returncode
    return run


@pytest.fixture
def background():
    """Background services started by a test; whatever is still running at the end is killed."""
    started: list[ServiceRun] = []
    yield started
    for run in started:
        if run.proc is not None and run.proc.poll() is None:
            _kill_group(run.proc)
            run.proc.communicate()
        for p in leftover_processes(run.sdir):
            p.kill()


# ---------------------------------------------------------------- the session-wide ordinary run
HAPPY_STDIN = "line one\nline two\n"

HAPPY_JOBS = [
    {"name": "plain", "execution": {"exec": "/bin/echo", "args": ["plain", "ok"], "stdout": "plain.out"}},
    {"name": "iter", "iteration": {"start": 0, "stop": 3},
     "execution": {"script": 'sleep 0.2; echo "${it} ${itval} ${ncores} ${nnodes} ${nlist} ${root_wd} ${jname}"'
                             ' > iter_${it}.out'}},
    {"name": "vals", "iteration": {"values": ["alpha", "beta", "gamma"]},
     "execution": {"exec": "/bin/echo", "args": ["${itval}", "${it}"], "stdout": "vals_${it}.out"}},
    {"name": "wide", "resources": {"numCores": {"exact": 4}},
     "execution": {"script": 'echo "${ncores} ${nnodes} ${nlist}" > wide.vars; env > wide.env'}},
    {"name": "script",
     "execution": {"script": 'echo "home=$HOME" > script.out; echo "pid=$$" >> script.out; '
                             'echo "braced=${HOME}" >> script.out; x=5; echo "arith=$((x + 1))" >> script.out'}},
    {"name": "wdjob", "execution": {"script": "pwd > here.txt; echo in-wd", "wd": "sub/dir/deep", "stdout": "wd.out"}},
    {"name": "redir", "execution": {"exec": "cat", "stdin": "in.txt", "stdout": "cat.out", "stderr": "cat.err"}},
    {"name": "streams",
     "execution": {"script": "echo to-out; echo to-err >&2; cat", "stdin": "in.txt",
                   "stdout": "streams.out", "stderr": "streams.err"}},
    {"name": "merged",
     "execution": {"script": "echo to-out; echo to-err >&2", "stdout": "merged.txt", "stderr": "merged.txt"}},
    {"name": "envjob",
     "execution": {"exec": "env", "env": {"MY_VAR": "my value", "OTHER_VAR": "a=b"}, "stdout": "env1.out"}},
    {"name": "cpu2", "resources": {"numCores": 2, "numNodes": 1},  # 2 cores of one node: bound to 2 CPUs
     "execution": {"script": "env > cpu2.env; grep Cpus_allowed_list /proc/self/status > cpu2.aff"}},
    {"name": "dep_whole", "dependencies": {"after": ["iter"]}, "execution": {"exec": "/bin/true"}},
    {"name": "dep_one", "dependencies": {"after": ["iter:1"]}, "execution": {"exec": "/bin/true"}},
    {"name": "dep_perit", "iteration": {"stop": 3}, "dependencies": {"after": ["iter:${it}"]},
     "execution": {"exec": "/bin/true"}},
    {"name": "minmax", "resources": {"numCores": {"min": 1, "max": 3}},
     "execution": {"script": 'echo "${ncores} $QCG_PM_NPROCS" > minmax.out'}},
]


@pytest.fixture(scope="session")
def happy_run(tmp_path_factory) -> ServiceRun:
    base = tmp_path_factory.mktemp("happy")
    wd = base / "wd"
    wd.mkdir()
    (wd / "in.txt").write_text(HAPPY_STDIN)
    requests = [{"request": "submit", "jobs": HAPPY_JOBS},
                {"request": "control", "command": "finishAfterAllTasksDone"}]
    return run_service(wd, requests, nodes="2,2", timeout=60)
