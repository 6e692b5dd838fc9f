"""Tests against a real local Slurm cluster (scripts/slurm-cluster.sh).

The module fixture starts (or reuses) a 4 nodes x 4 CPUs cluster with
``scripts/slurm-cluster.sh start 4 4`` and exports ``SLURM_CONF`` into
``os.environ``.  The cluster is deliberately left running afterwards so that
other Slurm tests can reuse it; stop it with ``scripts/slurm-cluster.sh stop``.

These tests never skip: if Slurm cannot be installed, or the cluster does not
come up, they fail with the script's output (which includes the daemon logs).
The fixture and helpers are the ones every Slurm test uses (tests/slurm_helpers.py).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from slurm_helpers import CPUS, NODE_NAMES, NODES, clean_env, slurm_cluster, slurm_log_tail  # noqa: F401 (fixture)
from slurm_helpers import cluster_script as _script


def run(cmd: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Run a Slurm client command; fail the test (with logs) unless it exits 0."""
    try:
        proc = subprocess.run(
            cmd,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kw,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{cmd} timed out after {timeout}s\n{exc.stdout}\n{exc.stderr}\n{slurm_log_tail()}")
    if proc.returncode != 0:
        pytest.fail(
            f"{cmd} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\n{slurm_log_tail()}"
        )
    return proc


def _node_states() -> dict[str, tuple[str, int]]:
    out = run(["sinfo", "-h", "-N", "-o", "%N %T %c"]).stdout
    states = {}
    for line in out.splitlines():
        name, state, cpus = line.split()
        states[name] = (state, int(cpus))
    return states


def test_start_is_idempotent(slurm_cluster):
    state = Path(slurm_cluster).parent.parent
    pid_before = (state / "run" / "slurmctld.pid").read_text().strip()
    proc = _script("start", str(NODES), str(CPUS), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "already running" in proc.stderr
    assert (state / "run" / "slurmctld.pid").read_text().strip() == pid_before
    status = _script("status", timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr


def test_sinfo_lists_four_idle_nodes(slurm_cluster):
    # jobs of earlier tests may still be completing: give them a moment
    deadline = time.monotonic() + 20
    while True:
        states = _node_states()
        if all(s == "idle" for s, _ in states.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert states == {n: ("idle", CPUS) for n in NODE_NAMES}


def test_srun_runs_on_every_node(slurm_cluster):
    out = run(["srun", f"-N{NODES}", f"-n{NODES}", "printenv", "SLURMD_NODENAME"]).stdout
    assert sorted(out.split()) == NODE_NAMES


def test_salloc_two_nodes_with_step_inside(slurm_cluster):
    script = (
        'echo "NODELIST=$SLURM_JOB_NODELIST"; '
        'srun -N2 -n2 printenv SLURMD_NODENAME | sed "s/^/STEP=/"'
    )
    out = run(["salloc", "-Q", "-N2", "bash", "-c", script]).stdout.split()
    nodelist = [w.split("=", 1)[1] for w in out if w.startswith("NODELIST=")]
    steps = sorted(w.split("=", 1)[1] for w in out if w.startswith("STEP="))
    assert len(nodelist) == 1 and nodelist[0], out
    assert len(steps) == 2 and len(set(steps)) == 2, out
    assert set(steps) <= set(NODE_NAMES)
    # the step's nodes are exactly the allocation's nodes
    expanded = run(["scontrol", "show", "hostnames", nodelist[0]]).stdout.split()
    assert sorted(expanded) == steps


def test_sbatch_job_completes(slurm_cluster, tmp_path):
    out_file = tmp_path / "job.out"
    job_id = run(
        [
            "sbatch", "--parsable", "-N2", "-o", str(out_file),
            "--wrap", "echo start; srun printenv SLURMD_NODENAME; echo done",
        ]
    ).stdout.strip().split(";")[0]
    assert job_id.isdigit(), job_id

    # poll rather than `sbatch --wait` (it sleeps 2 s, then 8 s, between checks)
    deadline = time.monotonic() + 60
    info = ""
    while time.monotonic() < deadline:
        info = run(["scontrol", "show", "job", "-o", job_id]).stdout
        if "JobState=COMPLETED" in info or "JobState=FAILED" in info:
            break
        time.sleep(0.1)
    assert "JobState=COMPLETED" in info and "ExitCode=0:0" in info, info + slurm_log_tail()

    lines = out_file.read_text().split()
    assert lines[0] == "start" and lines[-1] == "done", lines
    assert sorted(lines[1:-1]) == ["n1", "n2"], lines
