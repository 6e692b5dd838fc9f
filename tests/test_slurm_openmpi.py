"""The `openmpi` model with Debian's Open MPI, in the local Slurm cluster.

A small C program, compiled here with `mpicc.openmpi`, runs as jobs of `"model": "openmpi"`
across 2 nodes inside `salloc -N2 --ntasks-per-node=2 qcg-pm-service ...` (no mocks: the
model's real `mpirun --rankfile` starts one orted per node with srun). Every rank prints its
rank, `$SLURMD_NODENAME` (all virtual nodes are this host) and the CPUs it is bound to
(sched_getaffinity); the test checks them against the allocation in jobs.report and the
rankfile the model wrote.

The allocation has 2 CPUs per node, so on a host with at least 2 CPUs every slot has a CPU of
its own (slot i is the agents' i-th CPU) and each rank must be bound to exactly that CPU.

The test sets `model_opts.mpirun` to Open MPI's launcher: with MPICH installed as well, the
generic `mpirun` is whichever the alternatives system picked (the unit tests check that the
model's default command is `mpirun`).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from slurm_helpers import apt_install, describe, salloc_service, slurm_cluster  # noqa: F401 (fixture)

FINISH = {"request": "control", "command": "finishAfterAllTasksDone"}
SALLOC = ("-N2", "--ntasks-per-node=2")  # 2 nodes x 2 CPUs (CR_Core): 2 slots per node
SLOTS_PER_NODE = 2

SOURCE = r"""
#define _GNU_SOURCE
#include <mpi.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    int rank = 0, size = 0, sum = 0;
    char cpus[8192] = "";
    const char *node = getenv("SLURMD_NODENAME");
    cpu_set_t set;

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    /* every rank must really talk to the others */
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0)
        MPI_Abort(MPI_COMM_WORLD, 2);
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &set))
            snprintf(cpus + strlen(cpus), sizeof cpus - strlen(cpus), "%s%d", cpus[0] ? "," : "", c);
    printf("rank %d of %d sum %d node %s cpus %s\n", rank, size, sum, node ? node : "-", cpus);
    MPI_Finalize();
    return 0;
}
"""
LINE = re.compile(r"rank (\d+) of (\d+) sum (\d+) node (\S+) cpus ([\d,]+)")
AGENT_READY = re.compile(r"agent (\S+) ready on \S+ \(pid \d+, cpus \[([\d, ]*)\]\)")


def _ensure_openmpi() -> tuple[str, str]:
    """(mpicc.openmpi, mpirun.openmpi), installing Debian's openmpi-bin + libopenmpi-dev if missing."""
    if not (shutil.which("mpicc.openmpi") and shutil.which("mpirun.openmpi")):
        apt_install("openmpi-bin", "libopenmpi-dev")
    cc, mpirun = shutil.which("mpicc.openmpi"), shutil.which("mpirun.openmpi")
    assert cc and mpirun, "mpicc.openmpi / mpirun.openmpi still missing after apt-get install"
    return cc, mpirun


def _allocation(entry: dict) -> list[tuple[str, list[int]]]:
    """[(node, slots)] of a report entry, in allocation order (`n1[0:1],n2[1]`)."""
    return [(node, [int(s) for s in slots.split(":")])
            for node, slots in re.findall(r"([^,\[\]]+)\[([^\]]*)\]", entry["runtime"]["allocation"])]


def _expected_ranks(alloc, agent_cpus: dict) -> list[tuple[str, str]]:
    """(node, CPUs) of each rank: ranks follow the allocation, slot i of a node is its agent's
    i-th CPU; a node with more slots than CPUs gives every rank all of them."""
    ranks = []
    for node, slots in alloc:
        cpus = agent_cpus[node]
        for slot in sorted(slots):
            ranks.append((node, ",".join(map(str, cpus)) if SLOTS_PER_NODE > len(cpus) else str(cpus[slot])))
    return ranks


def test_openmpi_model_places_ranks_on_the_allocated_nodes_and_cores(slurm_cluster, tmp_path):
    cc, mpirun = _ensure_openmpi()
    src = tmp_path / "where.c"
    src.write_text(SOURCE)
    binary = tmp_path / "where"
    proc = subprocess.run([cc, "-Wall", "-o", str(binary), str(src)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    session_tmp = tmp_path / "ompi-tmp"  # Open MPI's session directories, to check none is left
    session_tmp.mkdir()
    env = {
        # jobs run as root here
        "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        # the sandbox's virtual nodes are one host: Open MPI's shared-memory transport (vader)
        # names its segments by host name and local rank, so local rank 0 of n1 and of n2 would
        # share one and crash (tests/data/MPI_NOTES.md); TCP between all ranks instead
        "OMPI_MCA_btl": "self,tcp",
        "TMPDIR": str(session_tmp),
    }
    execution = {"exec": str(binary), "model": "openmpi", "model_opts": {"mpirun": mpirun}, "env": env}
    jobs = [
        # two iterations at once, one core on each of 2 nodes: one gets slot 0, the other slot 1
        {"name": "pair", "iteration": {"stop": 2}, "resources": {"numNodes": {"exact": 2}, "numCores": 1, "wt": "15s"},
         "execution": dict(execution, stdout="pair.${it}.out", stderr="pair.${it}.err")},
        # then every slot: 2 cores on each of 2 nodes
        {"name": "full", "resources": {"numNodes": {"exact": 2}, "numCores": 2, "wt": "15s"},
         "execution": dict(execution, stdout="full.out", stderr="full.err")},
    ]
    run = salloc_service(tmp_path / "wd", [{"request": "submit", "jobs": jobs}, FINISH], timeout=90,
                         salloc_args=SALLOC)
    report = run.report()
    agent_cpus = {node: [int(c) for c in cpus.split(",")] for node, cpus in AGENT_READY.findall(run.log_text)}
    assert len(agent_cpus) == 2 and all(agent_cpus.values()), f"agents' CPUs not in service.log\n{describe(run)}"

    placements = {}
    for name, stem, ncores in (("pair:0", "pair-0", 2), ("pair:1", "pair-1", 2), ("full", "full", 4)):
        entry = report[name]
        out_name = "full" if name == "full" else f"pair.{name[-1]}"
        err = (run.wd / f"{out_name}.err").read_text() if (run.wd / f"{out_name}.err").exists() else ""
        assert entry["state"] == "SUCCEED", f"{name}: {entry}\n{err}\n{describe(run)}"
        assert entry["runtime"]["pname"] == os.path.basename(mpirun), entry["runtime"]
        alloc = _allocation(entry)
        assert [node for node, _ in alloc] == sorted(agent_cpus) and all(
            len(slots) == ncores // 2 and set(slots) <= set(range(SLOTS_PER_NODE)) for _, slots in alloc), alloc
        expected = _expected_ranks(alloc, agent_cpus)
        # the rankfile the model wrote, next to the hostfile: one line per slot of the allocation
        rankfile = (run.wd / f".{stem}.rankfile").read_text().splitlines()
        assert rankfile == [f"rank {i}={node} slot={cpus}" for i, (node, cpus) in enumerate(expected)], \
            (rankfile, entry["runtime"]["allocation"], agent_cpus)
        # and where the ranks really ran
        lines = (run.wd / f"{out_name}.out").read_text().splitlines()
        seen = {}
        for line in lines:
            m = LINE.fullmatch(line)
            assert m, f"{name}: unexpected line {line!r}\n{lines}\n{err}"
            rank, size, total, node, cpus = m.groups()
            assert int(size) == ncores and int(total) == ncores * (ncores - 1) // 2, line
            assert rank not in seen, f"{name}: rank {rank} twice\n{lines}"
            seen[rank] = (node, cpus)
        assert [seen.get(str(r)) for r in range(ncores)] == expected, \
            f"{name}: ranks ran at {seen}, the allocation {entry['runtime']['allocation']} gives {expected}"
        placements[name] = alloc
    # the two iterations ran side by side on different slots: the rankfile follows the allocation
    assert placements["pair:0"] != placements["pair:1"], placements
    assert {tuple(s) for _, s in placements["pair:0"] + placements["pair:1"]} == {(0,), (1,)}, placements
    assert not list(session_tmp.glob("ompi.*/pid.*")), "mpirun left its session directory"
