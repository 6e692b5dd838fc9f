"""`Executor`: a `concurrent.futures.Executor` over a local manager.

`submit(fn, *args, **kwargs)` takes upstream `qcg-pilotjob-executor-api`'s templates
(`fn()` returns a template string, or `(template, defaults)`, whose substitution with the
merged dict args and kwargs is a std job description); `submit(["prog", "arg"], **attrs)`
and `submit("script text", **attrs)` take a command and `Jobs.add` attributes.
A future's `result(timeout)` honours the timeout; `cancel()` cancels a queued or running job.
"""
import ast
import concurrent.futures
import logging
import string
import threading
import time

from .errors import QCGPJMAError

log = logging.getLogger("qcg_hier.executor")
from .jobs import Jobs
from .manager import FINAL_STATES, LocalManager, Manager


class BasicTemplate:
    """A job of one program: placeholders ${name}, ${exec}, ${args}, ${stdout}, ${stderr}."""

    @staticmethod
    def template():
        text = ("{'name': '${name}', 'execution': {'exec': '${exec}', 'args': ${args}, "
                "'stdout': '${stdout}', 'stderr': '${stderr}'}}")
        return text, {"args": [], "stdout": "stdout", "stderr": "stderr"}


class QCGFuture(concurrent.futures.Future):
    """Done when every job it stands for has finished; the result maps job names to states."""

    def __init__(self, executor: "Executor", names: list[str]):
        super().__init__()
        self.names = names
        self._executor = executor
        self.states: dict[str, str] = {}

    def cancel(self) -> bool:
        # the future is marked cancelled first: the watcher, woken by the service's CANCELED event,
        # must not settle it with a result between our cancel request and the mark
        if not super().cancel():
            return False  # already finished
        try:
            self._executor.qcgpj_manager.cancel(self.names)
        except QCGPJMAError:
            pass  # finished meanwhile: the future stays cancelled, as concurrent.futures would have it
        return True

    def _settle(self) -> None:
        with self._condition:
            if self._state in ("CANCELLED", "CANCELLED_AND_NOTIFIED", "FINISHED"):
                return
        self.set_result({name: self.states[name] for name in self.names})


class Executor(concurrent.futures.Executor):
    def __init__(self, *other_args, wd=".", resources=None, reserve_core=False, enable_rt_stats=False,
                 wrapper_rt_stats=None, log_level="info", server_args=None):
        # enable_rt_stats and wrapper_rt_stats: upstream's signature, accepted and not used
        # (exact start/end times come from the agent for every task)
        args = ["--log", log_level, "--wd", str(wd)]
        if resources:
            args += ["--nodes", str(resources)]
        if reserve_core:
            args.append("--system-core")
        args += [str(a) for a in other_args] + list(server_args or [])
        self._manager = LocalManager(args)
        self._futures: dict[str, QCGFuture] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="qcg-hier-executor", daemon=True)
        self._watcher.start()

    @property
    def qcgpj_manager(self) -> LocalManager:
        return self._manager

    def submit(self, fn, *args, **kwargs) -> QCGFuture:
        if self._stop.is_set():
            raise RuntimeError("cannot submit after shutdown")
        jobs = Jobs()
        if callable(fn):
            jobs.add_std(self._from_template(fn, args, kwargs))
        elif isinstance(fn, (list, tuple)) and fn:
            jobs.add(exec=str(fn[0]), args=[str(a) for a in fn[1:]], **kwargs)
        elif isinstance(fn, str):
            jobs.add(script=fn, **kwargs)
        else:
            raise TypeError("submit takes a template function, an argv list or a script string")
        with self._lock:  # the watcher must know the future before any event about it
            names = self._manager.submit(jobs)
            future = QCGFuture(self, names)
            for name in names:
                self._futures[name] = future
        return future

    @staticmethod
    def _from_template(fn, args, kwargs) -> dict:
        produced = fn()
        template, defaults = (produced, {}) if isinstance(produced, str) else produced
        values = {}
        for arg in args:
            values.update(arg)
        values.update(kwargs)
        job = ast.literal_eval(string.Template(template).substitute(defaults, **values))
        job.setdefault("execution", {}).setdefault("env", {})["QCG_PM_EXEC_API_JOB_ID"] = "${jname}"
        return job

    def _watch(self) -> None:
        """Settle futures from job-finished events, with a periodic status re-check for lost events."""
        watcher = self._manager.clone()
        last_check = 0.0
        try:
            while not self._stop.is_set():
                try:
                    event = watcher._next_event(0.5)
                    if event and event[0] == "JFI":
                        self._finished(event[1].get("job"), event[1].get("state"))
                    if time.monotonic() - last_check > 2.0:
                        last_check = time.monotonic()
                        self._recheck(watcher)
                except QCGPJMAError as exc:  # a slow service must not stop the futures from settling
                    log.warning("executor watcher: %s (retrying)", exc)
                    time.sleep(0.5)
        finally:
            watcher.cleanup()

    def _recheck(self, watcher: Manager) -> None:
        with self._lock:
            pending = [n for n, f in self._futures.items() if not f.done()]
        if pending:
            for name, state in watcher._states(pending).items():
                if state in FINAL_STATES:
                    self._finished(name, state)

    def _finished(self, name, state) -> None:
        with self._lock:
            future = self._futures.pop(name, None)
        if future is None:
            return
        future.states[name] = state
        if all(n in future.states for n in future.names):
            future._settle()

    def shutdown(self, wait=True, *, cancel_futures=False) -> None:
        with self._lock:
            futures = set(self._futures.values())
        if cancel_futures:
            for future in futures:
                future.cancel()
        if wait:
            concurrent.futures.wait(futures)
        self._stop.set()
        self._watcher.join(5)
        self._manager.finish()
