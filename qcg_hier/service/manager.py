"""The manager service: the scheduling core driven by interfaces and a launcher.

Everything runs on one asyncio loop. Work is coalesced: many events (submits,
batches of task exits) lead to one scheduling pass, which hands all new tasks to
the launcher in one batch per agent.
"""
import asyncio
import dataclasses
import logging
import os
import signal
import time
import uuid
from collections import deque
from pathlib import Path

from ..auth import client_env
from ..core.resources import ResourcePool
from ..core.scheduler import Scheduler, task_ends
from ..core.states import JobState
import sys

import zmq.asyncio

from ..launch import early_agent
from ..launch.launcher import AgentLauncher, AgentSettings, Callbacks, FakeLauncher, LocalAgents
from ..launch.slurm import SrunAgents
from .zap import ZapHandler
from .zmqinterface import advertised_host
from ..launch.taskspec import TaskContext
from . import journal, reports
from .handlers import Handlers, system_info
from .servicedir import write_final_status

log = logging.getLogger("qcg_hier")
CANCEL_GRACE = 10.0  # seconds between SIGTERM and SIGKILL of a cancelled task, as upstream
START_BEFORE_REPLY = 64  # jobs: a submit of at most this many starts its tasks before it is answered
LOST_REPORT_MESSAGE = "reported at --resume: the service died before writing this entry"
# After `finishAfterAllTasksDone` has ended the work, the network interface keeps answering this
# many seconds: upstream's service answers the request a client sends right after (its
# LocalManager.finish(), which waits for ever), ours too. Fixed: a client polling the status must
# not keep the service up.
ANSWER_AFTER_DONE = 1.0


def _small_submit(request) -> bool:
    jobs = request.get("jobs") if isinstance(request, dict) and request.get("request") == "submit" else None
    return isinstance(jobs, list) and len(jobs) <= START_BEFORE_REPLY


def _without_system_core(nodes: list) -> list:
    """--system-core: one core of the first node that has more than one is kept for the service.

    The core leaves the pool (rather than being allocated), so admission sees the cores jobs
    can really get: a job asking for every core is rejected instead of waiting forever.
    Slots bind to a node's first CPUs, so the service's core is the node's last CPU.
    """
    for i, node in enumerate(nodes):
        if node.cores > 1:
            kept = dataclasses.replace(node, cores=node.cores - 1, core_ids=tuple(node.core_ids[:node.cores - 1]))
            return nodes[:i] + [kept] + nodes[i + 1:]
    log.warning("--system-core: no node has more than one core, no core reserved for the service")
    return list(nodes)


def journal_options(config) -> dict:
    """The options a resumed service starts with (those given again override them)."""
    # the stdin watch belongs to the process that started this run, not to a resumed one
    return {k: v for k, v in vars(config).items()
            if isinstance(v, (str, int, float, bool, type(None))) and k not in ("resume", "exit_on_stdin_close")}


def _consequences(events, fin: dict) -> list:
    """The jobs OMITTED at replay (they never ran: no journal record of their own) because of jobs
    in `fin`, directly or through each other."""
    causes = {name for jobs in fin.values() for name in jobs}
    derived = [e[1] for e in events if e[0] == "job" and e[2] is JobState.OMITTED]
    found = []
    grew = True
    while grew:
        grew = False
        for job in derived:
            if job.name not in causes and any(dep.partition(":")[0] in causes for dep in job.spec.after):
                causes.add(job.name)
                found.append(job)
                grew = True
    return found


class ManagerService:
    def __init__(self, config, nodes, service_dir: Path, instance_id: str):
        self.config = config
        self.nodes_spec = list(nodes)
        self.instance_id = instance_id
        self.service_dir = service_dir
        self.wd = Path(config.wd).resolve()
        self.started = time.time()
        if config.system_core:
            nodes = _without_system_core(nodes)
        # in an allocation a node receives work once its agent is up
        self.slurm = bool(getattr(config, "slurm", False))
        self.fake = bool(config.fake_launch)
        self.pool = self._make_pool(nodes)
        self.core = Scheduler(self.pool)
        self.core.emit_progress = False  # until someone subscribes to IST/JST events
        self.handlers = Handlers(self)
        self.report = reports.ReportWriter(service_dir / config.report_file, config.report_format)
        self.journal = None
        if getattr(config, "journal", True):
            fresh = not journal.exists(service_dir)
            self.journal = journal.Journal(service_dir)
            if fresh:
                self.journal.record({"opts": journal_options(config)})
                self.journal.flush()
        self.interfaces = []
        self.interface_names = []
        self.zmq_address = None
        self.pub_address = None
        self.finishing = False
        self.interrupted = False  # by a signal or the end of stdin: see _interrupt
        self.answer_after_done = False  # finishAfterAllTasksDone: see ANSWER_AFTER_DONE
        self.progress = None
        self.network = None  # the ZmqInterface, when --net
        self.publisher = None
        self.noj_wanted = False  # someone was told "not all finished": NOJ is owed at the end
        self.events_since_noj = False  # IFI/JFI published since the last NOJ
        self.reply_delay = 0.0  # set by a handler: the network interface holds that reply back
        self._pass_pending = False
        self._accepted = deque()  # (checked batch, time) answered but not queued yet: see submit()
        self._done = asyncio.Event()
        self._loop = None
        self.exit_code = 0
        self.zap = None
        self.task_context = None
        self.launcher = None
        self.parent_link = None  # a child's link to its governor (--parent)
        self.executing_on_launch = True  # a governor's tasks execute when their child says so

    def _make_pool(self, nodes):
        return ResourcePool(nodes, ready=not self.slurm or self.config.disable_nl or self.fake)

    def _slurm_env(self) -> bool:
        """--envschema: SLURM_* task variables in an allocation (auto), always (slurm), never (common)."""
        schema = getattr(self.config, "envschema", "auto")
        return self.slurm if schema == "auto" else schema == "slurm"

    def _make_launcher(self):
        """Fake; local agents, each serving some of the nodes (local mode, or --disable-nl: tasks then
        are srun steps); or one agent per node started by a single srun step (inside an allocation)."""
        config = self.config
        callbacks = Callbacks(self.kick, self._on_finished, self._on_node_lost, self._on_node_ready,
                              self._on_fatal)
        if self.fake:
            return FakeLauncher(callbacks)
        srun_steps = self.slurm and config.disable_nl
        self.task_context = ctx = TaskContext(str(self.wd), uuid.uuid4().hex[:12], {}, {},
                                              binding=not srun_steps, slurm_env=self._slurm_env(),
                                              srun_steps=srun_steps)
        settings = AgentSettings(ready_threshold=min(max(config.nl_ready_threshold, 0.1), 1.0),
                                 init_timeout=config.nl_init_timeout)
        if self.slurm and not srun_steps:
            specs = [n for n in self.nodes_spec]
            starter = SrunAgents(specs, str(self.wd), str(self.service_dir / "agents.out"))
            routes = {node.name: node.name for node in self.pool.nodes}
            return AgentLauncher(callbacks, ctx, str(self.service_dir), routes, starter, settings, self.zap,
                                 bind_host="0.0.0.0", advertise_host=advertised_host("*"))
        names = early_agent.agent_names(early_agent.agent_count(len(self.pool.nodes),
                                                                getattr(config, "local_agents", None)))
        routes = {node.name: names[i % len(names)] for i, node in enumerate(self.pool.nodes)}
        return AgentLauncher(callbacks, ctx, str(self.service_dir), routes, LocalAgents(names), settings,
                             self.zap)

    # ------------------------------------------------------------ lifecycle
    async def run(self) -> int:
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self._on_signal, sig)
        if getattr(self.config, "exit_on_stdin_close", False):
            self._loop.add_reader(0, self._on_stdin)
        self.zap = ZapHandler(zmq.asyncio.Context.instance())
        zap_task = asyncio.ensure_future(self.zap.run())
        self.launcher = self._make_launcher()
        await self.launcher.start()
        early_agent.discard()  # started ahead for a local launch that this service does not do
        if self.network is not None:
            self._open_network()  # after the launcher: the address is advertised only by a working service
        await self._network_open()
        runners = [asyncio.ensure_future(iface.run(self)) for iface in self.interfaces]
        flusher = asyncio.ensure_future(self._flush_periodically())
        if self.progress:
            self.progress.start(self)
        await self._done.wait()
        if self.answer_after_done and self.network is not None:
            await asyncio.sleep(ANSWER_AFTER_DONE)  # the interfaces still serve meanwhile
        for runner in runners:
            runner.cancel()
        flusher.cancel()
        await self.shutdown()
        zap_task.cancel()
        self.zap.close()
        return self.exit_code

    async def _network_open(self) -> None:
        """A child registers with its governor once it answers requests itself."""
        if self.parent_link is None:
            return
        from ..governor.parentlink import ParentLinkError
        try:
            await self.parent_link.start()
        except ParentLinkError as exc:
            self.parent_link = None
            self._on_fatal(str(exc))
            return
        if self.task_context is not None:
            self.task_context.update_env(self.parent_link.task_env())

    def stop_now(self, code: int = 0) -> None:
        """Kill every task and stop (a child told to exit, or whose governor is gone)."""
        self.exit_code = self.exit_code or code
        self._cancel_all()
        self._done.set()

    async def shutdown(self) -> None:
        if self.progress:
            self.progress.stop(self)
        if self.parent_link is not None:
            self.parent_link.say_bye("stopped")
        await self.launcher.stop()
        self._process_events()
        self.report.close()
        if self.journal is not None:
            self.journal.close()
        # final status first, then the address goes: a client never finds neither
        write_final_status(self.service_dir, self.status(final=True))
        if self.network is not None:
            (self.service_dir / "address").unlink(missing_ok=True)  # nobody answers there any more
        for iface in self.interfaces:
            await iface.close()
        if self.parent_link is not None:
            await self.parent_link.close()
        log.info("service %s finished", self.instance_id)

    def _open_network(self) -> None:
        net = self.network
        net.open(self.instance_id, self.zap)
        self.interfaces.append(net)
        self.interface_names.append(net.name)
        self.zmq_address, self.pub_address, self.publisher = net.address, net.pub_address, net.publisher
        if self.task_context is not None:
            # tasks may act as application controllers and submit more jobs
            self.task_context.update_env(client_env(net.address, net.credentials))
        self._advertise()
        log.info("network interface at %s, status publisher at %s, authentication %s", net.address,
                 net.pub_address, "CURVE" if net.credentials else "none")

    def _advertise(self) -> None:
        tmp = self.service_dir / "address.tmp"
        tmp.write_text(self.zmq_address)
        tmp.replace(self.service_dir / "address")  # clients poll for it: never show a half-written file

    def subscriptions_changed(self) -> None:
        self.core.emit_progress = self.publisher.wants("IST") or self.publisher.wants("JST")

    def _on_stdin(self) -> None:
        """--exit-on-stdin-close: only the end of the input counts; anything written is ignored."""
        try:
            if os.read(0, 65536):
                return
        except BlockingIOError:
            return
        except OSError:
            pass  # unreadable: as good as closed
        self._loop.remove_reader(0)
        log.warning("standard input closed: the process that started this service is gone")
        self._interrupt()

    def _on_signal(self, sig) -> None:
        log.warning("signal %s: stopping, killing every running task (interrupted: --resume runs them again)",
                    signal.Signals(sig).name)
        self._interrupt()

    def _interrupt(self) -> None:
        """Stop now, killing the running tasks as interrupted, not cancelled (Slurm's SIGTERM at the
        time limit, scancel, ^C): nothing of them is journaled as an end, so `--resume` runs exactly
        them and the never-started work again. Their ends from the launcher are not taken."""
        if self.interrupted:
            return
        self.interrupted = True
        if self.parent_link is not None:
            self.parent_link.say_bye("signal")  # first: the governor re-queues, the kills are not cancels
        running = list(self.core.tasks.values())
        if self.journal is not None and running:
            by_job = {}
            for task in running:
                by_job.setdefault(task.job.name, []).append(task.it)
            self.journal.record({"interrupted": {job: journal.to_ranges(its) for job, its in by_job.items()}})
            self.journal.flush()
        if self.launcher is not None:
            for task in running:
                self.launcher.cancel(task, 0)
        log.warning("%d running tasks interrupted", len(running))
        self._done.set()

    def _cancel_all(self) -> None:
        now = time.time()
        for name, job in list(self.core.jobs.items()):
            if not job.state.is_final:
                try:
                    for task in self.core.cancel(name, now):
                        if self.launcher is not None:
                            self.launcher.cancel(task, 0)
                except Exception:
                    pass

    def interface_finished(self) -> None:
        """An interface has no more requests (e.g. the batch file was read to the end)."""
        self._check_done()

    def finish_after_all(self, answer_after_done: bool = False) -> None:
        self.answer_after_done |= answer_after_done
        if self.parent_link is not None:
            self.parent_link.leave()
        if not self.finishing:
            self._journal_request({"finish": True})
        self.finishing = True
        self._check_done()

    def _check_done(self) -> None:
        if self._done.is_set():
            return
        if self.parent_link is not None and not self.parent_link.detached:
            # a child ends when its governor says so, or after leaving once its last task ended
            if self.parent_link.leaving and not self.core.tasks:
                self.parent_link.say_bye("done")
                self._done.set()
            return
        interfaces_done = all(iface.finished for iface in self.interfaces)
        # a batch file is read to its end: requests after a finish request still get their replies
        reading = any(getattr(iface, "read_to_end", False) and not iface.finished for iface in self.interfaces)
        if (self.finishing or interfaces_done) and not reading and self.core.all_finished() and not self.core.tasks:
            self._done.set()

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.report.flush()

    # ------------------------------------------------------------ requests
    def handle(self, request) -> dict:
        self.after_reply()  # a request always sees every job accepted before it
        response = self.handlers.handle(request)
        if _small_submit(request):
            self._schedule_pass()  # its tasks start before its reply goes: a waiting client gains that time
        else:
            self.kick()  # after the reply (a large submit is answered first)
        return response

    def submit(self, specs, descriptions=None, descriptions_json: bytes | None = None) -> list[str]:
        """Admission and the journal record come before the reply. A large batch is queued right
        after its reply is sent (`after_reply`), before anything else is served: the client does
        not wait for the jobs' bookkeeping."""
        now = time.time()
        batch = self.core.check(specs)
        if self.journal is not None:  # recorded before the reply is sent
            if descriptions_json is not None:
                self.journal.record_json("submit", descriptions_json)
            else:
                self.journal.record({"submit": descriptions if descriptions is not None else
                                     [spec.to_dict() for spec in specs]})
            self.journal.flush()
        if len(specs) <= START_BEFORE_REPLY or not self._defer(batch, now):
            self._add(batch, now)
        return batch.names

    def _defer(self, batch, now: float) -> bool:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False  # no loop (a direct call): nothing would run the deferred part
        self._accepted.append((batch, now))
        loop.call_soon(self.after_reply)  # in case the interface does not call it
        return True

    def after_reply(self) -> None:
        """Queue the batches accepted but not queued yet (see `submit`)."""
        while self._accepted:
            batch, now = self._accepted.popleft()
            self._add(batch, now)

    def _add(self, batch, now: float) -> None:
        self.core.add(batch, now)
        self._process_events()

    def cancel(self, name: str) -> None:
        for task in self.core.cancel(name, time.time()):
            self.launcher.cancel(task, CANCEL_GRACE)
        self._journal_request({"cancel": name})
        self._process_events()
        self._check_done()

    def remove(self, name: str) -> None:
        self.core.remove(name)
        self._journal_request({"remove": name})

    def _journal_request(self, entry: dict) -> None:
        if self.journal is not None:
            self.journal.record(entry)
            self.journal.flush()

    def file_progress(self, index: int) -> None:
        """Batch-file requests up to `index` are handled: a resumed service goes on after it."""
        self._journal_request({"file": index})

    # ------------------------------------------------------------ scheduling
    def kick(self) -> None:
        """A scheduling pass in the next turn of the loop (one, however often it is asked for)."""
        if not self._pass_pending and self._loop is not None:
            self._pass_pending = True
            self._loop.call_soon(self._schedule_pass)

    def _schedule_pass(self) -> None:
        self._pass_pending = False
        self.after_reply()
        if not self.launcher.ready or self.interrupted:
            return
        now = time.time()
        core = self.core
        started = core.schedule(now)
        if len(started) >= core.max_starts:
            self.kick()  # a slice of the work: the rest after a turn of the loop (heartbeats, requests)
        if started:
            if self.journal is not None:
                record = self.journal.started
                for task in started:
                    record(task.job.name, task.it)
            # before the launch: the starts in one journal write with the ends that freed the cores;
            # those ends reach jobs.report and the subscribers after it (off the critical path;
            # --resume writes report lines a crash in between lost)
            ends = self._journal_events()
            if self.parent_link is not None:
                self.parent_link.started(started)
            if self.fake:
                # fake tasks finish inside launch(): mark them executing first
                core.executing(started, now)
                self.launcher.launch(started, now)
            else:
                self.launcher.launch(started, now)
                if self.executing_on_launch:
                    core.executing(started, now)
            self._deliver(ends)
        self._process_events()
        if self.parent_link is not None:
            self.parent_link.flush_soon()  # the starts, when no end asked for a flush
        self._check_done()

    def _on_finished(self, finished) -> None:
        now = time.time()
        finish = self.core.finish
        for tid, outcome in finished:
            if self.interrupted and outcome.rc != 0:
                continue  # killed by the interruption (or ended badly during it): run again at --resume
            finish(tid, outcome, now)
        if self.fake:
            self.kick()  # fake tasks end inside launch(): a loop turn between passes serves requests
        else:
            self._schedule_pass()  # freed cores get new tasks at once, in the same turn

    def _on_node_lost(self, node_name: str, permanent: bool = True) -> None:
        node = self.pool.by_name.get(node_name)
        if node is None:
            return
        lost = self.core.node_lost(node, time.time(), permanent)
        for task in lost:
            self.launcher.cancel(task, 0)  # parts of a multi-node task on other nodes
        log.error("node %s %s: %d running tasks re-queued", node_name,
                  "lost" if permanent else "unavailable until its agent is back", len(lost))
        self._process_events()
        self.kick()

    def _on_node_ready(self, node_name: str) -> None:
        node = self.pool.by_name.get(node_name)
        if node is not None:
            self.core.node_ready(node)
            self.kick()

    def _on_fatal(self, message: str) -> None:
        log.error("%s", message)
        print(f"qcg-pm-service: error: {message}", file=sys.stderr, flush=True)
        self.exit_code = 1
        self._on_signal(signal.SIGTERM)

    def _process_events(self) -> None:
        """Events go to the journal first (with the starts recorded since its last write), then to
        the parent, jobs.report and the publisher."""
        self._deliver(self._journal_events())

    def _journal_events(self) -> list:
        events = self.core.drain_events()
        if self.journal is not None:
            self._journal_ends(events)
        return events

    def _deliver(self, events) -> None:
        if not events:
            return
        if self.parent_link is not None:
            self.parent_link.forward(events)
        if self.report.enabled:
            self._report(events)
        if self.publisher is not None:
            self._publish(events)

    def _report(self, events) -> None:
        report = self.report
        for event in events:
            kind = event[0]
            if kind == "it":
                _, job, it, state, record = event
                if state.is_final:
                    report.add(reports.iteration_entry(job, it, state, record))
            elif kind == "job":
                _, job, state = event
                if state.is_final:
                    report.add(reports.job_entry(job))
        report.flush()  # one write per pass: what a crash loses is only what the journal re-runs

    def _journal_ends(self, events) -> None:
        """Task ends reach the journal before jobs.report and the publisher."""
        record = self.journal.finished
        for job, it, state, outcome in task_ends(events):
            if outcome is not None or job.iterative:  # a plain job that never ran is derived at replay
                record(job.name, it, state._value_)  # not .value: a property, per task
        self.journal.flush()

    def replay(self, records: list) -> int:
        """`--resume`: rebuild the state from the journal; returns the batch-file position reached."""
        from ..core.jobdesc import parse_job

        now = time.time()
        core = self.core
        started = {}
        interrupted = {}  # job: iterations a signal stopped (journaled as started, never as ended)
        file_index = -1
        for rec in records:
            if "submit" in rec:
                try:
                    core.submit([parse_job(d) for d in rec["submit"]], now)
                except Exception as exc:  # e.g. --nodes given again with fewer cores than a job needs
                    message = f"--resume: a journaled submit cannot be restored: {exc}"
                    log.error("%s", message)
                    raise SystemExit(f"qcg-pm-service: error: {message}") from None
            elif "run" in rec:
                for job, ranges in rec["run"].items():
                    started.setdefault(job, set()).update(i for a, b in ranges for i in range(a, b))
            elif "fin" in rec:
                for state, jobs in rec["fin"].items():
                    for job, ranges in jobs.items():
                        core.restore_final(job, ranges, JobState(state), now)
            elif "cancel" in rec:
                try:
                    core.cancel(rec["cancel"], now)
                except Exception:
                    pass
            elif "remove" in rec:
                try:
                    core.remove(rec["remove"])
                except Exception:
                    pass
                started.pop(rec["remove"], None)  # not retries of a later job given the same name
            elif "interrupted" in rec:
                for job, ranges in rec["interrupted"].items():
                    interrupted.setdefault(job, set()).update(i for a, b in ranges for i in range(a, b))
            elif "file" in rec:
                file_index = max(file_index, rec["file"])
            elif rec.get("finish"):
                self.finishing = True
        retried = 0
        for job, its in started.items():
            core.mark_retry(job, its, now)
            retried += sum(1 for it in its if job in core.jobs and not core.jobs[job].iteration_state(it).is_final)
        events = core.drain_events()  # their reports and events were written by the run that died...
        again = sum(1 for job, its in interrupted.items() for it in its
                    if job in core.jobs and not core.jobs[job].iteration_state(it).is_final)
        log.info("resumed from the journal: %d jobs, %d iterations finished, %d running at the crash run again "
                 "(%d of them interrupted by a signal)",
                 len(core.jobs), sum(n for s, n in core.it_counts.items() if s.is_final), retried, again)
        if records and "fin" in records[-1] and self.report.enabled:
            self._report_ends_lost(records[-1]["fin"], events)  # ...unless it died just before that write
        return file_index

    def _report_ends_lost(self, fin: dict, events: list) -> None:
        """The dead run journaled these ends last: jobs.report gets those of them it lacks (the run
        died between the two writes), and so do the jobs they left without a chance to run (OMITTED:
        never journaled, derived again at replay). Their history and resource usage died with it."""
        entries = []
        for state, jobs in fin.items():
            for name, ranges in jobs.items():
                job = self.core.jobs.get(name)
                if job is None:
                    continue
                if job.iterative:
                    entries += [reports.iteration_entry(job, it, JobState(state), None)
                                for a, b in ranges for it in range(a, b)]
                if job.state.is_final:
                    entries.append(reports.job_entry(job))
        entries += [reports.job_entry(job) for job in _consequences(events, fin)]
        # the dead run may have written a few more entries after these (a generous tail costs little)
        present = reports.last_entry_names(self.report.path, self.report.format, 2 * len(entries) + 16)
        lost = [e for e in entries if e["name"] not in present]
        for entry in lost:
            entry["messages"] = "; ".join(filter(None, (entry.get("messages"), LOST_REPORT_MESSAGE)))
            self.report.add(entry)
        self.report.flush()
        if lost:
            log.warning("--resume: %d jobs.report entries the dead run had journaled but not written "
                        "are written now", len(lost))

    def _publish(self, events) -> None:
        """Upstream's topics: IST/JST on a change, IFI/JFI when final, NOJ when everything ended."""
        pub = self.publisher
        wanted = pub.wanted
        for event in events:
            kind = event[0]
            if kind == "it":
                _, job, it, state, _record = event
                topic = "IFI" if state.is_final else "IST"
                if topic in wanted:
                    pub.publish(topic, {"job": job.name, "state": state.value, "it": it})
                    self.events_since_noj |= state.is_final
            elif kind == "job":
                _, job, state = event
                if "JST" in wanted:
                    pub.publish("JST", {"job": job.name, "state": state.value})
                if state.is_final and "JFI" in wanted:
                    pub.publish("JFI", {"job": job.name, "state": state.value})
                    self.events_since_noj = True
            elif kind == "idle" and self.noj_wanted:
                # only when a client was told "not finished": a stale NOJ must not end a later wait4all
                self._publish_noj()

    def _publish_noj(self) -> None:
        self.noj_wanted = self.events_since_noj = False
        self.publisher.publish("NOJ", {})

    def answered_all_finished(self, finished: bool) -> None:
        """A client asked whether everything has finished (upstream's wait4all does, then waits for NOJ).

        "No": NOJ is owed when everything ends. "Yes" while finished-events were published since
        the last NOJ: upstream's client takes any unread event as "not finished" and waits for a
        NOJ, so one is published now and the reply held back a little, so that the NOJ is already
        queued when the client looks and none is left over to end a later wait early.
        """
        if not finished:
            self.noj_wanted = True
        elif self.publisher is not None and self.events_since_noj:
            self._publish_noj()
            self.reply_delay = 0.01

    # ------------------------------------------------------------ status
    def status(self, final: bool = False) -> dict:
        pool = self.pool
        jc, ic = self.core.job_counts, self.core.it_counts

        def stats(counts, prefix):
            in_schedule = counts[JobState.QUEUED] + counts[JobState.SCHEDULED]
            return {f"Total{prefix}": sum(counts.values()), f"InSchedule{prefix}": in_schedule,
                    f"Failed{prefix}": counts[JobState.FAILED] + counts[JobState.OMITTED],
                    f"Finished{prefix}": counts[JobState.SUCCEED] + counts[JobState.CANCELED],
                    f"Executing{prefix}": counts[JobState.EXECUTING]}

        system = system_info(self)
        if final:
            system["StatusPublisher"] = None
        nodes, total, used, free = pool.usage()
        return {"System": system,
                "Resources": {"TotalNodes": nodes, "TotalCores": total, "UsedCores": used, "FreeCores": free},
                "JobStats": stats(jc, "Jobs"), "IterationStats": stats(ic, "Iterations"),
                # ours, for `qcg-hier status`: iterations per state, and every node's use
                "States": {state.value: n for state, n in ic.items()},
                "Nodes": pool.rows()}
