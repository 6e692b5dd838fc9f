"""Helpers for tests that run `qcg-pm-service` inside allocations of the local Slurm cluster.

* `slurm_cluster`: module fixture; starts (or reuses) the 4 x 4 cluster of
  `scripts/slurm-cluster.sh`, installing Slurm first when it is missing, and exports
  `SLURM_CONF`. Never skips: a cluster that cannot start fails the test with the log tail.
* `salloc_service(wd, requests, ...)`: runs `salloc -Q -N4 --ntasks-per-node=4
  qcg-pm-service --file-path ... --wd wd --id test ...` to the end and returns a
  `ServiceRun` (see conftest). On a time-out the allocation is cancelled (`scancel`
  by its unique job name) and every process left is killed before the test fails.
* `start_salloc_service(...)` / `finish_salloc(...)`: the same in two halves, for tests
  that act while the service runs.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (SERVICE_ID, ServiceRun, assert_no_leftovers, env_file, leftover_processes,  # noqa: F401
                      service_command, wait_for)
from net_helpers import kill_tree

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "slurm-cluster.sh"
NODES = 4
CPUS = 4
NODE_NAMES = [f"n{i}" for i in range(1, NODES + 1)]
SBIN_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
_names = itertools.count()


def cluster_script(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout, check=False)


def slurm_log_tail(lines: int = 15) -> str:
    state = Path(os.environ.get("QCG_SLURM_DIR", "/tmp/qcg-hier-slurm"))
    parts = []
    for log in sorted((state / "log").glob("*.log")):
        text = log.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"----- {log}\n" + "\n".join(text))
    return "\n".join(parts)


def clean_env(extra: dict | None = None) -> dict:
    """This process's environment without job variables of an outer allocation, plus SLURM_CONF."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SRUN_", "SALLOC_", "SBATCH_"))}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env["SLURM_CONF"] = os.environ["SLURM_CONF"]
    if extra:
        env.update(extra)
    return env


@pytest.fixture(scope="module")
def slurm_cluster() -> str:
    """A running 4 x 4 cluster (started if needed, left running for other tests); returns SLURM_CONF."""
    if shutil.which("slurmctld", path=SBIN_PATH) is None:
        proc = cluster_script("install", timeout=600)
        if proc.returncode != 0:
            pytest.fail(f"slurm-cluster.sh install failed:\n{proc.stdout}\n{proc.stderr}")
    try:
        proc = cluster_script("start", str(NODES), str(CPUS))
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"slurm-cluster.sh start timed out: {exc}\n{slurm_log_tail()}")
    if proc.returncode != 0:
        pytest.fail(f"slurm-cluster.sh start {NODES} {CPUS} failed (exit {proc.returncode}):\n"
                    f"{proc.stdout}\n{proc.stderr[-4000:]}\n{slurm_log_tail()}")
    words = cluster_script("env").stdout.split()
    conf = next((w.split("=", 1)[1] for w in words if w.startswith("SLURM_CONF=")), None)
    if not conf or not Path(conf).is_file():
        pytest.fail(f"slurm-cluster.sh env gave no usable SLURM_CONF: {words}")
    os.environ["SLURM_CONF"] = conf
    return conf


# ---------------------------------------------------------------- the service in an allocation
def _write_requests(wd: Path, requests) -> Path:
    wd.mkdir(parents=True, exist_ok=True)
    path = wd.parent / f"{wd.name}-reqs.json"
    path.write_text(json.dumps(requests))
    return path


def start_salloc_service(wd: Path, requests, args=(), salloc_args=("-N4", "--ntasks-per-node=4")) -> ServiceRun:
    wd = Path(wd)
    req_file = _write_requests(wd, requests)
    job_name = f"qcgtest-{os.getpid()}-{next(_names)}"
    argv = (["salloc", "-Q", *salloc_args, "-J", job_name] + service_command()
            + ["--file-path", str(req_file), "--wd", str(wd), "--id", SERVICE_ID, "--nl-init-timeout", "40"]
            + [str(a) for a in args])
    run = ServiceRun(wd=wd, argv=argv)
    run.job_name = job_name
    run.t0 = time.monotonic()
    run.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=clean_env(), cwd=wd.parent, start_new_session=True)
    return run


def describe(run: ServiceRun) -> str:
    """run.describe() plus the agents' srun output and the end of each agent log."""
    parts = [run.describe()]
    for path in sorted(run.sdir.glob("agents.out")) + sorted(run.sdir.glob("agent-*.log")):
        lines = path.read_text(errors="replace").splitlines()[-10:]
        parts.append(f"--- {path.name}\n" + "\n".join(lines))
    return "\n".join(parts)


def finish_salloc(run: ServiceRun, timeout: float = 60, expect_rc: int | None = 0) -> ServiceRun:
    try:
        run.stdout, run.stderr = run.proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        subprocess.run(["scancel", "--name", run.job_name], env=clean_env(), capture_output=True, timeout=30)
        kill_tree(run.proc.pid)
        run.stdout, run.stderr = run.proc.communicate()
        run.returncode = run.proc.returncode
        run.elapsed = time.monotonic() - run.t0
        for p in leftover_processes(run.sdir):
            p.kill()
        pytest.fail(f"salloc + qcg-pm-service did not finish within {timeout} s\n{describe(run)}\n"
                    f"{slurm_log_tail()}")
    run.elapsed = time.monotonic() - run.t0
    run.returncode = run.proc.returncode
    if expect_rc is not None and run.returncode != expect_rc:
        pytest.fail(f"salloc + qcg-pm-service exited {run.returncode}, expected {expect_rc}\n{describe(run)}")
    # the allocation is gone: Slurm has ended the agents' step; nothing of this service may remain
    assert_no_leftovers(run.sdir, 10)
    return run


def salloc_service(wd: Path, requests, args=(), timeout: float = 60, expect_rc: int | None = 0,
                   salloc_args=("-N4", "--ntasks-per-node=4")) -> ServiceRun:
    return finish_salloc(start_salloc_service(wd, requests, args, salloc_args), timeout, expect_rc)


# ---------------------------------------------------------------- reading results
def first_node(entry: dict) -> str:
    """The first node of a report entry's allocation, e.g. `n3` of `n3[1:2],n4[0:1]`."""
    return re.match(r"([^\[,]+)\[", entry["runtime"]["allocation"]).group(1)


def alloc_nodes(entry: dict) -> dict[str, int]:
    """{node: number of slots} of a report entry's allocation."""
    return {node: len(slots.split(":"))
            for node, slots in re.findall(r"([^,\[\]]+)\[([^\]]*)\]", entry["runtime"]["allocation"])}


def apt_install(*packages: str) -> None:
    """Debian packages a test needs and the machine lacks (root only; a clear failure otherwise)."""
    if os.geteuid() != 0:
        pytest.fail(f"{' '.join(packages)} missing and this test is not root: apt-get install {' '.join(packages)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", *packages]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
