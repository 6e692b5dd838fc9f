"""What the agent needs to start one task: argv, environment delta, wd, streams, CPUs, wall time.

The environment travels in two parts: "env", the same for every task of a job on the same slots
(the agent caches its merge with its own environment), and "tenv", the variables of this task alone
(QCG_PM_STEP_ID, QCG_PM_ITERATION), which win over both.

Built from the job's execution spec, its allocation and the launch-time variables.
No full environment is sent: only the variables that differ from the agent's base.
"""
import hashlib
import os
import shlex

from ..core.variables import substitute
from . import models, slurm

BASH = "/bin/bash"
MAX_STEM_BYTES = 200  # of a task file's name before its suffix: under the 255 a file name may have


class TaskContext:
    """What is the same for every task of this manager."""

    def __init__(self, root_wd: str, step_prefix: str, base_env: dict, cpu_maps: dict, binding: bool,
                 slurm_env: bool = False, srun_steps: bool = False):
        self.root_wd = root_wd
        self.step_prefix = step_prefix
        self.base_env = base_env  # extra variables every task gets (e.g. QCG_PM_ZMQ_ADDRESS)
        self.cpu_maps = cpu_maps  # node name -> list of OS CPU ids that slot i maps onto (see _cpus)
        self.binding = binding
        self.slurm_env = slurm_env  # give tasks SLURM_* variables describing their own allocation
        self.srun_steps = srun_steps  # --disable-nl: every task is an srun step on its own nodes
        self.spec_cache: dict = {}  # (job seq, node, slots) -> a built spec to copy (see build)

    # Specs are cached: every change of what they are built from goes through these two.
    def update_env(self, variables: dict) -> None:
        self.base_env.update(variables)
        self.spec_cache.clear()

    def set_node_cpus(self, node: str, cpus: list) -> None:
        self.cpu_maps[node] = cpus
        self.spec_cache.clear()


def _launch_values(task, ctx: TaskContext) -> dict:
    job = task.job
    shares = task.alloc.shares
    it = task.it
    return {
        "root_wd": ctx.root_wd,
        "ncores": sum(len(s[1]) for s in shares),
        "nnodes": len(shares),
        "nlist": ",".join(s[0].name for s in shares),
        "it": it if job.iterative else "",
        "itval": job.spec.iteration.value(it) if job.iterative else "",
    }


def _command(ex, subst) -> list[str]:
    """argv of the task: the program itself, or bash for scripts, modules and venvs."""
    prefix = []
    if ex.modules:
        prefix.append("module load " + " ".join(shlex.quote(subst(m)) for m in ex.modules))
    if ex.venv:
        prefix.append(f"source {shlex.quote(os.path.join(subst(ex.venv), 'bin', 'activate'))}")
    # a login shell costs ~100 ms of CPU: only `module` needs one (it comes from /etc/profile.d)
    shell = [BASH, "-l", "-c"] if ex.modules else [BASH, "-c"]
    if ex.script is not None:
        if not prefix:
            return shell + [subst(ex.script)]
        return shell + [" && ".join(prefix) + " && {\n" + subst(ex.script) + "\n}"]
    argv = [subst(ex.exec), *(subst(a) for a in ex.args)]
    if not prefix:
        return argv
    # the program and its args travel as "$@": no quoting problems
    return shell + [" && ".join(prefix) + ' && exec "$@"', "qcg-task", *argv]


def build(task, ctx: TaskContext) -> dict:
    """The agent's spec of a task. Tasks of one job on the same slots differ only in their step id
    and iteration: their spec is built once and copied (the manager's per-task cost halves)."""
    job = task.job
    ex = job.spec.execution
    shares = task.alloc.shares
    if ex.templated or len(shares) > 1 or shares[0][2] or ex.model in ("openmpi", "srunmpi"):
        spec = _build(task, ctx)
    else:
        key = (job.seq, shares[0][0].name, tuple(shares[0][1]))
        template = ctx.spec_cache.get(key)
        if template is None:
            if len(ctx.spec_cache) >= 50_000:
                ctx.spec_cache.clear()
            template = ctx.spec_cache[key] = _build(task, ctx)
        spec = dict(template)
    # the agent caches its merge of the shared "env"; only "tenv" is new for every task
    spec["tenv"] = _own_env(task, ctx)
    return spec


def _own_env(task, ctx: TaskContext) -> dict:
    own = {"QCG_PM_STEP_ID": f"{ctx.step_prefix}{task.tid:x}"}
    if task.job.iterative:
        own["QCG_PM_ITERATION"] = str(task.it)
    return own


def _build(task, ctx: TaskContext) -> dict:
    job = task.job
    ex = job.spec.execution
    if ex.templated:
        values = _launch_values(task, ctx)
        subst = lambda text: substitute(text, values, launch=True)  # noqa: E731
    else:
        subst = _identity
    wd = os.path.join(ctx.root_wd, subst(ex.wd)) if ex.wd else ctx.root_wd
    shares = task.alloc.shares
    ncores = sum(len(s[1]) for s in shares)
    env = dict(ctx.base_env)
    env.update({
        "QCG_PM_NNODES": str(len(shares)),
        "QCG_PM_NODELIST": ",".join(s[0].name for s in shares),
        "QCG_PM_NPROCS": str(ncores),
        "QCG_PM_NTASKS": str(ncores),
        "QCG_PM_TASKS_PER_NODE": ",".join(str(len(s[1])) for s in shares),
    })
    gpus = [g for s in shares for g in s[2]]
    env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus)) if gpus else None
    cpus = None
    if ctx.binding:
        cpus = _cpus(shares[0], ctx)
        if cpus and ncores > 1:
            env["QCG_PM_CPU_SET"] = ",".join(map(str, cpus))
    argv = _command(ex, subst)
    hostfile = None
    if len(shares) > 1 or ex.model in ("openmpi", "srunmpi"):
        hostfile = task_file(wd, job.name, task.it if job.iterative else None, ".hostfile")
        _write(hostfile, slurm.hostfile_text(shares))
    if ctx.slurm_env:
        env.update(slurm.task_environment(shares, hostfile))
    argv, model_env = models.wrap(ex, argv, shares, hostfile, lambda share: _cpus(share, ctx))
    env.update(model_env)
    if ctx.srun_steps and ex.model != "srunmpi":
        argv = models.srun_step(argv, shares, job.spec.resources.wt)
    for name, value in ex.env:
        env[name] = subst(value)
    spec = {"argv": argv, "env": env, "wd": wd}
    for stream in ("stdin", "stdout", "stderr"):
        path = getattr(ex, stream)
        if path:
            spec[stream] = os.path.join(wd, subst(path))
    if cpus and len(cpus) < len(ctx.cpu_maps[shares[0][0].name]):
        spec["cpus"] = cpus  # narrower than what the agent has: bind (else the task inherits it all)
    if job.spec.resources.wt:
        spec["wt"] = job.spec.resources.wt
    return spec


def _cpus(share, ctx: TaskContext) -> list[int] | None:
    """OS CPUs of a node's slots: slot i is the node agent's i-th CPU. A node offering more slots
    than its agent has CPUs (virtual nodes) gives every task all of those CPUs: pinning 32 slots
    onto 2 CPUs only stops the kernel from balancing. Never a CPU id the agent does not have."""
    cpu_map = ctx.cpu_maps.get(share[0].name)
    if not cpu_map:
        return None
    if share[0].total > len(cpu_map):
        return sorted(cpu_map)
    return sorted(cpu_map[slot] for slot in share[1])


def _identity(text):
    return text


def task_file(wd: str, name: str, it: int | None, suffix: str) -> str:
    """`<wd>/.<job>[-<it>]<suffix>`, as upstream names a task's hostfile. A name too long for a file
    name keeps its first 100 bytes and gets a hash of the whole; a name with a '/' (checked away at
    submit, so only an old journal has one) has it replaced: the file never leaves `wd`."""
    stem = name if it is None else f"{name}-{it}"
    if "/" in stem or len(stem.encode()) > MAX_STEM_BYTES:
        digest = hashlib.sha1(stem.encode()).hexdigest()[:16]
        stem = stem.replace("/", "_").encode()[:100].decode(errors="ignore") + "-" + digest
    return os.path.join(wd, f".{stem}{suffix}")


def _write(path: str, text: str) -> None:
    """Hostfiles of multi-node tasks (rare: not worth a round trip through the agent)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def program_name(spec: dict) -> str:
    return os.path.basename(spec["argv"][0])
