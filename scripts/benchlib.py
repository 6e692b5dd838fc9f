"""Shared helpers for the qcg-hier benchmarks (scripts/bench_*.py).

Only the standard library, psutil and orjson are used.

The helpers here are deliberately generic so that other benchmarks (Slurm,
governor, ...) can reuse them:

* ``raw_spawn_rate``      - a raw posix_spawn/wait4 loop, the denominator
                            for all "tasks/s" ratios;
* ``resolve_service``     - turn a ``--service`` string into an argv;
* ``service_has_option``  - probe ``--help`` for an option (``--fake-launch``);
* ``temp_workdir``        - a fresh temporary working dir, removed afterwards;
* ``job`` / ``submit_req`` / ``finish_req`` / ``write_requests``
                          - request-file generation (file interface);
* ``run_service``         - run the service as a subprocess in its own
                            session, measure wall time, CPU (own and
                            including waited-for descendants), optionally
                            sample RSS, stop it on a condition, and make sure
                            that no process is left behind;
* ``read_final_status``   - the ``final_status.json`` the service wrote;
* ``fmt_*`` / ``Verdict`` - formatting helpers for result lines and tables.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional, Sequence

import orjson
import psutil

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# --------------------------------------------------------------------------
# process hygiene
# --------------------------------------------------------------------------

_PR_SET_CHILD_SUBREAPER = 36
_subreaper_done = False


def become_subreaper() -> bool:
    """Make this process a child subreaper (Linux), so that processes
    orphaned by a killed service are re-parented to us and can be found and
    killed by ``sweep_orphans``.  Returns True on success."""
    global _subreaper_done
    if _subreaper_done:
        return True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0:
            _subreaper_done = True
    except (OSError, AttributeError):
        pass
    return _subreaper_done


def reap_zombies() -> int:
    """Reap every already-exited child of ours without blocking."""
    n = 0
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return n
        if pid == 0:
            return n
        n += 1


def kill_tree(procs: Iterable[psutil.Process], grace: float = 2.0) -> None:
    """SIGTERM the given processes, wait up to ``grace`` s, then SIGKILL."""
    procs = [p for p in procs]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=grace)


def sweep_orphans(grace: float = 1.0, found: Optional[list] = None) -> int:
    """Kill every descendant of this process (as a subreaper those include
    orphans of a dead service) and reap them.  Returns how many live ones
    were found; their command lines are appended to ``found``."""
    try:
        kids = psutil.Process().children(recursive=True)
    except psutil.Error:
        kids = []
    live = []
    for k in kids:
        try:
            if k.status() == psutil.STATUS_ZOMBIE:
                continue
            if found is not None:
                found.append(" ".join(k.cmdline()) or k.name())
        except psutil.Error:
            continue
        live.append(k)
    if live:
        kill_tree(live, grace)
    reap_zombies()
    return len(live)


def kill_group(pgid: int, grace: float = 3.0) -> None:
    """SIGTERM a process group, then SIGKILL it after ``grace`` s if any
    member is still alive."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(0) succeeds while zombies remain in the group; check for a live
    # member explicitly.
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return False


# --------------------------------------------------------------------------
# raw baseline
# --------------------------------------------------------------------------


@dataclass
class RawResult:
    tasks: int
    inflight: int
    seconds: float
    failures: int
    own_cpu: float = float("nan")       # CPU s of the loop itself
    children_cpu: float = float("nan")  # CPU s of the spawned tasks

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds if self.seconds > 0 else float("nan")


def raw_spawn_rate(
    tasks: int = 20000,
    inflight: int = 32,
    argv: Sequence[str] = ("/bin/true",),
    env: Optional[dict] = None,
) -> RawResult:
    """Spawn ``argv`` ``tasks`` times with ``os.posix_spawn``, keeping
    ``inflight`` processes running, reaping with ``os.wait4``.

    This is the best a launcher in Python can hope for on this machine: the
    denominator of the service throughput ratios."""
    reap_zombies()
    env = dict(os.environ) if env is None else env
    path = argv[0]
    argv = list(argv)
    running: set[int] = set()
    started = 0
    done = 0
    failures = 0
    ru_self0 = resource.getrusage(resource.RUSAGE_SELF)
    ru_kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    while done < tasks:
        while started < tasks and len(running) < inflight:
            running.add(os.posix_spawn(path, argv, env))
            started += 1
        pid, status, _ru = os.wait4(-1, 0)
        if pid in running:
            running.discard(pid)
            done += 1
            if os.waitstatus_to_exitcode(status) != 0:
                failures += 1
    seconds = time.perf_counter() - t0
    ru_self1 = resource.getrusage(resource.RUSAGE_SELF)
    ru_kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)

    def cpu(a, b):
        return (b.ru_utime - a.ru_utime) + (b.ru_stime - a.ru_stime)

    return RawResult(tasks, inflight, seconds, failures,
                     cpu(ru_self0, ru_self1), cpu(ru_kids0, ru_kids1))


# --------------------------------------------------------------------------
# locating the service
# --------------------------------------------------------------------------


# our service command under the name no other package owns (upstream's installs its own qcg-pm-service)
OUR_COMMAND = "qcg-hier-service"


def our_service() -> list[str]:
    """Our service: the console script next to this interpreter, else the one on PATH, else -m."""
    sibling = os.path.join(os.path.dirname(sys.executable), OUR_COMMAND)
    found = sibling if os.path.exists(sibling) else shutil.which(OUR_COMMAND)
    return [found] if found else [sys.executable, "-m", "qcg_hier"]


def resolve_service(cmd: Optional[str], default: str = OUR_COMMAND) -> list[str]:
    """Return the argv prefix of the service command.

    ``cmd`` may hold several words (e.g. ``"python -m pkg.service"``).  When
    no command is given, ``default`` is looked up on PATH; a pyenv shim is
    resolved to the real script (the shim costs tens of ms per start)."""
    words = shlex.split(cmd) if cmd else [default]
    exe = words[0]
    found = shutil.which(exe)
    if found is None:
        raise FileNotFoundError(f"service command not found: {exe}")
    if "/.pyenv/shims/" in found:
        try:
            real = subprocess.run(
                ["pyenv", "which", os.path.basename(found)],
                capture_output=True, text=True, timeout=30, check=True,
            ).stdout.strip()
            if real and os.access(real, os.X_OK):
                found = real
        except (OSError, subprocess.SubprocessError):
            pass
    return [found] + words[1:]


_help_cache: dict[tuple, str] = {}


def service_help(service: Sequence[str], timeout: float = 60.0) -> str:
    key = tuple(service)
    if key not in _help_cache:
        try:
            res = subprocess.run(
                list(service) + ["--help"], capture_output=True, text=True,
                timeout=timeout, stdin=subprocess.DEVNULL,
            )
            _help_cache[key] = res.stdout + res.stderr
        except (OSError, subprocess.SubprocessError) as exc:
            _help_cache[key] = f"<--help failed: {exc}>"
    return _help_cache[key]


def service_has_option(service: Sequence[str], option: str) -> bool:
    """True if ``service --help`` mentions ``option``."""
    import re

    return re.search(re.escape(option) + r"(?![\w-])", service_help(service)) is not None


# --------------------------------------------------------------------------
# working dirs and request files
# --------------------------------------------------------------------------


@contextlib.contextmanager
def temp_workdir(prefix: str = "qcgbench-", keep: bool = False,
                 base: Optional[str] = None) -> Iterator[str]:
    """A fresh temporary directory, removed afterwards unless ``keep``."""
    path = tempfile.mkdtemp(prefix=prefix, dir=base)
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def job(
    name: str,
    exec_: str = "/bin/true",
    args: Optional[Sequence[str]] = None,
    *,
    iterations: Optional[int] = None,
    after: Optional[Sequence[str]] = None,
    cores: Optional[int] = None,
    **execution_extra,
) -> dict:
    """A job description in the service-side ("std") format."""
    execution: dict = {"exec": exec_}
    if args:
        execution["args"] = [str(a) for a in args]
    execution.update(execution_extra)
    j: dict = {"name": name, "execution": execution}
    if cores is not None:
        j["resources"] = {"numCores": {"exact": cores}}
    if iterations is not None:
        j["iteration"] = {"stop": iterations}
    if after:
        j["dependencies"] = {"after": list(after)}
    return j


def submit_req(jobs: Sequence[dict]) -> dict:
    return {"request": "submit", "jobs": list(jobs)}


def finish_req() -> dict:
    return {"request": "control", "command": "finishAfterAllTasksDone"}


def write_requests(path: str, requests: Sequence[dict]) -> str:
    with open(path, "wb") as f:
        f.write(orjson.dumps(list(requests)))
    return path


def chain_jobs(n: int, prefix: str = "c", exec_: str = "/bin/true") -> list[dict]:
    """``n`` jobs where job i runs after job i-1."""
    return [job(f"{prefix}{i}", exec_, after=[f"{prefix}{i - 1}"] if i else None)
            for i in range(n)]


def many_jobs(n: int, prefix: str = "j", exec_: str = "/bin/true",
              after: Optional[Sequence[str]] = None) -> list[dict]:
    return [job(f"{prefix}{i}", exec_, after=after) for i in range(n)]


def nodes_spec(nodes: int, cores: int) -> str:
    return ",".join([str(cores)] * nodes)


# --------------------------------------------------------------------------
# /proc helpers
# --------------------------------------------------------------------------


@dataclass
class ProcTimes:
    """CPU seconds from /proc/<pid>/stat."""
    user: float
    sys: float
    children_user: float
    children_sys: float

    @property
    def own(self) -> float:
        return self.user + self.sys

    @property
    def children(self) -> float:
        return self.children_user + self.children_sys


def proc_times(pid: int) -> Optional[ProcTimes]:
    """Own and waited-for-children CPU time of ``pid``; works on a zombie
    (its final figures), which is how the service's own CPU is separated
    from that of its descendants."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    # fields[0] is field 3 (state); utime is field 14 -> index 11
    ut, st, cut, cst = (int(x) / CLK_TCK for x in fields[11:15])
    return ProcTimes(ut, st, cut, cst)


def proc_rss(pid: int) -> Optional[int]:
    """Resident set size in bytes (from /proc/<pid>/statm; cheap)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None


# --------------------------------------------------------------------------
# running the service
# --------------------------------------------------------------------------


@dataclass
class Sample:
    t: float            # seconds since start
    rss: int            # service process RSS (bytes)
    tree_rss: int       # RSS of the service and all its descendants
    nprocs: int         # number of descendants seen


@dataclass
class ServiceRun:
    argv: list
    wd: str
    wall: float = float("nan")
    returncode: Optional[int] = None
    # CPU seconds of the service's own process (from /proc of the zombie)
    own_user: float = float("nan")
    own_sys: float = float("nan")
    # CPU seconds from os.wait4 rusage: the service and every descendant
    # that was waited for (agents, tasks ...)
    total_user: float = float("nan")
    total_sys: float = float("nan")
    maxrss_kb: int = 0              # ru_maxrss (largest of self / waited kids)
    killed: bool = False            # stopped by us (stop condition / timeout)
    timed_out: bool = False
    stop_reason: str = ""
    samples: list = field(default_factory=list)
    marks: dict = field(default_factory=dict)   # named times set by stoppers
    leftovers: int = 0              # stray processes found after the run
    leftover_cmds: list = field(default_factory=list)
    output_path: str = ""

    @property
    def own_cpu(self) -> float:
        return self.own_user + self.own_sys

    @property
    def total_cpu(self) -> float:
        return self.total_user + self.total_sys

    def window(self) -> list:
        """The samples that count: those taken before ``marks['window_end']``
        (set by a stopper, e.g. when the gate job ended), else all."""
        end = self.marks.get("window_end")
        if end is None:
            return self.samples
        return [s for s in self.samples if s.t < end]

    @property
    def peak_rss(self) -> int:
        return max((s.rss for s in self.window()), default=0)

    @property
    def held_rss(self) -> int:
        """RSS while the work sits queued: the median of the last half of the window's samples
        (after the submit's transient parsing memory, before the gate ends)."""
        w = self.window()
        tail = sorted(s.rss for s in w[len(w) // 2:])
        return tail[len(tail) // 2] if tail else 0

    @property
    def peak_tree_rss(self) -> int:
        return max((s.tree_rss for s in self.window()), default=0)

    @property
    def peak_time(self) -> float:
        w = self.window()
        return max(w, key=lambda s: s.rss).t if w else float("nan")

    def output_tail(self, lines: int = 15) -> str:
        try:
            with open(self.output_path, "rb") as f:
                data = f.read()[-8000:]
        except OSError:
            return ""
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

    @property
    def ok(self) -> bool:
        return not self.killed and self.returncode == 0


# A stopper is called after each sample with (run, sample, service psutil
# Process, descendants list); it returns a reason string to stop the
# service, or None to go on.
Stopper = Callable[[ServiceRun, Sample, psutil.Process, list], Optional[str]]


def service_argv(service: Sequence[str], reqfile: str, wd: str, nodes: Optional[str],
                 log: str = "warning", extra: Sequence[str] = ()) -> list[str]:
    argv = list(service) + ["--file-path", reqfile, "--wd", wd]
    if nodes:
        argv += ["--nodes", nodes]
    if log:
        argv += ["--log", log]
    return argv + list(extra)


def run_service(
    argv: Sequence[str],
    wd: str,
    *,
    timeout: float = 600.0,
    sample_interval: Optional[float] = None,
    track_tree: bool = False,
    stopper: Optional[Stopper] = None,
    env: Optional[dict] = None,
    kill_grace: float = 3.0,
) -> ServiceRun:
    """Run the service ``argv`` (cwd ``wd``) to its exit, or until
    ``stopper`` / ``timeout`` says stop (then SIGTERM, SIGKILL after
    ``kill_grace`` s, to the whole process group).

    * wall time: from just before the spawn to the exit (``waitid``);
    * own CPU: /proc/<pid>/stat of the exited (not yet reaped) service;
    * total CPU: ``os.wait4`` rusage of the service (includes descendants it
      waited for);
    * with ``sample_interval`` (s), RSS of the service (and, with
      ``track_tree``, the sum over its descendants) is sampled in a thread.

    The service runs in its own session; afterwards its process group and
    any orphan re-parented to us (we are a subreaper) are killed."""
    become_subreaper()
    reap_zombies()
    run = ServiceRun(argv=list(argv), wd=wd)
    run.output_path = os.path.join(wd, "service.out")
    out = open(run.output_path, "wb")
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(
            list(argv), cwd=wd, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True, env=env,
        )
    finally:
        out.close()
    pid = proc.pid
    exited = threading.Event()
    stop_lock = threading.Lock()

    def request_stop(reason: str) -> None:
        with stop_lock:
            if run.killed or exited.is_set():
                return
            run.killed = True
            run.stop_reason = reason
        threading.Thread(target=kill_group, args=(pid, kill_grace), daemon=True).start()

    def sampler() -> None:
        try:
            ps = psutil.Process(pid)
            svc_cmdline = ps.cmdline()
        except psutil.Error:
            return
        interval = sample_interval or 0.05
        next_t = time.perf_counter()
        while not exited.is_set():
            now = time.perf_counter()
            rss = proc_rss(pid)
            if rss is None:
                break
            tree_rss, kids = rss, []
            if track_tree or stopper is not None:
                try:
                    kids = ps.children(recursive=True)
                except psutil.Error:
                    kids = []
                if track_tree:
                    for k in kids:
                        # a fork of the service that has not exec'd yet
                        # shares its pages: do not count it twice
                        try:
                            if k.cmdline() == svc_cmdline:
                                continue
                        except psutil.Error:
                            continue
                        r = proc_rss(k.pid)
                        if r:
                            tree_rss += r
            s = Sample(now - t0, rss, tree_rss, len(kids))
            if run.killed:
                break           # being stopped: later samples do not count
            if sample_interval:
                run.samples.append(s)
            if stopper is not None and not run.killed:
                reason = stopper(run, s, ps, kids)
                if reason:
                    request_stop(reason)
            next_t += interval
            delay = next_t - time.perf_counter()
            if delay > 0:
                exited.wait(delay)
            else:
                next_t = time.perf_counter()

    def watchdog() -> None:
        if not exited.wait(timeout):
            run.timed_out = True
            request_stop(f"timeout {timeout:.0f}s")

    threads = [threading.Thread(target=watchdog, daemon=True)]
    if sample_interval or stopper is not None:
        threads.append(threading.Thread(target=sampler, daemon=True))
    for t in threads:
        t.start()

    # wait for the exit without reaping, so its /proc entry can be read
    while True:
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            break
        except InterruptedError:
            continue
    run.wall = time.perf_counter() - t0
    exited.set()
    pt = proc_times(pid)
    if pt is not None:
        run.own_user, run.own_sys = pt.user, pt.sys
    _, status, ru = os.wait4(pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    run.returncode = proc.returncode
    run.total_user, run.total_sys = ru.ru_utime, ru.ru_stime
    run.maxrss_kb = ru.ru_maxrss
    for t in threads:
        t.join(timeout=kill_grace + 2)

    # no process may outlive the case
    if _group_alive(pid):
        run.leftovers += 1
        run.leftover_cmds.append(f"<process group {pid}>")
        kill_group(pid, 1.0)
    run.leftovers += sweep_orphans(found=run.leftover_cmds)
    return run


def gate_stopper(gate_arg: str, cap: float, linger: float = 0.0) -> Stopper:
    """Stop the service when the gate task (a descendant whose command line
    ends with ``gate_arg``, e.g. ``sleep 8.25``) has ended, ``linger`` s
    after that, or at ``cap`` s since the start, whichever comes first.

    Marks ``gate_start`` / ``gate_end`` in ``run.marks``."""
    state: dict = {}

    def stop(run: ServiceRun, s: Sample, ps: psutil.Process, kids: list) -> Optional[str]:
        gate = state.get("gate")
        if gate is None:
            for k in kids:
                try:
                    cl = k.cmdline()
                except psutil.Error:
                    continue
                if gate_arg in cl and any(os.path.basename(c) == "sleep" for c in cl):
                    state["gate"] = k
                    run.marks["gate_start"] = s.t
                    break
        else:
            alive = True
            try:
                alive = gate.is_running() and gate.status() != psutil.STATUS_ZOMBIE
            except psutil.Error:
                alive = False
            if not alive and "gate_end" not in run.marks:
                # the gate was seen alive in the previous sample: samples
                # from this one on may include jobs released by it
                run.marks["gate_end"] = s.t
                run.marks["window_end"] = s.t
            if "gate_end" in run.marks and s.t - run.marks["gate_end"] >= linger:
                return "gate finished"
        if s.t >= cap:
            return f"cap {cap:.0f}s reached"
        return None

    return stop


def read_final_status(wd: str) -> Optional[dict]:
    """``final_status.json`` from the newest ``.qcgpjm-service-*`` dir."""
    try:
        auxes = [os.path.join(wd, d) for d in os.listdir(wd) if d.startswith(".qcgpjm-service-")]
    except OSError:
        return None
    auxes.sort(key=lambda p: os.path.getmtime(p), reverse=True)
    for aux in auxes:
        path = os.path.join(aux, "final_status.json")
        if os.path.exists(path):
            try:
                with open(path, "rb") as f:
                    return orjson.loads(f.read())
            except (OSError, orjson.JSONDecodeError):
                return None
    return None


def final_counts(status: Optional[dict]) -> Optional[dict]:
    """Job / iteration counters of a final status, flattened."""
    if not status:
        return None
    js = status.get("JobStats", {})
    it = status.get("IterationStats", {})
    return {
        "jobs": js.get("TotalJobs"), "jobs_finished": js.get("FinishedJobs"),
        "jobs_failed": js.get("FailedJobs"),
        "iters": it.get("TotalIterations"), "iters_finished": it.get("FinishedIterations"),
        "iters_failed": it.get("FailedIterations"),
    }


# --------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------


def fmt_bytes(n: float) -> str:
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{sign}{n:.1f} {unit}" if unit != "B" else f"{sign}{n:.0f} B"
        n /= 1024
    return f"{sign}{n:.1f} GB"


@dataclass
class Verdict:
    """One result line: ``name: figure unit (ratio/target)``."""
    name: str
    value: Optional[float]
    unit: str
    target: str = ""            # human form, e.g. ">= 0.85" or "< 0.3 s"
    ratio: Optional[float] = None
    passed: Optional[bool] = None
    note: str = ""

    def value_str(self) -> str:
        if self.value is None:
            return "-"
        v = self.value
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"

    def status(self) -> str:
        return {True: "OK", False: "MISS", None: "--"}[self.passed]

    def line(self) -> str:
        bits = []
        if self.ratio is not None:
            bits.append(f"ratio {self.ratio:.2f}")
        if self.target:
            bits.append(f"target {self.target}")
        paren = f" ({', '.join(bits)})" if bits else ""
        note = f"  [{self.note}]" if self.note else ""
        return f"{self.name}: {self.value_str()} {self.unit}{paren} {self.status()}{note}"


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    out = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    out += [fmt.format(*[str(c) for c in r]) for r in rows]
    return "\n".join(out)


def verdict_table(verdicts: Sequence[Verdict]) -> str:
    rows = [(v.name, v.value_str(), v.unit,
             "-" if v.ratio is None else f"{v.ratio:.2f}", v.target or "-", v.status())
            for v in verdicts]
    return table(rows, ("case", "figure", "unit", "ratio", "target", "result"))


def eprint(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def compile_package() -> None:
    """Byte-compile qcg-hier where it is installed, as `pip install .` does. An editable
    (development) install has no bytecode, and with PYTHONDONTWRITEBYTECODE set every service
    start would compile the package again: a cost no installed service pays."""
    import compileall
    import importlib.util

    for name in ("qcg_hier", "qcg_hier_agent"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            for folder in spec.submodule_search_locations:
                compileall.compile_dir(folder, quiet=1)


def run_bench(make_bench, args, cases) -> int:
    """Build a benchmark (a missing service command is reported, not raised), run its cases, and
    sweep up whatever it left running, even when interrupted."""
    compile_package()
    try:
        bench = make_bench(args)
    except FileNotFoundError as exc:
        print(f"cannot run: {exc}", file=sys.stderr)
        return 0
    try:
        bench.main(cases)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        sweep_orphans()
    return 0


def print_load(hint: str = "") -> None:
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
          + (f"  ! busy machine: rates and ratios are unreliable{hint}"
             if load[0] > 0.5 * (os.cpu_count() or 1) else ""))
    print(flush=True)


def run_cases(bench, cases, on_error=None) -> None:
    """Each case runs even when an earlier one failed; what a case left running is swept up."""
    import traceback
    for name in cases:
        try:
            getattr(bench, f"case_{name}")()
        except Exception as exc:  # a failing case must not stop the rest
            traceback.print_exc()
            bench.record(Verdict(name, None, "", "", None, False, f"error: {exc!r}"))
            if on_error is not None:
                on_error(name, exc)
        finally:
            sweep_orphans()
            print(flush=True)
