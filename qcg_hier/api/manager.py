"""`Manager` and `LocalManager`: the client of a running service (upstream's surface).

Every call has a timeout: a dead or unreachable service gives `ConnectionError` within
seconds. `wait4`/`wait4all` are driven by the service's status events; a rare re-check
of the status covers events lost on the way.
"""
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson
import zmq

from ..auth import ENV_ADDRESS, Credentials, UntrustedPathError, read_service_dir
from ..service.servicedir import find_service_dirs
from .errors import ConnectionError, InternalError, ServiceError, TimeoutElapsed, WrongArgumentsError
from .jobinfo import JobInfo
from .jobs import Jobs

FINAL_STATES = ("SUCCEED", "FAILED", "CANCELED", "OMITTED")
DEFAULT_PORT = 5555


def _names(names) -> list[str]:
    if isinstance(names, str):
        return [names]
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
        return list(names)
    raise WrongArgumentsError("job names must be a name or a non-empty list of names")


def resolve_address(address=None, open_ok: bool = False) -> tuple[str, Credentials | None]:
    """(zmq address, credentials) from an address, a directory, the environment or the cwd.

    What is found in a directory is used only if the directory and its files are this user's
    alone, and only with keys, unless `open_ok` (cfg `{"auth": "none"}`): a service without keys
    found in a directory may be another user's."""
    try:
        return _resolve(address, open_ok)
    except UntrustedPathError as exc:
        raise ConnectionError(str(exc)) from None


def _resolve(address, open_ok: bool) -> tuple[str, Credentials | None]:
    if address is None:
        env_address = os.environ.get(ENV_ADDRESS)
        if env_address:
            return env_address, Credentials.from_env()
        address = os.getcwd()
    text = str(address)
    if "://" in text:
        env_creds = Credentials.from_env() if os.environ.get(ENV_ADDRESS) == text else None
        return text, env_creds
    path = Path(text)
    if path.is_dir():
        dirs = find_service_dirs(path)
        for service_dir in dirs:
            if (service_dir / "address").exists():
                found, credentials = read_service_dir(service_dir)
                if credentials is None and not open_ok:
                    raise ConnectionError(f"the service in {service_dir} has no keys (it runs without "
                                          f"authentication): pass cfg={{'auth': 'none'}} to connect anyway")
                return found, credentials
        raise ConnectionError(f"no running service found under {path} (no .qcgpjm-service-*/address)")
    host, _, port = text.partition(":")
    return f"tcp://{host}:{port or DEFAULT_PORT}", None


class Manager:
    def __init__(self, address=None, cfg=None):
        self._init_connection(*resolve_address(address, (cfg or {}).get("auth") == "none"), cfg)

    def clone(self) -> "Manager":
        """Another connection to the same service (for another thread: sockets are not thread-safe)."""
        other = Manager.__new__(Manager)
        other._init_connection(self.address, self.credentials, self.cfg)
        return other

    def _init_connection(self, address: str, credentials, cfg) -> None:
        self.cfg = dict(cfg or {})
        self.request_timeout = float(self.cfg.get("request_timeout", 30.0))
        self.connect_timeout = float(self.cfg.get("connect_timeout", 5.0))
        self.recheck = float(self.cfg.get("poll_delay", 2.0))
        self.address, self.credentials = address, credentials
        self._ctx = zmq.Context.instance()
        self._lock = threading.RLock()
        self._sock = None
        self._sub = None
        self.pub_address = None
        self._connect()

    # ------------------------------------------------------------ transport
    def _socket(self, kind) -> zmq.Socket:
        sock = self._ctx.socket(kind)
        sock.linger = 0
        if self.credentials is not None:
            self.credentials.secure_client(sock)
        return sock

    def _connect(self) -> None:
        self._sock = self._socket(zmq.DEALER)
        self._sock.connect(self.address)
        status = self._send({"request": "status"}, self.connect_timeout)
        self.pub_address = ((status.get("data") or {}).get("System") or {}).get("StatusPublisher")
        if self.pub_address:
            self._sub = self._socket(zmq.SUB)
            for topic in (b"IFI", b"JFI", b"NOJ"):
                self._sub.setsockopt(zmq.SUBSCRIBE, topic)
            self._sub.connect(self.pub_address)

    def subscribe(self, topic: str) -> None:
        """Also receive this status topic (IST, JST: state changes) on the event socket, if any."""
        if self._sub is not None:
            self._sub.setsockopt(zmq.SUBSCRIBE, topic.encode())

    def _send(self, request: dict, timeout: float | None = None) -> dict:
        timeout = self.request_timeout if timeout is None else timeout
        with self._lock:
            if self._sock is None:
                raise ConnectionError("not connected (finished or cleaned up)")
            self._sock.send_multipart([b"", orjson.dumps(request)])
            if not self._sock.poll(int(timeout * 1000)):
                # a late reply must not be taken for the next one: start a fresh socket
                self._sock.close(0)
                self._sock = self._socket(zmq.DEALER)
                self._sock.connect(self.address)
                raise ConnectionError(f"no reply from the service at {self.address} within {timeout:g} s "
                                      f"(request {request.get('request')})")
            frames = self._sock.recv_multipart()
        try:
            return orjson.loads(frames[-1])
        except orjson.JSONDecodeError:
            raise InternalError("the service sent a reply that is not JSON") from None

    def send_request(self, request: dict) -> dict:
        return self._send(request)

    def _call(self, request: dict, need_data: bool = True):
        reply = self._send(request)
        if reply.get("code", 1) != 0:
            raise ConnectionError(f"Request failed - {reply.get('message')}")
        if need_data and "data" not in reply:
            raise InternalError("Missing response data")
        return reply.get("data")

    # ------------------------------------------------------------ requests
    def resources(self) -> dict:
        return self._call({"request": "resourcesInfo"})

    def submit(self, jobs: Jobs) -> list[str]:
        if not isinstance(jobs, Jobs) or not len(jobs):
            raise WrongArgumentsError("submit takes a non-empty Jobs")
        return self._call({"request": "submit", "jobs": jobs.jobs()})["jobs"]

    def list(self) -> dict:
        return self._call({"request": "listJobs"}).get("jobs", {})

    def status(self, names) -> dict:
        return self._call({"request": "jobStatus", "jobNames": _names(names)})

    def info(self, names, **kwargs) -> dict:
        request = {"request": "jobInfo", "jobNames": _names(names)}
        if kwargs:
            request["params"] = kwargs
        return self._call(request)

    def info_parsed(self, names, **kwargs) -> dict:
        data = self.info(names, **kwargs)
        out = {}
        for name, entry in data.get("jobs", {}).items():
            if entry.get("status") != 0:
                raise ConnectionError(f"Request failed - {entry.get('message')}")
            out[name] = JobInfo.from_job(entry["data"])
        return out

    def remove(self, names) -> dict:
        return self._call({"request": "removeJob", "jobNames": _names(names)})

    def cancel(self, names) -> dict:
        return self._call({"request": "cancelJob", "jobNames": _names(names)})

    def system_status(self) -> dict:
        return self._call({"request": "status"})

    def finish(self) -> None:
        try:
            self._call({"request": "finish"}, need_data=False)
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        with self._lock:
            for sock in (self._sock, self._sub):
                if sock is not None:
                    sock.close(0)
            self._sock = self._sub = None

    @staticmethod
    def is_status_finished(status: str) -> bool:
        return status in FINAL_STATES

    # ------------------------------------------------------------ waiting
    def _states(self, names) -> dict:
        out = {}
        for name, entry in self.status(names).get("jobs", {}).items():
            if entry.get("status") != 0:
                raise ConnectionError(f"Request failed - {entry.get('message')}")
            out[name] = entry["data"]["status"]
        return out

    def _next_event(self, timeout: float):
        """(topic, body) of the next status event, or None after `timeout` seconds."""
        if self._sub is None:
            time.sleep(min(timeout, self.recheck))
            return None
        if not self._sub.poll(max(int(timeout * 1000), 0)):
            return None
        topic, _, body = self._sub.recv().partition(b" ")
        try:
            return topic.decode(), orjson.loads(body)
        except orjson.JSONDecodeError:
            return None

    def _drop_old_events(self) -> None:
        """Events queued before a wait are about states its first status query already sees; one of
        them could name an earlier job of the same name (removed, then submitted again)."""
        while self._sub is not None and self._sub.poll(0):
            self._sub.recv()

    def wait4(self, names, timeout=None) -> dict:
        names = _names(names)
        self._drop_old_events()
        deadline = None if timeout is None else time.monotonic() + timeout
        result = {}
        pending = set(names)
        while pending:
            for name, state in self._states(sorted(pending)).items():
                if state in FINAL_STATES:
                    result[name] = state
                    pending.discard(name)
            until_recheck = time.monotonic() + self.recheck
            while pending:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise TimeoutElapsed(f"jobs {sorted(pending)} not finished within {timeout} s")
                limit = until_recheck if deadline is None else min(until_recheck, deadline)
                if now >= limit:
                    break
                event = self._next_event(limit - now)
                if event is None:
                    continue
                topic, body = event
                name = body.get("job") if topic == "JFI" else f"{body.get('job')}:{body.get('it')}"
                if name in pending and body.get("state") in FINAL_STATES:
                    result[name] = body["state"]
                    pending.discard(name)
        return {name: result[name] for name in names}

    def wait4all(self, timeout=None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._call({"request": "status", "options": {"allJobsFinished": True}})["AllJobsFinished"]:
            wait = self.recheck if deadline is None else min(self.recheck, deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutElapsed(f"not all jobs finished within {timeout} s")
            end = time.monotonic() + wait
            while time.monotonic() < end:
                event = self._next_event(end - time.monotonic())
                if event is not None and event[0] == "NOJ":
                    break

    def wait4_any_job_finish(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutElapsed(f"no job finished within {timeout} s")
            event = self._next_event(self.recheck if left is None else min(left, self.recheck))
            if event and event[0] == "JFI":
                return event[1].get("job"), event[1].get("state")


class LocalManager(Manager):
    """Starts a service as a subprocess (adding `--net`) and connects once it answers."""

    def __init__(self, server_args=None, cfg=None):
        cfg = dict(cfg or {})
        args = [str(a) for a in (server_args or [])]
        if "--net" not in args:
            args.append("--net")
        if "--id" not in args:
            args += ["--id", f"local.{os.getpid()}.{uuid.uuid4().hex[:6]}"]
        wd = Path(args[args.index("--wd") + 1]) if "--wd" in args else Path(cfg.get("wdir", "."))
        if "--wd" not in args:
            args += ["--wd", str(wd)]
        instance_id = args[args.index("--id") + 1]
        if "--auth" in args and args[args.index("--auth") + 1:][:1] == ["none"]:
            cfg.setdefault("auth", "none")  # it was asked for an open service: connect without keys
        self._stderr = tempfile.TemporaryFile()
        # the service's stdin is a pipe whose only writer is this process: when it ends, however it
        # ends (kill -9 too), the service sees the pipe close and stops, killing its tasks
        self.process = subprocess.Popen([sys.executable, "-m", "qcg_hier", "--exit-on-stdin-close", *args],
                                        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr)
        service_dir = wd / f".qcgpjm-service-{instance_id}"
        self._wait_for_address(service_dir / "address", float(cfg.get("init_timeout", 60)))
        try:
            super().__init__(str(service_dir), cfg)
        except ConnectionError:
            # the service may die after advertising its address: say why, and leave no service behind
            if self.process.poll() is not None:
                raise self._exited() from None
            self.kill_manager_process()
            raise

    def _exited(self) -> ServiceError:
        self._stderr.seek(0)
        return ServiceError(f"service exited with code {self.process.returncode}: "
                            f"{self._stderr.read().decode(errors='replace').strip()[-2000:]}")

    def _wait_for_address(self, path: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.process.poll() is not None:
                raise self._exited()
            if time.monotonic() > deadline:
                self.kill_manager_process()
                raise ServiceError(f"Service not started in {timeout} s")
            time.sleep(0.002)

    def finish(self) -> None:
        try:
            super().finish()
        except ConnectionError:
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.kill_manager_process()
            self.process.wait(10)

    def kill_manager_process(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
