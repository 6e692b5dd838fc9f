"""The governor in local emulation: children as local processes (`--partition-nodes`) or joined by
hand (`--parent`), driven through the network interface and our client API."""
import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from net_helpers import NetService, clean_env, kill_tree, service_command, start_net_service, stop_service
from conftest import leftover_processes, wait_for

from qcg_hier.api import Jobs, Manager


def start_governor(wd: Path, nodes: str | None = None, per: int | None = None, args=(), instance_id="gov"):
    extra = ["--governor"] + (["--partition-nodes", str(per)] if per else [])
    return start_net_service(wd, auth="curve", nodes=nodes, args=extra + list(args), instance_id=instance_id)


def start_child(wd: Path, governor: NetService, instance_id: str, nodes: str, args=(), parent=None) -> NetService:
    """A child started by hand; it finds the governor's address and keys in its service directory
    (or in `parent`, e.g. the working directory it shares with the governor)."""
    argv = service_command() + ["--parent", str(parent or governor.sdir), "--id", instance_id, "--nodes", nodes,
                                "--wd", str(wd)] + [str(a) for a in args]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=clean_env(), cwd=wd, start_new_session=True)
    child = NetService(wd, instance_id, proc, argv)
    assert wait_for(lambda: f"child {instance_id} connected" in governor.log_text or proc.poll() is not None, 30), \
        governor.describe()
    assert proc.poll() is None, f"child exited {proc.returncode}: {proc.stderr.read().decode()}"
    return child


def manager(governor: NetService) -> Manager:
    return Manager(str(governor.wd))  # the working directory: the governor, not a child, answers


def states(m: Manager, names) -> dict:
    jobs = m.status(names)["jobs"]
    return {name: entry["data"]["status"] for name, entry in jobs.items()}


def report_lines(svc: NetService) -> list[dict]:
    path = svc.sdir / "jobs.report"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def child_of(entry: dict) -> str:
    return entry["runtime"]["manager"]


def finish(governor: NetService, timeout: float = 30) -> int:
    m = manager(governor)
    m.finish()
    try:
        return governor.proc.wait(timeout)
    finally:
        governor.stop()


def child_process(governor: NetService, name: str) -> psutil.Process:
    for proc in psutil.Process(governor.proc.pid).children():
        if f"--id {name} " in " ".join(proc.cmdline()) + " ":
            return proc
    raise AssertionError(f"no child process {name}")


@pytest.fixture
def services():
    started: list[NetService] = []
    yield started
    for svc in started:
        stop_service(svc)


# ---------------------------------------------------------------- partitions as local processes
def test_campaign_spreads_over_every_partition_and_wait4all_returns(tmp_path, services):
    gov = start_governor(tmp_path, nodes="2,2,2", per=1)
    services.append(gov)
    m = manager(gov)
    jobs = Jobs().add(name="sweep", exec="/bin/sleep", args=["0.2"], iteration=30)
    jobs.add(name="single", script="echo ${jname} $QCG_PM_ZMQ_ADDRESS > single.out")
    assert m.submit(jobs) == ["sweep", "single"]
    m.wait4all(timeout=60)
    assert states(m, ["sweep", "single"]) == {"sweep": "SUCCEED", "single": "SUCCEED"}
    # a child's task talks to the governor (one view of the campaign), not to its child
    assert (tmp_path / "single.out").read_text().split() == ["single", gov.address]
    info = m.info("sweep", withChilds=True)["jobs"]["sweep"]["data"]
    assert info["iterations"]["finished"] == 30
    where = Counter(child_of(c) for c in info["childs"])
    assert set(where) == {"partition-0", "partition-1", "partition-2"}, where
    assert all(c["state"] == "SUCCEED" for c in info["childs"])
    children = [p for p in leftover_processes(gov.wd) if "--parent" in p.cmdline()]
    assert len(children) == 3  # what the check below must no longer find
    assert finish(gov) == 0
    lines = report_lines(gov)
    assert len([e for e in lines if e["name"].startswith("sweep:")]) == 30
    assert {e["name"] for e in lines if ":" not in e["name"]} == {"sweep", "single"}
    status = json.loads((gov.sdir / "final_status.json").read_text())
    assert status["IterationStats"]["FinishedIterations"] == 31
    assert status["JobStats"]["FinishedJobs"] == 2
    assert {c["name"] for c in status["Children"]} == {"partition-0", "partition-1", "partition-2"}
    assert wait_for(lambda: not leftover_processes(gov.wd), 10)  # children and agents too


def test_a_partition_twice_as_big_receives_about_twice_the_work(tmp_path, services):
    gov = start_governor(tmp_path, nodes="2,4", per=1)
    services.append(gov)
    m = manager(gov)
    m.submit(Jobs().add(name="w", exec="/bin/sleep", args=["0.25"], iteration=72))
    m.wait4all(timeout=90)
    where = Counter(child_of(c) for c in m.info("w", withChilds=True)["jobs"]["w"]["data"]["childs"])
    ratio = where["partition-1"] / where["partition-0"]
    assert 1.5 <= ratio <= 2.6, where


def test_a_dependency_across_children_runs_and_omitted_propagates(tmp_path, services):
    gov = start_governor(tmp_path, nodes="1,1", per=1)
    services.append(gov)
    m = manager(gov)
    jobs = Jobs()
    jobs.add(name="first", script="sleep 0.3; echo one > first.out", tags=["partition-0"])
    jobs.add(name="second", script="cat first.out > second.out", after=["first"], tags=["partition-1"])
    jobs.add(name="bad", exec="/bin/false", tags=["partition-0"])
    jobs.add(name="never", exec="/bin/true", after=["bad"], tags=["partition-1"])
    jobs.add(name="per_it", exec="/bin/true", iteration=3, after=["sweep:${it}"], tags=["partition-1"])
    jobs.add(name="sweep", exec="/bin/true", iteration=3, tags=["partition-0"])
    m.submit(jobs)
    m.wait4all(timeout=60)
    assert states(m, ["first", "second", "bad", "never", "per_it", "sweep"]) == {
        "first": "SUCCEED", "second": "SUCCEED", "bad": "FAILED", "never": "OMITTED", "per_it": "SUCCEED",
        "sweep": "SUCCEED"}
    assert (tmp_path / "second.out").read_text().strip() == "one"
    info = m.info(["first", "second"])["jobs"]
    assert info["first"]["data"]["runtime"]["manager"] == "partition-0"
    assert info["second"]["data"]["runtime"]["manager"] == "partition-1"
    assert info["second"]["data"]["runtime"]["allocation"] == "n1[0]"  # the child's own nodes, upstream's form


def test_kill9_of_a_child_loses_no_task_and_the_retry_shows(tmp_path, services):
    gov = start_governor(tmp_path, nodes="2,2", per=1, args=["--child-heartbeat", "0.3", "--child-timeout", "2"])
    services.append(gov)
    m = manager(gov)
    m.submit(Jobs().add(name="long", script="sleep 0.5; echo ${it} > out.${it}", iteration=24))
    assert wait_for(lambda: m.info("long")["jobs"]["long"]["data"]["iterations"]["finished"] >= 4, 30)
    victim = child_process(gov, "partition-0")
    tasks = [p for p in victim.children(recursive=True)]
    victim.kill()
    m.wait4all(timeout=90)
    assert states(m, "long") == {"long": "SUCCEED"}
    assert sorted(int(p.name.split(".")[1]) for p in tmp_path.glob("out.*")) == list(range(24))
    assert "child partition-0 lost" in gov.log_text
    assert "starting child partition-0 again" in gov.log_text
    its = m.info([f"long:{i}" for i in range(24)])["jobs"]
    retried = [name for name, e in its.items() if e["data"]["history"].count("SCHEDULED") > 1]
    assert retried, "no iteration shows its second start"
    assert tasks, "the child had no processes to leave behind"
    assert wait_for(lambda: not any(running(p) for p in tasks), 20), "the dead child's tasks were not killed"
    assert finish(gov) == 0


def test_cancel_remove_and_resources_against_a_governor(tmp_path, services):
    gov = start_governor(tmp_path, nodes="2,2", per=1)
    services.append(gov)
    m = manager(gov)
    m.submit(Jobs().add(name="slow", exec="/bin/sleep", args=["30"], iteration=6))
    assert wait_for(lambda: m.resources()["used_cores"] == 4, 20), m.resources()
    res = m.resources()
    assert res["total_cores"] == 4 and res["total_nodes"] == 2
    listed = m.list()
    assert listed["slow"]["status"] in ("QUEUED", "EXECUTING")
    m.cancel("slow")
    m.wait4("slow", timeout=30)
    assert states(m, "slow") == {"slow": "CANCELED"}
    assert wait_for(lambda: m.resources()["used_cores"] == 0, 10)
    assert not [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["/bin/sleep", "30"]]
    m.remove("slow")
    m.submit(Jobs().add(name="slow", exec="/bin/true", iteration=3))  # the name is free again
    m.wait4("slow", timeout=30)
    assert states(m, "slow") == {"slow": "SUCCEED"}


# ---------------------------------------------------------------- children that join and leave
def test_children_join_at_run_time_and_tags_route_jobs(tmp_path, services):
    gov = start_governor(tmp_path)
    services.append(gov)
    m = manager(gov)
    reply = gov.request({"request": "submit", "jobs": [{"name": "early", "execution": {"exec": "/bin/true"}}]})
    assert reply["code"] == 1 and "no child manager is attached" in reply["message"]
    first_plain = start_child(tmp_path, gov, "plain", "2")
    services.append(first_plain)
    services.append(start_child(tmp_path, gov, "big", "2", ["--tags", "bigmem,gpu"]))
    jobs = Jobs()
    jobs.add(name="needs_big", exec="/bin/true", iteration=6, tags=["bigmem"])
    jobs.add(name="any", exec="/bin/true", iteration=6)
    m.submit(jobs)
    m.wait4all(timeout=60)
    childs = m.info("needs_big", withChilds=True)["jobs"]["needs_big"]["data"]["childs"]
    assert {child_of(c) for c in childs} == {"big"}
    reply = gov.request({"request": "submit", "jobs": [
        {"name": "nowhere", "execution": {"exec": "/bin/true"}, "resources": {"tags": ["bigmem", "fpga"]}}]})
    assert reply["code"] == 1 and "no attached child has all the tags bigmem, fpga" in reply["message"]
    reply = gov.request({"request": "submit", "jobs": [
        {"name": "huge", "execution": {"exec": "/bin/true"}, "resources": {"numCores": 3}}]})
    assert reply["code"] == 1 and "no single child can hold it" in reply["message"], reply
    assert states(m, "any") == {"any": "SUCCEED"}  # nothing accepted before was lost
    # the same id registered again: the newest wins, the earlier process is told to exit
    services.append(start_child(tmp_path, gov, "plain", "2"))
    assert first_plain.proc.wait(15) == 0
    m.submit(Jobs().add(name="after_replace", exec="/bin/true", iteration=4))
    m.wait4("after_replace", timeout=30)
    assert states(m, "after_replace") == {"after_replace": "SUCCEED"}


def test_a_child_leaves_gracefully_and_its_queued_work_returns(tmp_path, services):
    gov = start_governor(tmp_path)
    services.append(gov)
    stay = start_child(tmp_path, gov, "stay", "2")
    # the working directory it shares with the governor and the other child: it finds the governor
    leave = start_child(tmp_path, gov, "leave", "2", parent=tmp_path)
    services += [stay, leave]
    m = manager(gov)
    m.submit(Jobs().add(name="w", exec="/bin/sleep", args=["0.3"], iteration=24))
    assert wait_for(lambda: (leave.sdir / "address").exists(), 10)
    leave.address = (leave.sdir / "address").read_text().strip()
    leave.credentials = json.loads((leave.sdir / "credentials.json").read_text())
    assert wait_for(lambda: "EXECUTING" in json.dumps(m.info("w", withChilds=True)), 10)
    leave.data({"request": "control", "command": "finishAfterAllTasksDone"})
    assert leave.proc.wait(30) == 0
    assert "left" in gov.log_text
    m.wait4all(timeout=60)
    childs = m.info("w", withChilds=True)["jobs"]["w"]["data"]["childs"]
    assert all(c["state"] == "SUCCEED" for c in childs)
    assert Counter(child_of(c) for c in childs)["stay"] > 12
    its = m.info([f"w:{i}" for i in range(24)])["jobs"]
    returned = [name for name, e in its.items() if e["data"]["history"].count("SCHEDULED") == 2]
    assert returned, "no iteration was handed back by the leaving child"


FAST = ["--child-heartbeat", "0.3", "--child-timeout", "2"]


def scheduled_twice(m: Manager, name: str, n: int) -> list:
    its = m.info([f"{name}:{i}" for i in range(n)])["jobs"]
    return [k for k, e in its.items() if e["data"]["history"].count("SCHEDULED") > 1]


def two_children_at_work(tmp_path, services, name: str) -> tuple:
    """A governor, a child "healthy" and a child `name`, 16 iterations under way on both: (governor,
    that child, a client)."""
    gov = start_governor(tmp_path, args=FAST)
    services.append(gov)
    healthy = start_child(tmp_path, gov, "healthy", "2", FAST)
    child = start_child(tmp_path, gov, name, "2", FAST)
    services += [healthy, child]
    m = manager(gov)
    m.submit(Jobs().add(name="w", exec="/bin/sleep", args=["0.5"], iteration=16))
    assert wait_for(lambda: name in json.dumps(m.info("w", withChilds=True)), 10)
    return gov, child, m


def test_a_stopped_child_is_waited_for_and_nothing_runs_twice(tmp_path, services):
    """SIGSTOP of a child for longer than the timeout: its connection stays up (the kernel answers
    for it), so it is waited for; its tasks went on, and nothing is run again elsewhere (it was
    taken for lost, and its work ran twice)."""
    gov, stuck, m = two_children_at_work(tmp_path, services, "stuck")
    os.kill(stuck.proc.pid, signal.SIGSTOP)
    try:
        assert wait_for(lambda: "child stuck has been silent" in gov.log_text, 10), gov.describe()
        time.sleep(2)
    finally:
        os.kill(stuck.proc.pid, signal.SIGCONT)
    m.wait4all(timeout=60)
    childs = m.info("w", withChilds=True)["jobs"]["w"]["data"]["childs"]
    assert all(c["state"] == "SUCCEED" for c in childs)
    assert "child stuck lost" not in gov.log_text
    assert scheduled_twice(m, "w", 16) == []
    assert stuck.proc.poll() is None  # and it is still a child


def test_a_killed_child_is_lost_within_the_timeout_and_its_work_runs_elsewhere(tmp_path, services):
    gov, doomed, m = two_children_at_work(tmp_path, services, "doomed")
    t0 = time.monotonic()
    doomed.proc.kill()
    assert wait_for(lambda: "child doomed lost (silent for" in gov.log_text, 10), gov.describe()
    assert time.monotonic() - t0 < 4
    m.wait4all(timeout=60)
    childs = m.info("w", withChilds=True)["jobs"]["w"]["data"]["childs"]
    assert all(c["state"] == "SUCCEED" for c in childs)
    assert scheduled_twice(m, "w", 16), "no retry shows"


def test_a_stopped_governor_keeps_its_children(tmp_path, services):
    """SIGSTOP of the governor for longer than the children's timeout: they wait for it (they used
    to kill their tasks and exit), and the campaign goes on when it is continued."""
    gov = start_governor(tmp_path, args=FAST)
    services.append(gov)
    children = [start_child(tmp_path, gov, f"c{i}", "2", FAST) for i in range(2)]
    services += children
    m = manager(gov)
    m.submit(Jobs().add(name="w", exec="/bin/sleep", args=["0.5"], iteration=12))
    assert wait_for(lambda: "EXECUTING" in json.dumps(m.info("w", withChilds=True)), 10)
    os.kill(gov.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(5)
    finally:
        os.kill(gov.proc.pid, signal.SIGCONT)
    assert all(c.proc.poll() is None for c in children), [c.describe() for c in children]
    assert any("the governor has been silent" in c.log_text for c in children)
    m.wait4all(timeout=60)
    assert states(m, "w") == {"w": "SUCCEED"}
    assert scheduled_twice(m, "w", 12) == []


# ---------------------------------------------------------------- bad input
def test_a_bad_registration_gets_a_clear_error_and_the_governor_keeps_running(tmp_path, services):
    gov = start_governor(tmp_path)
    services.append(gov)
    for params, words in (({"id": "x"}, "Wrong register request - missing key register parameters"),  # upstream's
                          ({"id": "", "address": "a", "resources": {}}, "'id' must be a non-empty string"),
                          ({"id": "x", "address": "a", "resources": {"nodes": []}},
                           "'resources.nodes' must be a non-empty list"),
                          ({"id": "x", "address": "a", "resources": {"nodes": [{"name": "n", "total_cores": 0}]}},
                           "'total_cores' must be a positive integer")):
        reply = gov.request({"request": "register", "entity": "manager", "params": params})
        assert reply["code"] == 1 and words in reply["message"], reply
    assert gov.data({"request": "status"})["Resources"]["TotalCores"] == 0


@pytest.mark.parametrize("args,words", [
    (["--governor", "--parent", "tcp://127.0.0.1:1"], "cannot join another governor"),
    (["--partition-nodes", "0", "--nodes", "2"], "--partition-nodes must be at least 1"),
    (["--slurm-partition-nodes", "2", "--nodes", "2"], "--slurm-partition-nodes needs a Slurm allocation"),
    (["--governor", "--child-timeout", "1", "--child-heartbeat", "2"], "--child-timeout (1) must be longer"),
], ids=["governor-parent", "partition-0", "slurm-outside", "timeouts"])
def test_bad_hierarchy_options_are_clear_errors(tmp_path, args, words):
    proc = subprocess.run(service_command() + ["--wd", str(tmp_path)] + args, capture_output=True, text=True,
                          timeout=30, env=clean_env())
    assert proc.returncode != 0
    assert words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_child_whose_governor_does_not_answer_exits_with_a_clear_error(tmp_path):
    argv = service_command() + ["--parent", "tcp://127.0.0.1:1", "--nodes", "1", "--wd", str(tmp_path),
                                "--child-timeout", "1.5", "--child-heartbeat", "0.5"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=clean_env())
    assert proc.returncode == 1
    assert "did not answer the registration within 1.5 s" in proc.stderr, proc.stderr


def test_a_child_of_a_dead_governor_kills_its_tasks_and_exits(tmp_path, services):
    gov = start_governor(tmp_path, args=["--child-heartbeat", "0.3", "--child-timeout", "2"])
    services.append(gov)
    child = start_child(tmp_path, gov, "orphan", "2", ["--child-heartbeat", "0.3", "--child-timeout", "2"])
    services.append(child)
    m = manager(gov)
    m.submit(Jobs().add(name="sleepy", exec="/bin/sleep", args=["60"], iteration=2))
    assert wait_for(lambda: m.resources()["used_cores"] == 2, 20)
    def sleepers_now():
        return [p for p in psutil.Process(child.proc.pid).children(recursive=True) if p.name() == "sleep"]
    assert wait_for(lambda: len(sleepers_now()) == 2, 10), "the child's two tasks never showed"
    sleepers = sleepers_now()
    kill_tree_only(gov.proc.pid)
    assert child.proc.wait(30) == 1
    assert "the governor has been silent" in child.log_text
    assert wait_for(lambda: not any(running(p) for p in sleepers), 15)


def kill_tree_only(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ---------------------------------------------------------------- crash and --resume of a governor
def test_kill9_of_the_governor_then_resume_runs_exactly_the_rest(tmp_path, background):
    from conftest import start_service, iterations_of, states as history
    from test_resume import FINISH, RETRY, crash, its_in, journal_records, resume, wait_journal

    wd = tmp_path / "wd"
    jobs = [{"name": "A", "iteration": {"stop": 30},
             "execution": {"script": "echo ${it} $$ >> starts.txt; sleep 0.3; echo ${it} >> done.txt"}},
            {"name": "B", "dependencies": {"after": ["A"]}, "execution": {"script": "echo $$ >> b.txt"}}]
    run = start_service(wd, [{"request": "submit", "jobs": jobs}, FINISH], nodes="2,2",
                        args=["--governor", "--partition-nodes", "1", "--child-heartbeat", "0.3",
                              "--child-timeout", "1.5"])
    background.append(run)
    wait_journal(run, lambda r: len(its_in(r, "fin", "SUCCEED")["A"]) >= 8, timeout=30, quiet=0.05)
    crash(run)
    at_crash = journal_records(wd)
    done_before = its_in(at_crash, "fin")["A"]
    handed_out = its_in(at_crash, "run")["A"] - done_before
    assert 8 <= len(done_before) < 30 and handed_out
    # the orphaned children notice the silence, kill their tasks and exit
    assert wait_for(lambda: not [p for p in psutil.process_iter(["cmdline"])
                                 if str(wd) in " ".join(p.info["cmdline"] or []) and "--parent" in
                                 (p.info["cmdline"] or [])], 15)
    res = resume(wd, timeout=60)
    assert res.returncode == 0, res.describe()
    report = res.report(unique=False)
    its = iterations_of(report, "A")
    assert sorted(its) == list(range(30)) and all(e["state"] == "SUCCEED" for e in its.values())
    assert report["B"]["state"] == "SUCCEED"
    assert all(history(its[i])[:3] == RETRY for i in handed_out), {i: history(its[i]) for i in handed_out}
    starts = Counter(int(line.split()[0]) for line in (wd / "starts.txt").read_text().splitlines())
    assert all(starts[i] == 1 for i in done_before), "an iteration that had succeeded started again"
    done = Counter(int(x) for x in (wd / "done.txt").read_text().split())
    assert sorted(done) == list(range(30))
    assert len((wd / "b.txt").read_text().split()) == 1
    assert res.final_status()["States"]["SUCCEED"] == 31


# ---------------------------------------------------------------- the operator's tools on a governor
def test_status_and_reports_on_a_governor_directory(tmp_path, services):
    from test_tools import hier

    gov = start_governor(tmp_path, nodes="2,2", per=1)
    services.append(gov)
    m = manager(gov)
    m.submit(Jobs().add(name="s", exec="/bin/sleep", args=["1"], iteration=6)
             .add(name="bad", exec="/bin/false").add(name="skipped", exec="/bin/true", after=["bad"]))
    assert wait_for(lambda: m.system_status()["States"]["EXECUTING"] == 4, 20), m.system_status()
    live = json.loads(hier("status", tmp_path, "--json").stdout)
    assert live["live"] is True and live["service"] == "gov"
    assert live["states"]["EXECUTING"] == 4 and live["cores"] == {"total": 4, "used": 4, "free": 0}, live
    assert sorted(n["name"] for n in live["nodes"]) == ["partition-0", "partition-1"]
    text = hier("status", tmp_path).stdout
    assert "partition-0" in text and "(running)" in text, text
    m.wait4all(timeout=30)
    assert finish(gov) == 0
    stats = json.loads(hier("report", "stats", tmp_path, "--json").stdout)
    assert stats["iterations"] == 8 and stats["iteration_states"] == {"SUCCEED": 6, "FAILED": 1, "OMITTED": 1}
    assert stats["cores"] == 4 and stats["nodes"] == 2, stats
    listed = hier("report", "jobs", tmp_path, "--node", "n1").stdout
    assert "s:" in listed and "n0" not in listed.replace("n1", ""), listed
    out = tmp_path / "g.svg"
    assert hier("report", "gantt", tmp_path, "-o", out).returncode == 0 and out.stat().st_size > 0


def test_a_busy_child_sends_its_ends_up_in_batches():
    """Every send wakes the governor: ends that come close together travel in one frame, and the
    first end after a quiet spell goes at once."""
    import asyncio
    from types import SimpleNamespace

    from qcg_hier import protocol
    from qcg_hier.core.states import JobState
    from qcg_hier.governor import parentlink
    from qcg_hier.governor.childlink import LinkSettings

    sent = []
    # closed for reading: the link looks for input after every send, and there is none here
    sock = SimpleNamespace(send=lambda frame, flags=0: sent.append(protocol.decode(frame)), closed=True)
    service = SimpleNamespace(pool=SimpleNamespace(used_cores=0))
    job = SimpleNamespace(name="w", iterative=True)

    def end(it):
        return [("it", job, it, JobState.SUCCEED, None)]

    async def scenario():
        link = parentlink.ParentLink(service, "tcp://x", LinkSettings(), [])
        link.sock, link._loop = sock, asyncio.get_running_loop()
        link.forward(end(0))
        assert len(sent) == 1  # at once
        for it in range(1, 4):
            link.forward(end(it))
        assert len(sent) == 1  # held back for a moment...
        await asyncio.sleep(parentlink.FORWARD_INTERVAL * 3)
        assert len(sent) == 2  # ... then sent together
        fins = [m for frame in sent for m in frame if m[0] == "fin"]
        assert [[e[1] for e in m[1]] for m in fins] == [[0], [1, 2, 3]]
        # starts too: the service asks for a flush after every scheduling pass
        for it in (4, 5, 6):
            link.started([SimpleNamespace(job=job, it=it)])
            link.flush_soon()
        assert len(sent) == 3 and ["exe", {"w": [4]}] in sent[-1]  # after a quiet spell: at once
        await asyncio.sleep(parentlink.FORWARD_INTERVAL * 3)
        assert len(sent) == 4 and ["exe", {"w": [5, 6]}] in sent[-1]

    asyncio.run(scenario())


def test_a_job_no_child_can_take_fails_alone_and_the_children_stay(tmp_path, services):
    """A valid submit whose description cannot travel to a child (attributes nested 252 levels,
    beyond the encoder's limit) ends that job FAILED with the reason; it stopped every frame to the
    children before, heartbeats too, and both children exited."""
    fast = ["--child-heartbeat", "0.3", "--child-timeout", "2"]
    gov = start_governor(tmp_path, nodes="1,1", per=1, args=fast)
    services.append(gov)
    deep = {}
    level = deep
    for _ in range(252):
        level["x"] = {}
        level = level["x"]
    pids = {p.pid for p in psutil.Process(gov.proc.pid).children()}
    reply = gov.request({"request": "submit", "jobs": [
        {"name": "deep", "execution": {"exec": "/bin/true"}, "attributes": deep},
        {"name": "plain", "execution": {"exec": "/bin/true"}}]})
    assert reply["code"] == 0, reply
    m = manager(gov)
    assert m.wait4(["deep", "plain"], timeout=20) == {"deep": "FAILED", "plain": "SUCCEED"}
    info = m.info("deep")["jobs"]["deep"]["data"]
    assert "cannot be sent to a child" in info.get("messages", ""), info
    time.sleep(3)  # longer than the children's timeout: they must still be there, the same processes
    assert {p.pid for p in psutil.Process(gov.proc.pid).children()} == pids
    children = m.system_status()["Children"]
    assert sorted((c["name"], c["state"]) for c in children) == [("partition-0", "ready"), ("partition-1", "ready")]
    m.submit(Jobs().add(name="later", exec="/bin/true", iteration=4))
    assert m.wait4("later", timeout=20) == {"later": "SUCCEED"}


def test_status_tells_which_children_are_ready_while_one_is_restarted(tmp_path, services):
    gov = start_governor(tmp_path, nodes="1,1", per=1, args=["--child-heartbeat", "0.3", "--child-timeout", "2"])
    services.append(gov)
    m = manager(gov)

    def child_states() -> dict:
        return {c["name"]: c["state"] for c in m.system_status()["Children"]}

    assert child_states() == {"partition-0": "ready", "partition-1": "ready"}
    victim = child_process(gov, "partition-0")
    victim.kill()
    assert wait_for(lambda: child_states()["partition-0"] != "ready", 10), child_states()
    assert child_states()["partition-1"] == "ready"
    assert wait_for(lambda: child_states()["partition-0"] == "ready", 30), gov.describe()
    assert child_process(gov, "partition-0").pid != victim.pid
    m.submit(Jobs().add(name="after", exec="/bin/true", iteration=4, tags=["partition-0"]))
    assert m.wait4("after", timeout=20) == {"after": "SUCCEED"}
