"""Request handlers: one function per upstream request name, same envelope and fields.

Each takes the request dict and returns the response dict; errors become
`{"code": 1, "message": ...}` and never stop the service.
"""
import asyncio
import getpass
import logging
import os
import platform
import socket
import sys
import time
import uuid
from datetime import datetime
from types import GeneratorType

import orjson

from .. import protocol
from ..core.errors import CoreError, JobDescriptionError, SubmitError, UnknownJobError
from ..core.jobdesc import parse_job
from ..core.states import FINAL_STATES, JobState
from ..core.variables import substitute_tree

FINISH_CONTROL = "finishAfterAllTasksDone"
log = logging.getLogger("qcg_hier")


class RequestError(Exception):
    """A malformed request: answered with `Invalid request: ...`."""


# A large reply (jobInfo of many jobs, withChilds of a big job, jobStatus of many names) is built
# across turns of the loop, SLICE_SECONDS at a time: heartbeats, task ends and other clients are
# served in between, so no request holds the loop for long.
SLICE_SECONDS = 0.02
STEP_UNITS = 256  # names or childs built between two looks at the clock
CHILDS_PER_JOB = 100_000  # iterations jobInfo withChilds lists per job
MAX_CHILDS_PER_REPLY = 1_000_000  # beyond, the request is refused: ask for fewer jobs at a time
_PENDING = object()


def run_sliced(steps):
    """Run `steps` (a generator that yields between units of work and returns the reply): the reply
    itself if it is done within one slice, else a Future the loop completes slice by slice."""
    reply = _advance(steps)
    if reply is not _PENDING:
        return reply
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def go_on() -> None:
        try:
            reply = _advance(steps)
        except Exception as exc:  # a bug must not leave the client without a reply
            log.exception("building a reply failed")
            reply = protocol.error(f"Failed to process request: {type(exc).__name__}: {exc}")
        if reply is _PENDING:
            loop.call_soon(go_on)
        else:
            future.set_result(reply)

    loop.call_soon(go_on)
    return future


def _advance(steps):
    deadline = time.monotonic() + SLICE_SECONDS
    try:
        while True:
            next(steps)
            if time.monotonic() >= deadline:
                return _PENDING
    except StopIteration as done:
        return done.value


# upstream's texts for a request without its job names: clients and scripts match them
MISSING_NAMES = {"jobStatus": "job status", "jobInfo": "job info", "cancelJob": "cancel job",
                 "removeJob": "remove job"}
MISSING_JOBS = "Wrong submit request - missing jobs data"
MISSING_COMMAND = "Wrong control request - missing command"


def _names(req: dict) -> list[str]:
    names = req.get("jobNames")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise RequestError(f"Wrong {MISSING_NAMES[req['request']]} request - missing job names")
    return names


def check_entity_request(req: dict, kind: str, entity: str, keys: tuple) -> dict:
    """`register` and `notify` as upstream checks them (its texts, its quirk included: a notify
    without params is also "missing register parameters"); returns the params."""
    if req.get("entity") != entity:
        raise RequestError(f"Wrong {kind} request - missing/unknown entity")
    params = req.get("params")
    if params is None:
        raise RequestError(f"Wrong {kind} request - missing register parameters")
    if not isinstance(params, dict) or not all(key in params for key in keys):
        raise RequestError(f"Wrong {kind} request - missing key {kind} parameters")
    return params


def _running_runtime(task) -> dict:
    out = {"allocation": task.alloc.describe()}
    manager = getattr(task.alloc, "manager", None)
    if manager:
        out["manager"] = manager
    return out


def _history_text(history) -> str:
    return "".join(f"\n{datetime.fromtimestamp(t)}: {state.value}" for state, t in history)


class Handlers:
    def __init__(self, service):
        self.s = service  # the manager service: core, launcher, flags
        self._rcnt = 0

    def handle(self, req) -> dict:
        if not isinstance(req, dict) or not isinstance(req.get("request"), str):
            return protocol.error("Invalid request: Invalid request")
        name = req["request"]
        handler = getattr(self, f"r_{name}", None)
        if handler is None:
            return protocol.error(f"Invalid request: Unknown request name: {name}")
        try:
            return handler(req)
        except RequestError as exc:
            return protocol.error(f"Invalid request: {exc}")
        except CoreError as exc:
            return protocol.error(str(exc))

    # ------------------------------------------------------------ submit
    def r_submit(self, req: dict) -> dict:
        jobs = req.get("jobs")
        if not isinstance(jobs, list) or not jobs:
            raise RequestError(MISSING_JOBS)
        if self.s.finishing:
            return protocol.error("Service is finishing: no more jobs accepted")
        self._rcnt += 1
        now = datetime.now()
        values = {"rcnt": self._rcnt, "uniq": uuid.uuid4(), "sname": "local", "date": str(now.date()),
                  "time": str(now.time()), "dateTime": str(now)}
        specs, descs = [], []  # descs: as substituted, for the journal
        # one C-speed scan of the whole request decides whether any substitution is needed
        text = orjson.dumps(jobs)
        templated = b"$" in text
        try:
            for desc in jobs:
                if not isinstance(desc, dict):
                    raise JobDescriptionError(None, None, f"a job description must be an object, got {type(desc).__name__}")
                if templated:
                    name = desc.get("name")
                    if isinstance(name, str) and "$" in name:
                        name = substitute_tree(name, values)
                    values["jname"] = name
                    desc = substitute_tree(desc, values)
                specs.append(parse_job(desc))
                descs.append(desc)
            # without substitutions, the journal's copy of the descriptions is this text
            names = self.s.submit(specs, descs, None if templated else text)
        except (JobDescriptionError, SubmitError) as exc:
            return protocol.error(f"Wrong submit request: {exc}" if isinstance(exc, JobDescriptionError) else str(exc))
        return protocol.ok({"submitted": len(names), "jobs": names}, f"{len(names)} jobs submitted")

    # ------------------------------------------------------------ queries
    def r_listJobs(self, req: dict):
        return run_sliced(self._list_steps(list(self.s.core.jobs.items())))

    @staticmethod
    def _list_steps(items: list):
        jobs = {}
        for n, (name, job) in enumerate(items):
            if n % STEP_UNITS == 0:
                yield
            entry = {"status": job.state.value}
            if not job.state.is_final:
                entry["inQueue"] = 1 if job.queued_under is not None else 0
            if job.messages:
                entry["messages"] = "; ".join(job.messages)
            jobs[name] = entry
        return protocol.ok({"length": len(jobs), "jobs": jobs})

    def _each_job(self, req: dict, describe, none_known, childs_per_job: int = 0):
        """`{"jobs": {name: {"status": 0, "data": ...} or {"status": 1, "message": ...}}}`: an unknown
        name among known ones gets its own error entry (upstream failed the whole request); when no
        name is known, the request fails as upstream's does (`none_known(names, first error)` says
        how), and upstream's client raises on it. A name given twice is answered once (the reply is
        keyed by name). Built in slices (see run_sliced); `childs_per_job`: iterations each
        iterative job lists, counted against MAX_CHILDS_PER_REPLY before anything is built."""
        names = list(dict.fromkeys(_names(req)))
        if childs_per_job:
            self._check_reply_size(names, childs_per_job)
        return run_sliced(self._each_job_steps(names, describe, none_known))

    def _check_reply_size(self, names: list, childs_per_job: int) -> None:
        jobs = self.s.core.jobs
        listed = sum(min(jobs[n].total, childs_per_job) for n in names if n in jobs and jobs[n].iterative)
        if listed > MAX_CHILDS_PER_REPLY:
            raise RequestError(f"jobInfo withChilds would list {listed} iterations, more than the "
                               f"{MAX_CHILDS_PER_REPLY} one reply may hold: ask for fewer jobs at a time")

    def _each_job_steps(self, names: list, describe, none_known):
        out = {}
        first_error = None
        find = self.s.core.find
        for n, name in enumerate(names):
            if n % STEP_UNITS == 0:
                yield
            try:
                job, it = find(name)
            except UnknownJobError as exc:
                out[name] = {"status": 1, "message": str(exc)}
                first_error = first_error or exc
                continue
            data = describe(name, job, it)
            if isinstance(data, GeneratorType):
                data = yield from data
            out[name] = {"status": 0, "data": data}
        if first_error is not None and all(e["status"] for e in out.values()):
            return protocol.error(none_known(names, first_error))
        return protocol.ok({"jobs": out})

    def r_jobStatus(self, req: dict):
        def status(name, job, it):
            state = job.state if it is None else job.iteration_state(it)
            return {"jobName": name, "status": state.value}
        return self._each_job(req, status, lambda names, error: str(error))

    def r_jobInfo(self, req: dict):
        params = req.get("params") or {}
        if not isinstance(params, dict):
            raise RequestError("'params' must be an object")
        with_childs = bool(params.get("withChilds"))
        # upstream names the whole list here: "Job ['a', 'b'] doesn't exist"
        return self._each_job(req, lambda name, job, it: self._job_info(name, job, it, with_childs),
                              lambda names, error: f"Job {names!r} doesn't exist",
                              CHILDS_PER_JOB if with_childs else 0)

    def _job_info(self, name, job, it, with_childs):
        """The data of one job or iteration; a generator (see run_sliced) when it lists childs."""
        if it is not None:
            record = job.records.get(it) if job.records else None
            data = {"jobName": name, "status": job.iteration_state(it).value}
            task = job.running.get(it)
            if record is not None:
                data["runtime"] = record.runtime()
                data["history"] = _history_text(record.history)
            elif task is not None:
                data["runtime"] = _running_runtime(task)
                data["history"] = _history_text(task.history)
            return data
        data = {"jobName": name, "status": job.state.value}
        if job.iterative:
            failed = sum(job.counts[i] for i, st in enumerate(JobState) if st in FINAL_STATES and st is not JobState.SUCCEED)
            data["iterations"] = {"start": job.start, "stop": job.stop, "total": job.total,
                                  "finished": job.finished, "failed": failed}
            if with_childs:
                return self._with_childs(job, data)
        else:
            record = job.records.get(job.start) if job.records else None
            task = job.running.get(job.start)
            if record is not None:
                data["runtime"] = record.runtime()
            elif task is not None:
                data["runtime"] = _running_runtime(task)
        return self._job_tail(job, data)

    @staticmethod
    def _job_tail(job, data: dict) -> dict:
        data["history"] = _history_text(job.history)
        if job.messages:
            data["messages"] = "; ".join(job.messages)
        return data

    def _with_childs(self, job, data: dict):
        data["childs"] = yield from self._childs(job)
        return self._job_tail(job, data)

    def _childs(self, job, limit: int = CHILDS_PER_JOB):
        childs = []
        for it in range(job.start, min(job.stop, job.start + limit)):
            if it % STEP_UNITS == 0:
                yield
            child = {"iteration": it, "state": job.iteration_state(it).value}
            record = job.records.get(it) if job.records else None
            task = job.running.get(it)
            if record is not None:
                child["runtime"] = record.runtime()
                if record.message:
                    child["messages"] = record.message
            elif task is not None:
                child["runtime"] = _running_runtime(task)
            childs.append(child)
        return childs

    def r_resourcesInfo(self, req: dict) -> dict:
        nodes, total, used, free = self.s.core.pool.usage()
        return protocol.ok({"total_nodes": nodes, "total_cores": total, "used_cores": used, "free_cores": free})

    def r_status(self, req: dict) -> dict:
        options = req.get("options") or {}
        if not isinstance(options, dict):
            raise RequestError("'options' must be an object")
        if options.get("allJobsFinished"):
            finished = self.s.core.all_finished()
            self.s.answered_all_finished(finished)
            return protocol.ok({"AllJobsFinished": finished})
        return protocol.ok(self.s.status())

    # ------------------------------------------------------------ changes
    def r_cancelJob(self, req: dict) -> dict:
        return self._per_name(req, self.s.cancel, "canceled")

    def r_removeJob(self, req: dict) -> dict:
        return self._per_name(req, self.s.remove, "removed")

    @staticmethod
    def _per_name(req: dict, action, done_key: str) -> dict:
        """Apply `action` to every name: `{done_key: count, "errors": {name: why}}` (as upstream)."""
        done, errors = 0, {}
        for name in _names(req):
            try:
                action(name)
                done += 1
            except UnknownJobError as exc:
                errors[name] = str(exc)
        data = {done_key: done}
        if errors:
            data["errors"] = errors
        return protocol.ok(data)

    def r_control(self, req: dict) -> dict:
        command = req.get("command")
        if command is None:
            raise RequestError(MISSING_COMMAND)
        if command != FINISH_CONTROL:
            raise RequestError(f'Wrong control request - unknown command "{command}"')
        if self.s.finishing:
            return protocol.error("Finish request already requested")
        self.s.finish_after_all(answer_after_done=True)
        return protocol.ok(message=f"{FINISH_CONTROL} command accepted")

    def r_finish(self, req: dict) -> dict:
        if self.s.finishing:
            return protocol.error("Finish request already requested")
        self.s.finish_after_all()
        return protocol.ok({"when": "0s"})

    def r_register(self, req: dict) -> dict:
        check_entity_request(req, "register", "manager", ("id", "address", "resources"))
        return protocol.error("Register manager request not supported in this kind of manager (direct)")

    def r_notify(self, req: dict) -> dict:
        check_entity_request(req, "notify", "job", ("name", "state", "attributes"))
        return protocol.error("Operation not supported")


def system_info(service) -> dict:
    now = datetime.now()
    return {
        "InstanceId": service.instance_id,
        "Started": str(datetime.fromtimestamp(service.started)),
        "Generated": str(now),
        "Uptime": str(now - datetime.fromtimestamp(service.started)),
        "Zmqaddress": service.zmq_address,
        "Ifaces": service.interface_names,
        "StatusPublisher": service.pub_address,
        "Host": socket.gethostname(),
        "Account": getpass.getuser(),
        "Wd": str(service.wd),
        "PythonVersion": sys.version.replace("\n", " "),
        "Python": sys.executable,
        "Platform": platform.system().lower() if sys.platform.startswith("linux") else sys.platform,
        "Pid": os.getpid(),
    }
