"""`qcg-pm-service`: the upstream command line, plus a few options of ours."""
import asyncio
import os
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import click

from . import __version__
from .core.errors import ResourceSpecError
from .core.nodespec import NodeSpec, parse_nodes_option
from .launch.slurmenv import in_allocation
from .service.fileinterface import FileInterface
from .service.naming import SERVICE_DIR_PREFIX, default_instance_id
from .auth import UntrustedPathError
from .service.servicedir import make_service_dir, setup_logging

NOT_YET = {
    "enable_proc_stats": "--enable-proc-stats",
    "enable_rt_stats": "--enable-rt-stats",
}


def _resources_file(opts) -> list[NodeSpec]:
    """--slurm-resources-file: upstream's JSON resources (`{"type", "nodes": [{"name", "total_cores"}]}`)."""
    import orjson

    from .governor.childlink import node_specs
    try:
        data = orjson.loads(Path(opts.slurm_resources_file).read_bytes())
        nodes = node_specs(data)
    except (OSError, orjson.JSONDecodeError, ValueError) as exc:
        raise ResourceSpecError(f"--slurm-resources-file {opts.slurm_resources_file}: {exc}") from None
    opts.slurm = data.get("type", "SLURM") == "SLURM" and in_allocation()
    return nodes


def _local_gpus() -> tuple:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return tuple(g.strip() for g in visible.split(",") if g.strip()) if visible else ()


def resolve_nodes(opts) -> list[NodeSpec]:
    """--nodes; else the Slurm allocation we run in; else this machine with the CPUs this process may use."""
    from .launch import slurm

    gpus = tuple(g.strip() for g in opts.gpus.split(",") if g.strip()) if opts.gpus is not None else _local_gpus()
    opts.slurm = False
    if opts.slurm_resources_file:
        nodes = _resources_file(opts)
    elif opts.nodes:
        nodes = parse_nodes_option(opts.nodes, gpus)
    elif opts.resources != "local" and in_allocation():
        opts.slurm = True
        nodes = slurm.allocation_nodes(begin=opts.slurm_limit_nodes_range_begin,
                                       end=opts.slurm_limit_nodes_range_end)
        if not nodes:
            raise ResourceSpecError("no nodes left in the allocation after --slurm-limit-nodes-range-*")
        nodes = [NodeSpec(n.name, n.cores, n.core_ids, gpus) for n in nodes]
    else:
        cpus = sorted(os.sched_getaffinity(0))
        nodes = [NodeSpec(name=socket.gethostname(), cores=len(cpus), gpus=gpus)]
    mem = opts.mem_per_node
    if mem is None:
        if opts.slurm:
            mem = int(os.environ.get("SLURM_MEM_PER_NODE", "0") or 0)  # 0: not accounted
        else:
            mem = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1 << 20) // len(nodes)
    return [NodeSpec(n.name, n.cores, n.core_ids, n.gpus, mem, n.tags) for n in nodes]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--net", is_flag=True, help="Enable the network (ZeroMQ) interface.")
@click.option("--net-port", type=int, help="Port of the network interface (default: random in the range).")
@click.option("--net-pub-port", type=int, help="Port of the status publisher (default: random in the range).")
@click.option("--net-port-min", type=int, default=None, help="Lowest random port (default 2222).")
@click.option("--net-port-max", type=int, default=None, help="Highest random port (default 9999).")
@click.option("--net-bind", default=None,
              help="Address to bind the network interface to (default 127.0.0.1; '*' for all interfaces).")
@click.option("--auth", type=click.Choice(["curve", "none"]), default="curve", show_default=True,
              help="curve: only clients holding this instance's keys are served; none: anyone (upstream's behaviour).")
@click.option("--file", "use_file", is_flag=True, help="Read requests from the file given by --file-path.")
@click.option("--file-path", default=None, help="Batch file: a JSON list of requests (implies --file).")
@click.option("--wd", default=".", show_default=True, help="Working directory; the service directory goes inside.")
@click.option("--envschema", type=click.Choice(["auto", "slurm", "common"]), default="auto", show_default=True,
              help="Task environment: QCG_PM_* always; SLURM_* in an allocation (auto), always (slurm) or never "
                   "(common).")
@click.option("--resources", type=click.Choice(["auto", "local", "slurm"]), default="auto", show_default=True,
              help="Where the nodes come from: --nodes, else the Slurm allocation (auto), or this machine (local).")
@click.option("--report-format", type=click.Choice(["json", "text", "none"]), default="json", show_default=True)
@click.option("--report-file", default="jobs.report", show_default=True, help="Report file in the service directory.")
@click.option("--nodes", default=None, help="Nodes as [name:]cores[,[name:]cores...], e.g. 8,8 or a:4,b:4.")
@click.option("--gpus", default=None, help="GPU ids on every node, e.g. 0,1 (default: $CUDA_VISIBLE_DEVICES).")
@click.option("--mem-per-node", type=int, default=None, help="Memory (MB) per node for nodeCrs.mem (default: RAM / nodes).")
@click.option("--log", "log_level", type=click.Choice(["critical", "error", "warning", "info", "debug", "notset"]),
              default="info", show_default=True)
@click.option("--system-core", is_flag=True, help="Reserve one core for the service.")
@click.option("--disable-nl", is_flag=True, help="Do not use node agents (Slurm mode).")
@click.option("--show-progress", is_flag=True, help="Show a live progress line.")
@click.option("--governor", is_flag=True,
              help="Run as a governor: no nodes of its own, work goes to child managers (as qcg-governor).")
@click.option("--parent", default=None,
              help="Join this governor as a child: its address, or its working or service directory.")
@click.option("--id", "instance_id", default=None, help="Instance id (names the service directory).")
@click.option("--tags", default=None, help="Comma separated tags of this manager (a child: jobs asking for "
                                           "tags run only on children that have them all).")
@click.option("--slurm-partition-nodes", type=int, default=None,
              help="Governor inside an allocation: one child per N nodes, started with srun.")
@click.option("--partition-nodes", type=int, default=None,
              help="Governor over --nodes: one child per N nodes, started as local processes.")
@click.option("--child-heartbeat", type=float, default=2.0, show_default=True,
              help="Seconds between governor/child heartbeats.")
@click.option("--child-timeout", type=float, default=10.0, show_default=True,
              help="A child (or governor) silent this many seconds is taken for dead.")
@click.option("--slurm-limit-nodes-range-begin", type=int, default=None,
              help="Use the allocation's nodes from this index on (0-based).")
@click.option("--slurm-limit-nodes-range-end", type=int, default=None,
              help="Use the allocation's nodes before this index.")
@click.option("--slurm-resources-file", default=None,
              help="Nodes from a JSON file {\"nodes\": [{\"name\", \"total_cores\"}]} (before any other source).")
@click.option("--resume", default=None,
              help="Resume a run from its journal: PATH is its service directory or working directory. "
                   "Its options are restored; options given again override them.")
@click.option("--journal/--no-journal", default=True, show_default=True,
              help="Keep the journal that --resume needs (off only for measuring its cost).")
@click.option("--enable-proc-stats", is_flag=True, help="[not yet supported]")
@click.option("--enable-rt-stats", is_flag=True, help="[not yet supported]")
@click.option("--wrapper-rt-stats", default=None, help="Accepted for compatibility; not used.")
@click.option("--nl-init-timeout", type=float, default=600, show_default=True, help="Seconds to wait for node agents.")
@click.option("--nl-ready-threshold", type=float, default=1.0, show_default=True,
              help="Fraction of node agents that must be ready before scheduling starts.")
@click.option("--local-agents", type=click.IntRange(1, 64), default=None,
              help="Local mode: agent processes that start the tasks, each serving some of the nodes "
                   "(default: one per node up to the usable CPUs, at most 8).")
@click.option("--nl-start-method", type=click.Choice(["slurm", "ssh"]), default="slurm", show_default=True,
              help="How node agents start (ssh: not yet supported).")
@click.option("--disable-pub", is_flag=True, help="Do not start the status publisher.")
@click.option("--exit-on-stdin-close", is_flag=True,
              help="Stop, killing every task, when standard input reaches its end: the process that started "
                   "the service and holds the pipe's other end is gone (LocalManager uses it).")
@click.option("--fake-launch", is_flag=True,
              help="BENCHMARK ONLY: every task finishes SUCCEED at once without starting a process.")
@click.version_option(__version__, "--version")
def service_main(**kw):
    """QCG-PilotJob compatible manager service (qcg-hier)."""
    opts = SimpleNamespace(**kw)
    opts.resume_records = None
    if opts.resume:
        _restore_options(opts, kw)
    if opts.nl_start_method == "ssh":
        raise click.UsageError("--nl-start-method ssh is not yet supported by this version of qcg-hier "
                               "(agents start with one srun step)")
    for key, flag in NOT_YET.items():
        value = kw.get(key)
        if value not in (None, False):
            raise click.UsageError(f"{flag} is not yet supported by this version of qcg-hier")
    _check_hierarchy(opts)
    if opts.parent:
        _leave_step_environment()
    if opts.file_path:
        opts.use_file = True
    if opts.use_file and not opts.file_path:
        opts.file_path = "qcg_pm_reqs.json"
    if any(v is not None for v in (opts.net_port, opts.net_pub_port, opts.net_port_min, opts.net_port_max,
                                   opts.net_bind)):
        opts.net = True
    opts.net_port_min = 2222 if opts.net_port_min is None else opts.net_port_min
    opts.net_port_max = 9999 if opts.net_port_max is None else opts.net_port_max
    if opts.net_port_min > opts.net_port_max:
        raise click.UsageError(f"--net-port-min {opts.net_port_min} is above --net-port-max {opts.net_port_max}")
    if not opts.use_file and not opts.net and not opts.resume:
        raise click.UsageError("no interface enabled: give --net and/or --file-path FILE")
    try:
        nodes = resolve_nodes(opts)
    except ResourceSpecError as exc:
        raise click.UsageError(str(exc))
    if opts.slurm_partition_nodes is not None and not opts.slurm:
        raise click.UsageError("--slurm-partition-nodes needs a Slurm allocation (use --partition-nodes with "
                               "--nodes outside Slurm)")
    if opts.slurm_partition_nodes is not None and opts.net_bind is None and opts.auth == "curve":
        opts.net_bind = "*"  # children on other nodes register here (CURVE guards the socket)
    _exit_now(run_service(opts, nodes))


def _exit_now(code: int) -> None:
    """Everything is written and closed: skip tearing down the heap (a million task records take
    seconds to free, for nothing)."""
    import logging
    from .socket_exit import deliver_pending
    deliver_pending()  # what sockets closed last still hold (a reply to finish, exit to children)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


STEP_VARIABLES = ("SLURM_STEP_ID", "SLURM_STEPID", "SLURM_STEP_NODELIST", "SLURM_STEP_NUM_NODES",
                  "SLURM_STEP_NUM_TASKS", "SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS", "SLURM_NPROCS",
                  "SLURM_CPUS_PER_TASK", "SLURM_CPU_BIND", "SLURM_CPU_BIND_LIST", "SLURM_CPU_BIND_TYPE",
                  "SLURM_CPU_BIND_VERBOSE", "SLURM_DISTRIBUTION", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE")


def _leave_step_environment() -> None:
    """A child started by the governor's srun runs inside a one-task step: the step's variables would
    shape its own srun (agents, MPI steps) as that step. It works in the allocation, as the governor."""
    if os.environ.get("SLURM_STEP_ID") is None:
        return
    for name in STEP_VARIABLES:
        os.environ.pop(name, None)
    for name, job_name in (("SLURM_NODELIST", "SLURM_JOB_NODELIST"), ("SLURM_NNODES", "SLURM_JOB_NUM_NODES")):
        if os.environ.get(job_name):
            os.environ[name] = os.environ[job_name]


def governor_main():
    """`qcg-governor`: the same command with --governor."""
    sys.argv.insert(1, "--governor")
    service_main()


def _check_hierarchy(opts) -> None:
    """--governor / --parent and the options that imply or exclude them."""
    if opts.slurm_partition_nodes is not None or opts.partition_nodes is not None:
        opts.governor = True
    for flag, value in (("--slurm-partition-nodes", opts.slurm_partition_nodes),
                        ("--partition-nodes", opts.partition_nodes)):
        if value is not None and value < 1:
            raise click.UsageError(f"{flag} must be at least 1, got {value}")
    if opts.slurm_partition_nodes is not None and opts.partition_nodes is not None:
        raise click.UsageError("give --slurm-partition-nodes (inside an allocation) or --partition-nodes "
                               "(local processes), not both")
    if opts.governor and opts.parent:
        raise click.UsageError("a governor cannot join another governor (--governor with --parent): the "
                               "hierarchy has two levels")
    if opts.child_timeout <= opts.child_heartbeat:
        raise click.UsageError(f"--child-timeout ({opts.child_timeout:g}) must be longer than --child-heartbeat "
                               f"({opts.child_heartbeat:g})")
    if opts.governor or opts.parent:
        opts.net = True
    if opts.parent:
        opts.journal = False  # the governor's journal is the campaign's record


def _restore_options(opts, given: dict) -> None:
    """--resume: the journal's options, except those given again on this command line."""
    from .service import journal
    from .service.servicedir import find_service_dirs

    dirs = [d for d in find_service_dirs(Path(opts.resume)) if journal.exists(d)]
    if not dirs:
        # upstream's text first (scripts match it), then what we looked for
        raise click.UsageError(f"Resume directory {opts.resume} not exists or is not valid QCG-PilotJob auxiliary "
                               f"directory (no service directory with a journal there)")
    records = journal.read(dirs[0])
    saved = records[0].get("opts") if records else None
    if not isinstance(saved, dict):
        raise click.UsageError(f"--resume: the journal in {dirs[0]} does not start with the service options")
    ctx = click.get_current_context()
    # saved after their defaults were filled in: restoring them would turn --net on (see service_main)
    derived = () if saved.get("net") else ("net_port_min", "net_port_max")
    for key, value in saved.items():
        if key in derived:
            continue
        if key in given and ctx.get_parameter_source(key) is not click.core.ParameterSource.COMMANDLINE:
            setattr(opts, key, value)
    opts.instance_id = dirs[0].name[len(SERVICE_DIR_PREFIX):]
    opts.wd = str(dirs[0].parent)
    opts.resume_records = records


GC_YOUNG_THRESHOLD = 50_000  # allocations between two young-generation passes


def run_service(opts, nodes) -> int:
    opts.wd = str(Path(opts.wd).resolve())
    if opts.file_path:
        opts.file_path = str(Path(opts.file_path).resolve())
    wd = Path(opts.wd)
    try:
        wd.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.UsageError(f"cannot create working directory {wd}: {exc}")
    instance_id = opts.instance_id or default_instance_id()
    try:
        service_dir = make_service_dir(wd, instance_id)
    except (UntrustedPathError, NotADirectoryError) as exc:
        raise click.UsageError(f"service directory: {exc}")
    if not opts.resume_records:
        # a new run with an --id used before starts clean (service.log is appended, as upstream)
        for stale in ("journal", "final_status.json", "address", "parent", opts.report_file):
            (service_dir / stale).unlink(missing_ok=True)
    logger = setup_logging(service_dir, opts.log_level)
    tags = ",".join([instance_id] + ([t for t in opts.tags.split(",") if t] if opts.tags else []))
    logger.info("service %s version v%s started %s @ %s (with tags %s)", instance_id, __version__,
                _now(), socket.gethostname(), tags)
    logger.info("log level set to: %s", opts.log_level.upper())
    logger.info("service arguments Namespace(%s)", ", ".join(f"{k}={v!r}" for k, v in vars(opts).items()
                                                             if k != "resume_records"))
    total = sum(n.cores for n in nodes)
    logger.info("available resources: %d (%d used) cores on %d nodes", total, 1 if opts.system_core else 0, len(nodes))
    if opts.net:
        network = _network(opts, service_dir)
    service = _make_service(opts, nodes, service_dir, instance_id, network.credentials if opts.net else None)
    file_position = service.replay(opts.resume_records) if opts.resume_records else -1
    file_iface = None
    if opts.use_file:
        file_iface = FileInterface(opts.file_path, resume_after=file_position)
        service.interfaces.append(file_iface)
        service.interface_names.append(file_iface.name)
    if opts.net:
        service.network = network
    if opts.show_progress:
        from .service.progress import Progress
        service.progress = Progress()
    _tune_gc()
    code = _run_loop(service.run())
    if file_iface is not None and file_iface.failed:
        return 1
    return code


def _make_service(opts, nodes, service_dir, instance_id, credentials):
    from .service.manager import ManagerService

    if not opts.governor:
        service = ManagerService(opts, nodes, service_dir, instance_id)
        if opts.parent:
            from .governor.childlink import LinkSettings
            from .governor.parentlink import ParentLink
            tags = [t for t in (opts.tags or "").split(",") if t]
            service.parent_link = ParentLink(service, opts.parent, LinkSettings(opts.child_heartbeat,
                                                                                  opts.child_timeout), tags)
        return service
    from .governor.partitions import ChildStarter
    from .governor.service import GovernorService

    per = opts.slurm_partition_nodes or opts.partition_nodes
    starter = None
    if per:
        starter = ChildStarter(nodes, per, opts, service_dir, credentials, slurm=opts.slurm_partition_nodes is not None)
    return GovernorService(opts, nodes, service_dir, instance_id, starter)


def _network(opts, service_dir):
    from .auth import Credentials
    from .service.zmqinterface import ZmqInterface

    credentials = None
    if opts.auth == "curve":
        credentials = Credentials.generate().save(service_dir)  # tasks get the client keys file's path
    else:
        Credentials.remove(service_dir)  # an earlier run's keys would mislead clients
        _warn_open(opts)
    return ZmqInterface(opts.net_bind or "127.0.0.1", opts.net_port, opts.net_port_min, opts.net_port_max,
                        opts.net_pub_port, credentials, enable_pub=not opts.disable_pub)


def _warn_open(opts) -> None:
    """--auth none: anyone who reaches the port runs commands as this user. Only an explicit
    --net-bind opens it beyond this machine; say which it is, in the log and on stderr."""
    import getpass
    import logging

    if opts.net_bind is None:
        message = ("--auth none: no authentication; the network interface binds 127.0.0.1 only (give --net-bind "
                   "to open it to other hosts: anyone who reaches it can run commands as %s)" % getpass.getuser())
    else:
        message = ("--auth none: no authentication on %s: anyone who reaches it can run commands as %s"
                   % (opts.net_bind, getpass.getuser()))
    logging.getLogger("qcg_hier").warning("%s", message)
    print(f"qcg-pm-service: warning: {message}", file=sys.stderr, flush=True)


def _tune_gc() -> None:
    """The service keeps many long-lived objects (queued jobs) and makes few reference cycles, so
    the collector's defaults (a young-generation pass every 700 allocations, and passes over the
    older generations every 7,000) would rescan the whole queue again and again during a large
    submit. What exists at start is frozen (never scanned again) and the passes are made rarer."""
    import gc
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 50, 50)


def _run_loop(coro) -> int:
    try:
        import uvloop
        return uvloop.run(coro) if hasattr(uvloop, "run") else _classic(coro, uvloop)
    except ImportError:
        return asyncio.run(coro)


def _classic(coro, uvloop) -> int:
    uvloop.install()
    return asyncio.run(coro)


def _now() -> str:
    from datetime import datetime
    return str(datetime.now())


if __name__ == "__main__":
    service_main()
