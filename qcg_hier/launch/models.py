"""Execution models: how a task's command runs over its allocation.

* `default`: the program once, on the first node of the allocation, bound to that node's cores.
* `threads`: the same, with OMP_NUM_THREADS set to the cores of that node.
* `srunmpi`: an srun step on exactly the allocated nodes and cores (`--exact`, one rank per
  core, placed by SLURM_HOSTFILE with `-m arbitrary`).
* `openmpi`: `mpirun --rankfile <wd>/.<job>.rankfile` (or `model_opts.mpirun`), one rankfile
  line per slot of the allocation, as upstream; without binding `mpirun -n <cores>`.
* `intelmpi`: Intel MPI's `mpirun` with one `-host` argument set per node and its pinning list.
`model_opts.mpirun_args` / `srun_args` are inserted before the program (intelmpi: before the
first argument set, as global options).

Binding is on when the nodes' CPUs are known (`node_cpus(share)` gives a list): the manager
learns them from the agents only when it binds.
"""
import os

# what upstream's intelmpi model gives Intel MPI's srun bootstrap (outside its debug mode)
INTELMPI_BOOTSTRAP_ARGS = "-v --overcommit --oversubscribe --mem-per-cpu=0"


def _opts(ex) -> dict:
    return dict(ex.model_opts)


def _binding_cpus(shares, node_cpus) -> list | None:
    """The OS CPUs of every share, or None when any is unknown (no binding)."""
    per_share = [node_cpus(share) for share in shares]
    return None if any(not cpus for cpus in per_share) else per_share


def rankfile_text(shares, per_share_cpus) -> str:
    """Open MPI rankfile: `rank <i>=<node> slot=<cpu>`, ranks numbered along the allocation.
    A node whose slots each have a CPU gives rank j its j-th CPU; a node offering more slots
    than its agent has CPUs (virtual nodes) gives every rank all of them, as for other tasks."""
    lines = []
    for share, cpus in zip(shares, per_share_cpus):
        nslots = len(share[1])
        for j in range(nslots):
            slot = str(cpus[j]) if len(cpus) == nslots else ",".join(map(str, cpus))
            lines.append(f"rank {len(lines)}={share[0].name} slot={slot}\n")
    return "".join(lines)


def rankfile_path(hostfile: str) -> str:
    """`<wd>/.<job>[-<it>].rankfile`, next to the task's hostfile."""
    base = hostfile[:-len(".hostfile")] if hostfile.endswith(".hostfile") else hostfile
    return base + ".rankfile"


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def wrap(ex, argv: list, shares, hostfile: str | None, node_cpus) -> tuple[list, dict]:
    """(argv, extra environment) of the task under its execution model (None: remove the variable).
    The openmpi model writes its rankfile next to `hostfile`."""
    model = ex.model
    opts = _opts(ex)
    ncores = sum(len(s[1]) for s in shares)
    names = [s[0].name for s in shares]
    if model == "threads":
        return argv, {"OMP_NUM_THREADS": str(len(shares[0][1]))}
    if model == "srunmpi":
        # with `-m arbitrary`, -w lists one entry per task (a file name: one line per task), not the nodes
        slots = hostfile or ",".join(s[0].name for s in shares for _ in s[1])
        return (["srun", "--exact", "-N", str(len(names)), "-n", str(ncores), "-w", slots,
                 "-m", "arbitrary", "--kill-on-bad-exit=1", "-Q", *opts.get("srun_args", ()), *argv], {})
    if model == "openmpi":
        return _openmpi(opts, argv, shares, hostfile, node_cpus, ncores)
    if model == "intelmpi":
        return _intelmpi(opts, argv, shares, node_cpus, ncores)
    return argv, {}


def _openmpi(opts, argv, shares, hostfile, node_cpus, ncores):
    # Inside an allocation mpirun takes the nodes and slots from the task's SLURM_NODELIST and
    # SLURM_TASKS_PER_NODE (its own allocation) and starts one orted per node with srun
    # (SLURM_OVERLAP=1 lets that step share the CPUs of running tasks). SLURM_HOSTFILE must not
    # reach that srun: it has no -w when every node of the list is used, so srun would take the
    # hostfile as an arbitrary distribution, one line per daemon, and put two daemons on the
    # first node (measured: a crashed orted or "topology information for node n2 is missing",
    # then a hang). The ranks never see mpirun's environment, so nothing else loses it.
    env = {"SLURM_HOSTFILE": None}
    cpus = _binding_cpus(shares, node_cpus)
    if cpus is not None and hostfile:
        rankfile = rankfile_path(hostfile)
        _write(rankfile, rankfile_text(shares, cpus))
        launch = ["--rankfile", rankfile]
        # the slot numbers are OS CPU ids (the agents' affinity), not Open MPI's logical core
        # indices: with this, slot=N is the core holding OS CPU N (the same where they coincide)
        env["OMPI_MCA_rmaps_rank_file_physical"] = "1"
    else:
        launch = ["-n", str(ncores)]
    mpirun = opts.get("mpirun", "mpirun")
    return [mpirun, *launch, *opts.get("mpirun_args", ()), *argv], env


def _intelmpi(opts, argv, shares, node_cpus, ncores):
    env = {"I_MPI_HYDRA_BOOTSTRAP_EXEC_EXTRA_ARGS": INTELMPI_BOOTSTRAP_ARGS}
    cpus = _binding_cpus(shares, node_cpus)
    if cpus is None:
        sets = ["-n", str(ncores), *argv]
    else:
        # one argument set per node, each with its own program: hydra wants an executable in every
        # set (upstream wrote the program once, after the last set: MPICH's hydra crashes on that)
        sets = []
        for share, node_list in zip(shares, cpus):
            if sets:
                sets.append(":")
            sets += ["-host", share[0].name, "-n", str(len(share[1])),
                     "-env", "I_MPI_PIN_PROCESSOR_LIST=" + ",".join(map(str, node_list)), *argv]
        env["I_MPI_PIN"] = "1"
    mpirun = opts.get("mpirun", "mpirun")
    return [mpirun, *opts.get("mpirun_args", ()), *sets], env


def srun_step(argv: list, shares, wt: float | None) -> list:
    """`--disable-nl`: the task as an srun step on its own first node and cores (not on the
    manager's node, as upstream did)."""
    node, slots = shares[0][0], shares[0][1]
    step = ["srun", "--exact", "-N", "1", "-n", "1", "-c", str(len(slots)), "-w", node.name, "-Q",
            "--kill-on-bad-exit=1"]
    if wt:
        step += ["--time", f"0:{int(wt + 0.999)}"]
    return step + argv
