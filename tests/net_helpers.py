"""Helpers for the network-interface tests (`--net`): start `qcg-pm-service` in the background,
talk to it with raw ZeroMQ, and clean up whatever it left running.

`start_net_service(wd, auth="none"|"curve", ...)` starts the service as its own process group and
waits for `<wd>/.qcgpjm-service-<id>/address`; the returned `NetService` knows the address, the
credentials (curve), and can send raw requests (`request`) from a fresh DEALER socket.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import zmq

from conftest import leftover_processes, service_command, wait_for  # noqa: F401 (shared with the tests)

FINAL = ("SUCCEED", "FAILED", "CANCELED", "OMITTED")


def clean_env(extra: dict | None = None) -> dict:
    """Our environment without Slurm variables nor any manager address/keys of an outer service."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SRUN_", "SALLOC_", "SBATCH_", "QCG_PM_"))}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if extra:
        env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (by pid, never by name)."""
    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


class NetService:
    def __init__(self, wd: Path, instance_id: str, proc: subprocess.Popen, argv: list):
        self.wd = Path(wd)
        self.instance_id = instance_id
        self.proc = proc
        self.argv = argv
        self.sdir = self.wd / f".qcgpjm-service-{instance_id}"
        self.address: str | None = None
        self.credentials: dict | None = None
        self._ctx = zmq.Context.instance()
        self._descendants: list[psutil.Process] = []

    # ----- files -----
    @property
    def log_text(self) -> str:
        path = self.sdir / "service.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def describe(self) -> str:
        lines = self.log_text.splitlines()[-30:]
        return f"command: {' '.join(self.argv)}\nrc: {self.proc.poll()}\n--- service.log tail\n" + "\n".join(
            x[:400] for x in lines)

    def client_env(self) -> dict:
        """QCG_PM_ZMQ_* variables a task would get."""
        env = {"QCG_PM_ZMQ_ADDRESS": self.address}
        if self.credentials:
            env.update({"QCG_PM_ZMQ_SERVER_KEY": self.credentials["server_public"],
                        "QCG_PM_ZMQ_CLIENT_PUBLIC": self.credentials["client_public"],
                        "QCG_PM_ZMQ_CLIENT_SECRET": self.credentials["client_secret"]})
        return env

    # ----- raw zmq -----
    def socket(self, kind=zmq.DEALER, curve: bool = True, address: str | None = None) -> zmq.Socket:
        sock = self._ctx.socket(kind)
        sock.linger = 0
        if curve and self.credentials:
            sock.curve_serverkey = self.credentials["server_public"].encode()
            sock.curve_publickey = self.credentials["client_public"].encode()
            sock.curve_secretkey = self.credentials["client_secret"].encode()
        sock.connect(address or self.address)
        return sock

    def request_raw(self, payload: bytes, timeout: float = 10.0, sock: zmq.Socket | None = None) -> dict | None:
        """Send one frame (after the REQ-style empty delimiter) from a DEALER; the decoded reply or None."""
        own = sock is None
        sock = sock or self.socket()
        try:
            sock.send_multipart([b"", payload])
            if not sock.poll(int(timeout * 1000)):
                return None
            return json.loads(sock.recv_multipart()[-1])
        finally:
            if own:
                sock.close(0)

    def request(self, req, timeout: float = 10.0, sock: zmq.Socket | None = None) -> dict:
        payload = req if isinstance(req, bytes) else json.dumps(req).encode()
        reply = self.request_raw(payload, timeout, sock)
        assert reply is not None, f"no reply within {timeout} s to {payload[:200]!r}\n{self.describe()}"
        return reply

    def data(self, req, timeout: float = 10.0) -> dict:
        reply = self.request(req, timeout)
        assert reply.get("code") == 0, f"request {req} failed: {reply}"
        return reply.get("data")

    def states(self, names) -> dict:
        jobs = self.data({"request": "jobStatus", "jobNames": list(names)})["jobs"]
        return {n: e["data"]["status"] if e["status"] == 0 else None for n, e in jobs.items()}

    def wait_final(self, names, timeout: float = 30) -> dict:
        names = list(names)
        out = {}

        def done() -> bool:
            out.update(self.states(names))
            return all(s in FINAL for s in out.values())

        assert wait_for(done, timeout, 0.05), f"jobs not final within {timeout} s: {out}"
        return out

    # ----- lifecycle -----
    def remember_descendants(self) -> None:
        try:
            self._descendants = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass

    def stop(self) -> None:
        """Kill the service (if still running), its agents and their tasks."""
        if self.proc.poll() is None:
            self.remember_descendants()
            kill_tree(self.proc.pid)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        for p in self._descendants:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        for p in leftover_processes(self.sdir):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


def start_net_service(wd: Path, *, auth: str = "none", nodes: str | None = "8", args=(), instance_id: str = "net",
                      env: dict | None = None, timeout: float = 30) -> NetService:
    wd = Path(wd)
    wd.mkdir(parents=True, exist_ok=True)
    argv = service_command() + ["--net", "--auth", auth, "--wd", str(wd), "--id", instance_id]
    if nodes:
        argv += ["--nodes", nodes]
    argv += [str(a) for a in args]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=clean_env(env), cwd=wd, start_new_session=True)
    svc = NetService(wd, instance_id, proc, argv)
    address_file = svc.sdir / "address"
    deadline = time.monotonic() + timeout
    while not address_file.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"service exited {proc.returncode}: {proc.stderr.read().decode(errors='replace')}\n"
                               f"{svc.describe()}")
        if time.monotonic() > deadline:
            svc.stop()
            raise RuntimeError(f"service did not write its address within {timeout} s\n{svc.describe()}")
        time.sleep(0.01)
    svc.address = address_file.read_text().strip()
    creds = svc.sdir / "credentials.json"
    if auth == "curve":
        assert wait_for(creds.exists, 5), "a curve service has no credentials.json"
        svc.credentials = json.loads(creds.read_text())
    return svc


def stop_service(svc: NetService | None) -> None:
    if svc is not None:
        svc.stop()


def sigkill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
