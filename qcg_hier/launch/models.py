"""Execution models: how a task's command runs over its allocation.

* `default`: the program once, on the first node of the allocation, bound to that node's cores.
* `threads`: the same, with OMP_NUM_THREADS set to the cores of that node.
* `srunmpi`: an srun step on exactly the allocated nodes and cores (`--exact`, one rank per
  core, placed by SLURM_HOSTFILE with `-m arbitrary`).
* `openmpi`: `mpirun` (or `model_opts.mpirun`) with `-H node:slots,...` of the allocation.
* `intelmpi`: Intel MPI's `mpirun` with one `-host` segment per node and its pinning list.
`model_opts.mpirun_args` / `srun_args` are inserted before the program.
"""


def _opts(ex) -> dict:
    return dict(ex.model_opts)


def wrap(ex, argv: list, shares, hostfile: str | None, node_cpus) -> tuple[list, dict]:
    """(argv, extra environment) of the task under its execution model."""
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
        # -H node:slots,... as Open MPI's mpirun takes it inside an allocation (it launches its
        # daemons with srun; SLURM_TASKS_PER_NODE and SLURM_OVERLAP in the task's environment fit)
        mpirun = opts.get("mpirun", "mpirun")
        hosts = ",".join(f"{s[0].name}:{len(s[1])}" for s in shares)
        return ([mpirun, "-n", str(ncores), "-H", hosts, *opts.get("mpirun_args", ()), *argv], {})
    if model == "intelmpi":
        mpirun = opts.get("mpirun", "mpirun")
        segments = []
        for share in shares:
            if segments:
                segments.append(":")
            cpus = ",".join(map(str, node_cpus(share) or share[1]))
            segments += ["-host", share[0].name, "-n", str(len(share[1])),
                         "-env", "I_MPI_PIN_PROCESSOR_LIST", cpus, *argv]
        return ([mpirun, *opts.get("mpirun_args", ()), *segments], {"I_MPI_PIN": "1"})
    return argv, {}


def srun_step(argv: list, shares, wt: float | None) -> list:
    """`--disable-nl`: the task as an srun step on its own first node and cores (not on the
    manager's node, as upstream did)."""
    node, slots = shares[0][0], shares[0][1]
    step = ["srun", "--exact", "-N", "1", "-n", "1", "-c", str(len(slots)), "-w", node.name, "-Q",
            "--kill-on-bad-exit=1"]
    if wt:
        step += ["--time", f"0:{int(wt + 0.999)}"]
    return step + argv
