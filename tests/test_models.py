"""Command lines and environments of the MPI execution models (qcg_hier.launch.models).

Checked against upstream's rules (QCG-PilotJob 0.14.2, `executionschema.py::SlurmExecution`;
reference section 4.7), with our deliberate differences named where they are tested:

* intelmpi, binding: `mpirun -host n1 -n k1 -env I_MPI_PIN_PROCESSOR_LIST=<cpus> ... : -host n2
  ...`, `I_MPI_PIN=1`; always `I_MPI_HYDRA_BOOTSTRAP_EXEC_EXTRA_ARGS='-v --overcommit
  --oversubscribe --mem-per-cpu=0'`; without binding `-n <ncores>`; `model_opts.mpirun` replaces
  the command. Ours differs in two places: the program follows every argument set (upstream
  wrote it once, after the last set, which hydra cannot run: MPICH's hydra crashes on it; Intel's
  documentation writes a program in every set), and `mpirun_args` come right after the command,
  as global options (upstream put them after the last set, so they would belong to it alone).
* openmpi, binding: `mpirun --rankfile <wd>/.<job>.rankfile [mpirun_args] <program>`, one
  `rank i=<node> slot=<cpu>` line per slot; without binding `mpirun -n <ncores>`. Ours adds
  `OMPI_MCA_rmaps_rank_file_physical=1` (the slot numbers are OS CPU ids) and removes
  SLURM_HOSTFILE from mpirun's environment (see models.py; measured in test_slurm_openmpi.py).

Binding is on when the manager knows the nodes' CPUs (`node_cpus` returns them).
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from qcg_hier.core.job import Job, Task
from qcg_hier.core.jobdesc import parse_job
from qcg_hier.core.nodespec import NodeSpec
from qcg_hier.core.resources import Allocation, Node
from qcg_hier.launch import models
from qcg_hier.launch.taskspec import TaskContext, build

BOOTSTRAP = "-v --overcommit --oversubscribe --mem-per-cpu=0"  # upstream's value, outside debug mode
PROG = ["./prog", "a b", "c"]


class Ex:
    def __init__(self, model, **model_opts):
        self.model = model
        self.model_opts = model_opts


def _shares(*per_node, total=4):
    """Shares on n1, n2, ...: node i gets slots [first_i .. first_i + k_i) (first slot 1 on n1, 0 elsewhere)."""
    shares = []
    for i, k in enumerate(per_node):
        first = 1 if i == 0 else 0
        shares.append((NodeSpec(f"n{i + 1}", total), list(range(first, first + k)), ()))
    return shares


# OS CPUs of each node's slots: slot s of n1 is CPU 10+s, of n2 CPU 20+s (never the slot number itself)
CPU_MAPS = {"n1": [10, 11, 12, 13], "n2": [20, 21, 22, 23]}


def bound(share):
    return [CPU_MAPS[share[0].name][s] for s in share[1]]


def unbound(share):
    return None


# ================================================================ intelmpi
def test_intelmpi_with_binding_one_argument_set_per_node():
    ex = Ex("intelmpi", mpirun_args=["-genv", "X=1"])
    argv, env = models.wrap(ex, PROG, _shares(3, 1), "/w/.j.hostfile", bound)
    assert argv == ["mpirun", "-genv", "X=1",
                    "-host", "n1", "-n", "3", "-env", "I_MPI_PIN_PROCESSOR_LIST=11,12,13", *PROG, ":",
                    "-host", "n2", "-n", "1", "-env", "I_MPI_PIN_PROCESSOR_LIST=20", *PROG]
    assert env == {"I_MPI_PIN": "1", "I_MPI_HYDRA_BOOTSTRAP_EXEC_EXTRA_ARGS": BOOTSTRAP}


def test_intelmpi_one_node_and_virtual_nodes():
    argv, env = models.wrap(Ex("intelmpi"), PROG, _shares(2), None, bound)
    assert argv == ["mpirun", "-host", "n1", "-n", "2", "-env", "I_MPI_PIN_PROCESSOR_LIST=11,12", *PROG]
    assert env["I_MPI_PIN"] == "1"
    # a virtual node with fewer CPUs than slots: node_cpus gives all of them, the list is those
    argv, _ = models.wrap(Ex("intelmpi"), PROG, _shares(3), None, lambda share: [0, 1])
    assert argv[argv.index("-env") + 1] == "I_MPI_PIN_PROCESSOR_LIST=0,1" and argv[argv.index("-n") + 1] == "3"


def test_intelmpi_without_binding_counts_cores():
    ex = Ex("intelmpi", mpirun_args=["-ppn", "2"])
    argv, env = models.wrap(ex, PROG, _shares(3, 1), "/w/.j.hostfile", unbound)
    assert argv == ["mpirun", "-ppn", "2", "-n", "4", *PROG]
    assert env == {"I_MPI_HYDRA_BOOTSTRAP_EXEC_EXTRA_ARGS": BOOTSTRAP}  # no I_MPI_PIN without binding
    # one node of a bound allocation unknown: no pinning list can be right, so none
    argv, env = models.wrap(ex, PROG, _shares(3, 1), None, lambda s: bound(s) if s[0].name == "n1" else None)
    assert "-host" not in argv and "I_MPI_PIN" not in env


def test_intelmpi_model_opts_mpirun_replaces_the_command():
    ex = Ex("intelmpi", mpirun="/opt/intel/mpi/bin/mpirun")
    for node_cpus in (bound, unbound):
        argv, _ = models.wrap(ex, PROG, _shares(1, 1), None, node_cpus)
        assert argv[0] == "/opt/intel/mpi/bin/mpirun" and argv.count("/opt/intel/mpi/bin/mpirun") == 1
        assert "mpirun" not in argv


def test_intelmpi_command_runs_under_a_real_hydra(tmp_path):
    """Our argument sets under MPICH's hydra (Intel MPI's mpirun is a hydra too): `-env NAME=VALUE`
    reaches each set's ranks, `mpirun_args` parse as global options, every set runs its program.
    MPICH takes hosts only globally, so the `-host` pairs are left out here; the fork launcher
    runs the ranks on this machine."""
    hydra = shutil.which("mpiexec.mpich")
    if hydra is None:
        pytest.fail("mpiexec.mpich is missing: apt-get install mpich (scripts/run-tests.sh does)")
    prog = ["sh", "-c", 'echo "$I_MPI_PIN_PROCESSOR_LIST $I_MPI_PIN $0 $1"', "a b", "c"]
    ex = Ex("intelmpi", mpirun=hydra, mpirun_args=["-launcher", "fork"])
    argv, extra = models.wrap(ex, prog, _shares(2, 1), None, bound)
    while "-host" in argv:
        at = argv.index("-host")
        del argv[at:at + 2]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "I_MPI_", "HYDRA_"))}
    env.update({k: v for k, v in extra.items() if v is not None})
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, (argv, proc.stdout, proc.stderr)
    assert sorted(proc.stdout.splitlines()) == ["11,12 1 a b c", "11,12 1 a b c", "20 1 a b c"], proc.stdout


# ================================================================ openmpi
def test_openmpi_with_binding_writes_a_rankfile(tmp_path):
    hostfile = tmp_path / ".j.hostfile"
    ex = Ex("openmpi", mpirun_args=["--mca", "btl", "self,tcp"])
    argv, env = models.wrap(ex, PROG, _shares(3, 1), str(hostfile), bound)
    rankfile = tmp_path / ".j.rankfile"
    assert argv == ["mpirun", "--rankfile", str(rankfile), "--mca", "btl", "self,tcp", *PROG]
    assert rankfile.read_text() == "rank 0=n1 slot=11\nrank 1=n1 slot=12\nrank 2=n1 slot=13\nrank 3=n2 slot=20\n"
    assert env == {"SLURM_HOSTFILE": None, "OMPI_MCA_rmaps_rank_file_physical": "1"}


def test_openmpi_rankfile_on_virtual_nodes_gives_every_rank_the_node_cpus(tmp_path):
    # more slots than CPUs: each rank gets all the CPUs, as every task does there
    argv, _ = models.wrap(Ex("openmpi"), PROG, _shares(3), str(tmp_path / ".v-2.hostfile"), lambda s: [0, 1])
    assert argv[:3] == ["mpirun", "--rankfile", str(tmp_path / ".v-2.rankfile")]
    assert (tmp_path / ".v-2.rankfile").read_text() == "".join(f"rank {r}=n1 slot=0,1\n" for r in range(3))


def test_openmpi_without_binding_counts_cores(tmp_path):
    argv, env = models.wrap(Ex("openmpi", mpirun_args=["-x", "A"]), PROG, _shares(3, 1),
                            str(tmp_path / ".j.hostfile"), unbound)
    assert argv == ["mpirun", "-n", "4", "-x", "A", *PROG]
    assert env == {"SLURM_HOSTFILE": None}
    assert not list(tmp_path.iterdir())  # no rankfile


def test_openmpi_model_opts_mpirun_replaces_the_command(tmp_path):
    ex = Ex("openmpi", mpirun="/usr/bin/mpirun.openmpi")
    argv, _ = models.wrap(ex, PROG, _shares(2), str(tmp_path / ".j.hostfile"), bound)
    assert argv[0] == "/usr/bin/mpirun.openmpi" and "mpirun" not in argv


# ================================================================ through the task spec
def _task(desc, shares, tmp_path, cpu_maps, it=0):
    job = Job(parse_job(desc), 1, ("QUEUED", 0.0))
    alloc = Allocation([(Node(spec), slots, (), 0) for spec, slots in shares])
    ctx = TaskContext(str(tmp_path), "x.", {}, cpu_maps, binding=bool(cpu_maps), slurm_env=True)
    return build(Task(5, job, it, alloc, None, 0, []), ctx)


def test_openmpi_task_spec_in_an_allocation(tmp_path):
    desc = {"name": "mpi", "iteration": {"stop": 4},
            "execution": {"exec": "./prog", "args": ["x"], "model": "openmpi",
                          "env": {"OMPI_MCA_btl": "self,tcp"}}}
    shares = [(NodeSpec("n1", 4), [1, 2]), (NodeSpec("n2", 4), [3])]
    spec = _task(desc, shares, tmp_path, dict(CPU_MAPS), it=3)
    rankfile = tmp_path / ".mpi-3.rankfile"
    assert spec["argv"] == ["mpirun", "--rankfile", str(rankfile), "./prog", "x"]
    assert rankfile.read_text() == "rank 0=n1 slot=11\nrank 1=n1 slot=12\nrank 2=n2 slot=23\n"
    assert (tmp_path / ".mpi-3.hostfile").read_text() == "n1\nn1\nn2\n"
    env = spec["env"]
    # mpirun reads its nodes and slots from the task's own allocation...
    assert env["SLURM_NODELIST"] == "n1,n2" and env["SLURM_TASKS_PER_NODE"] == "2,1"
    assert env["SLURM_OVERLAP"] == "1"
    # ...and SLURM_HOSTFILE is removed (None) so the orteds' srun is not laid out by it
    assert "SLURM_HOSTFILE" in env and env["SLURM_HOSTFILE"] is None
    assert env["OMPI_MCA_rmaps_rank_file_physical"] == "1" and env["OMPI_MCA_btl"] == "self,tcp"


def test_the_job_env_wins_over_the_model_env(tmp_path):
    desc = {"name": "impi", "execution": {"exec": "./prog", "model": "intelmpi",
                                          "env": {"I_MPI_HYDRA_BOOTSTRAP_EXEC_EXTRA_ARGS": "--exclusive",
                                                  "I_MPI_PIN": "0"}}}
    spec = _task(desc, [(NodeSpec("n1", 4), [0, 1])], tmp_path, dict(CPU_MAPS))
    assert spec["argv"] == ["mpirun", "-host", "n1", "-n", "2", "-env", "I_MPI_PIN_PROCESSOR_LIST=10,11", "./prog"]
    assert spec["env"]["I_MPI_HYDRA_BOOTSTRAP_EXEC_EXTRA_ARGS"] == "--exclusive" and spec["env"]["I_MPI_PIN"] == "0"
    # without the job's say: upstream's values
    desc["execution"].pop("env")
    spec = _task(desc, [(NodeSpec("n1", 4), [0, 1])], tmp_path, dict(CPU_MAPS))
    assert spec["env"]["I_MPI_HYDRA_BOOTSTRAP_EXEC_EXTRA_ARGS"] == BOOTSTRAP and spec["env"]["I_MPI_PIN"] == "1"


def test_without_binding_the_task_spec_counts_cores(tmp_path):
    desc = {"name": "nb", "execution": {"exec": "./prog", "model": "intelmpi"}}
    shares = [(NodeSpec("n1", 4), [0, 1]), (NodeSpec("n2", 4), [0])]
    assert _task(desc, shares, tmp_path, {})["argv"] == ["mpirun", "-n", "3", "./prog"]
    desc["execution"]["model"] = "openmpi"
    assert _task(desc, shares, tmp_path, {})["argv"] == ["mpirun", "-n", "3", "./prog"]
    assert not list(tmp_path.glob("*.rankfile"))
