"""`Executor`: a `concurrent.futures.Executor` over a local manager.

`submit(fn, *args, **kwargs)` takes upstream `qcg-pilotjob-executor-api`'s templates
(`fn()` returns a template string, or `(template, defaults)`; the template is dedented, then
substituted with the defaults, the dict args (None skipped) and the kwargs, and read as a std
job description); `submit(["prog", "arg"], **attrs)` and `submit("script text", **attrs)` take a
command and `Jobs.add` attributes.

A future follows concurrent.futures' state machine: PENDING while its job waits, RUNNING from
when the service reports it EXECUTING (`running()`), FINISHED with `{job name: state}` once it
ended. `result(timeout)` honours the timeout; `cancel()` cancels a queued or a running job, and
the future is then CANCELLED_AND_NOTIFIED at once, so `wait()`, `as_completed()` and `shutdown()`
never wait for it.
"""
import ast
import concurrent.futures
import logging
import string
import textwrap
import threading
import time
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING

from .errors import QCGPJMAError, ServiceError
from .jobs import Jobs
from .manager import FINAL_STATES, LocalManager, Manager

log = logging.getLogger("qcg_hier.executor")

RECHECK_S = 2.0  # status re-check of unfinished jobs, for events lost on the way
# until the first event arrives: the watcher's subscription takes a moment to reach the service, and
# the events of a job submitted right after the start may be lost
EARLY_RECHECK_S = 0.2
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")  # upstream's: any case, others are debug


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

    # upstream QCGPJFuture's attributes
    @property
    def ids(self) -> list[str]:
        return self.names

    @property
    def qcgpjm(self) -> LocalManager:
        return self._executor.qcgpj_manager

    def cancel(self) -> bool:
        """Cancel the job, queued or executing; False once it has finished."""
        if self._cancel_here():
            self._executor._cancel_jobs(self.names)
        return self.cancelled()

    def _cancel_here(self) -> bool:
        """Mark the future cancelled (and notified); True if this call did, False if it was done already."""
        with self._condition:
            if self._state in (FINISHED, CANCELLED_AND_NOTIFIED):
                return False
            # PENDING or RUNNING: concurrent.futures refuses a running future, but this one stands for
            # a job the service cancels wherever it is. The executor drops the work at once, so it takes
            # the state machine's own notify step right here: CANCELLED, then set_running_or_notify_cancel
            # (CANCELLED_AND_NOTIFIED, which wait() and as_completed() count as done). Both under the
            # lock: no other thread ever sees a cancelled future that is not yet notified.
            self._state = CANCELLED
            self._condition.notify_all()
            self.set_running_or_notify_cancel()
        self._invoke_callbacks()
        return True

    def _mark_running(self) -> None:
        with self._condition:
            if self._state == PENDING:
                self.set_running_or_notify_cancel()  # PENDING -> RUNNING: running() is True

    def _settle(self, result=None, exception=None) -> None:
        self._mark_running()  # a job that ended before its EXECUTING was seen still passes RUNNING
        try:
            if exception is not None:
                self.set_exception(exception)
            else:
                self.set_result(result)
        except concurrent.futures.InvalidStateError:
            pass  # cancelled (or failed) meanwhile: it stays so


class Executor(concurrent.futures.Executor):
    """Upstream `QCGPJExecutor`'s signature (the same positional order), plus `server_args`: more
    options for the service, as a list."""

    def __init__(self, wd=".", resources=None, reserve_core=False, enable_rt_stats=False, wrapper_rt_stats=None,
                 log_level="info", *other_args, server_args=None):
        # enable_rt_stats and wrapper_rt_stats: upstream's signature, accepted and not used
        # (exact start/end times come from the agent for every task)
        level = str(log_level).lower()
        args = ["--log", level if level in LOG_LEVELS else "debug", "--wd", str(wd)]  # as upstream maps it
        if resources:
            args += ["--nodes", str(resources)]
        if reserve_core:
            args.append("--system-core")
        args += [str(a) for a in other_args] + [str(a) for a in (server_args or [])]
        self.finished = False  # upstream's attribute: True once shut down
        self._manager = LocalManager(args)
        self._futures: dict[str, QCGFuture] = {}  # job name -> future, until the job has finished
        self._lock = threading.Lock()
        self._shutdown = False
        self._stop = threading.Event()
        # the watcher's connection is made here, so that it subscribes before anything is submitted
        try:
            watcher = self._manager.clone()
        except BaseException:
            self._manager.kill_manager_process()
            raise
        watcher.subscribe("JST")  # job state changes: EXECUTING
        self._watcher = threading.Thread(target=self._watch, args=(watcher,), name="qcg-hier-executor", daemon=True)
        self._watcher.start()

    @property
    def qcgpj_manager(self) -> LocalManager:
        return self._manager

    # ------------------------------------------------------------ submitting
    def submit(self, fn, *args, **kwargs) -> QCGFuture:
        if self._shutdown:
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
            if self._shutdown:
                raise RuntimeError("cannot submit after shutdown")
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
            if arg is not None:  # EasyVVUQ passes its template_params, None when it has none
                values.update(arg)
        values.update(kwargs)
        # templates are usually indented triple-quoted strings: dedented first, as upstream does
        text = string.Template(textwrap.dedent(template)).substitute(defaults or {}, **values)
        job = ast.literal_eval(text.strip())
        if not isinstance(job, dict):
            raise TypeError(f"the template gives a {type(job).__name__}, not a job description dict")
        job.setdefault("execution", {}).setdefault("env", {})["QCG_PM_EXEC_API_JOB_ID"] = "${jname}"
        return job

    def _cancel_jobs(self, names: list[str]) -> None:
        if not names or self._manager.process.poll() is not None:
            return  # nothing to cancel, or no service left to ask
        try:
            self._manager.cancel(names)
        except QCGPJMAError:
            pass  # finished meanwhile, or the service is gone: the future stays cancelled

    # ------------------------------------------------------------ watching
    def _watch(self, watcher: Manager) -> None:
        """Futures run on EXECUTING events and settle on job-finished ones, with a periodic status
        re-check for lost events; if the service dies, the futures left fail with ServiceError."""
        last_check = time.monotonic()
        heard = False  # no event yet: the subscription may not have reached the service, re-check often
        try:
            while not self._stop.is_set():
                interval = RECHECK_S if heard else EARLY_RECHECK_S
                try:
                    event = watcher._next_event(min(0.5, interval))
                    if event:
                        heard = True
                        topic, body = event
                        if topic == "JFI":
                            self._finished(body.get("job"), body.get("state"))
                        elif topic == "JST" and body.get("state") == "EXECUTING":
                            self._started(body.get("job"))
                    if time.monotonic() - last_check > interval:
                        last_check = time.monotonic()
                        if self._service_gone():
                            return
                        self._recheck(watcher)
                except QCGPJMAError as exc:  # a slow service must not stop the futures from settling
                    if self._service_gone():
                        return
                    log.warning("executor watcher: %s (retrying)", exc)
                    time.sleep(0.5)
                except Exception:  # never leave futures unsettled for good: log and go on
                    log.exception("executor watcher")
                    time.sleep(0.5)
        finally:
            watcher.cleanup()

    def _service_gone(self) -> bool:
        if self._stop.is_set() or self._manager.process.poll() is None:
            return False
        self._service_lost(self._manager._exited())
        return True

    def _service_lost(self, exc: Exception) -> None:
        log.error("executor: the service is gone (%s): failing its unfinished futures", exc)
        with self._lock:
            futures = set(self._futures.values())
            self._futures.clear()
        for future in futures:
            future._settle(exception=ServiceError(f"the service ended before the job finished: {exc}"))

    def _recheck(self, watcher: Manager) -> None:
        with self._lock:
            pending = [n for n, f in self._futures.items() if not f.done()]
        if pending:
            for name, state in watcher._states(pending).items():
                if state in FINAL_STATES:
                    self._finished(name, state)
                elif state == "EXECUTING":
                    self._started(name)

    def _started(self, name) -> None:
        with self._lock:
            future = self._futures.get(name)
        if future is not None:
            future._mark_running()

    def _finished(self, name, state) -> None:
        with self._lock:
            future = self._futures.pop(name, None)
        if future is None:
            return
        future.states[name] = state
        if all(n in future.states for n in future.names):
            future._settle({n: future.states[n] for n in future.names})

    # ------------------------------------------------------------ shutting down
    def shutdown(self, wait=True, *, cancel_futures=False) -> None:
        """Stop the service. `wait`: first wait for every job (those cancelled do not count);
        `cancel_futures`: first cancel the jobs not yet executing. Without `wait` the service stops
        at once (as upstream's shutdown does), and the futures still unfinished are cancelled."""
        with self._lock:
            if self._shutdown:
                return  # a second call has no effect, as upstream
            self._shutdown = True
            futures = set(self._futures.values())
        if cancel_futures or not wait:
            # one cancel request for them all
            self._cancel_jobs([name for future in futures if not (wait and future.running()) and future._cancel_here()
                               for name in future.names])
        if wait:
            concurrent.futures.wait(futures)
        self._stop.set()
        self._watcher.join(5)
        try:
            if self._manager.process.poll() is None:
                self._manager.finish()
            else:
                self._manager.cleanup()  # the service died: nobody to ask to finish
        finally:
            self.finished = True
