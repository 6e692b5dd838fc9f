"""Crash and recovery of a standalone service: the journal, `--resume`, and no orphaned task.

The service runs as a separate process (`--id test`, service directory
`<wd>/.qcgpjm-service-test/`) and is killed with SIGKILL at a chosen point, found by
reading its journal or files its tasks write. `qcg-pm-service --resume WD` then has to
finish exactly the rest of the campaign:

* every iteration ends SUCCEED (or in the state the first run gave it), none that the
  journal knew as ended starts again, the ones running at the crash run once more (their
  history: SCHEDULED, QUEUED, SCHEDULED, ...);
* dependencies and OMITTED stay as the first run decided; job names stay taken; the batch
  file goes on after the last request that changed something (requests are appended to it
  between the crash and the resume: a batch file is read at once, so "after the crash
  point" can only be text added later);
* the options of the first run come back unless given again;
* no task process of the killed run survives it (the local agent gets SIGTERM when the
  service dies; the agent's watchdog kills its tasks when the agent itself is killed).

Tasks write `$$` (their shell's PID, which is also their process group: the agent starts
every task in a group of its own) so the tests can look for survivors.
"""
from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from conftest import (SERVICE_DIR, ServiceRun, finish_background, iterations_of, leftover_processes,
                      service_command, service_env, start_service, states, wait_for)

FINISH = {"request": "control", "command": "finishAfterAllTasksDone"}
RETRY = ["SCHEDULED", "QUEUED", "SCHEDULED"]


# ---------------------------------------------------------------- helpers
def journal_path(wd: Path) -> Path:
    return wd / SERVICE_DIR / "journal"


def journal_records(wd: Path) -> list[dict]:
    path = journal_path(wd)
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            break  # a line being written
    return out


def its_in(records: list[dict], kind: str, state: str | None = None) -> dict[str, set]:
    """{job: iterations} of the journal's `run` records, or of its `fin` records (in one state or any)."""
    out = collections.defaultdict(set)
    for rec in records:
        if kind == "run" and "run" in rec:
            for job, ranges in rec["run"].items():
                out[job].update(i for a, b in ranges for i in range(a, b))
        elif kind == "fin" and "fin" in rec:
            for st, jobs in rec["fin"].items():
                if state is None or st == state:
                    for job, ranges in jobs.items():
                        out[job].update(i for a, b in ranges for i in range(a, b))
    return out


def fail(run: ServiceRun, message: str):
    """Stop the service (its whole group: the agent too) and fail with everything it printed."""
    if run.proc is not None and run.proc.poll() is None:
        try:
            os.killpg(run.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        finish_background(run, timeout=10)
    pytest.fail(f"{message}\n{run.describe()}")


def wait_journal(run: ServiceRun, predicate, timeout: float = 20, quiet: float = 0.0) -> list[dict]:
    """Poll the journal until `predicate(records)`; with `quiet`, also until no new task end was
    journaled for that long (tasks then are far from ending: the kill lands between two waves)."""
    deadline = time.monotonic() + timeout
    last_count, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        if run.proc.poll() is not None:
            fail(run, "the service ended before the crash point")
        records = journal_records(run.wd)
        count = sum(1 for r in records if "fin" in r)
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        if predicate(records) and time.monotonic() - last_change >= quiet:
            return records
        time.sleep(0.01)
    fail(run, f"the crash point was not reached within {timeout} s")


def wait_lines(path: Path, n: int, run: ServiceRun, timeout: float = 20) -> list[str]:
    ok = wait_for(lambda: path.exists() and len(path.read_text().split()) >= n, timeout, 0.02)
    if not ok:
        fail(run, f"{path.name} never got {n} lines")
    return path.read_text().split()


def crash(run: ServiceRun) -> None:
    """kill -9 of the service process alone (its agent is left to notice)."""
    os.kill(run.proc.pid, signal.SIGKILL)
    run.returncode = run.proc.wait()
    # not communicate(): it would wait for every holder of the pipes, the agent included
    run.proc.stdout.close()
    run.proc.stderr.close()


def resume(wd: Path, *args, timeout: float = 40, background: list | None = None) -> ServiceRun:
    """`qcg-pm-service --resume WD [args]` until it exits (or in the background when `background`)."""
    run = ServiceRun(wd=wd, argv=service_command() + ["--resume", str(wd), *map(str, args)])
    t0 = time.monotonic()
    run.proc = subprocess.Popen(run.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=service_env(), cwd=wd.parent, start_new_session=True)
    if background is not None:
        background.append(run)
        return run
    try:
        run.stdout, run.stderr = run.proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(run.proc.pid, signal.SIGKILL)
        run.stdout, run.stderr = run.proc.communicate()
        for p in leftover_processes(run.sdir):
            p.kill()
        pytest.fail(f"the resumed service did not finish within {timeout} s\n{run.describe()}")
    run.elapsed = time.monotonic() - t0
    run.returncode = run.proc.returncode
    return run


def group_members(pgids) -> list[psutil.Process]:
    """Live (non-zombie) processes in any of these process groups."""
    pgids = {int(p) for p in pgids}
    found = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) in pgids:
                found.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return found


def kill_groups(pgids) -> None:
    for pgid in {int(p) for p in pgids}:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def assert_no_survivors(pgids, run: ServiceRun, timeout: float = 5.0) -> float:
    """Every task group and every process naming the service directory is gone within `timeout`."""
    t0 = time.monotonic()
    wait_for(lambda: not group_members(pgids) and not leftover_processes(run.sdir), timeout, 0.05)
    took = time.monotonic() - t0
    tasks, others = group_members(pgids), leftover_processes(run.sdir)
    described = [(p.pid, " ".join(p.cmdline())) for p in tasks + others if p.is_running()]
    kill_groups(pgids)
    for p in others:
        p.kill()
    assert not tasks and not others, f"left running {timeout} s after the crash: {described}"
    return took


def resumed_log(run: ServiceRun) -> str:
    """service.log from the last `resumed from the journal` line on."""
    text = run.log_text
    at = text.rfind("resumed from the journal")
    assert at >= 0, f"the service log does not say 'resumed from the journal'\n{run.describe()}"
    return text[text.rfind("\n", 0, at) + 1:]


def file_replies(log_text: str) -> list[tuple[int, dict]]:
    return [(int(m.group(1)), json.loads(m.group(2)))
            for m in re.finditer(r"file request (\d+) \([^)]*\): (\{.*\})$", log_text, re.M)]


def last_states(run: ServiceRun) -> dict[str, dict]:
    return run.report(unique=False)


def check_ok(run: ServiceRun) -> None:
    assert run.returncode == 0, f"the resumed service exited {run.returncode}\n{run.describe()}"


# ---------------------------------------------------------------- the scheduling core alone
def test_restored_out_of_order_success_meets_an_iteration_dependency():
    """Journal ranges arrive in end order, not index order: an iteration restored after a later one
    must still count as SUCCEED for a job waiting on it (it used to make that job OMITTED)."""
    from qcg_hier.core.jobdesc import parse_job
    from qcg_hier.core.nodespec import NodeSpec
    from qcg_hier.core.resources import ResourcePool
    from qcg_hier.core.scheduler import Scheduler
    from qcg_hier.core.states import JobState

    core = Scheduler(ResourcePool([NodeSpec("n0", 4)], ready=True))
    true = {"exec": "/bin/true"}
    core.submit([parse_job({"name": "A", "iteration": {"stop": 10}, "execution": true}),
                 parse_job({"name": "C", "dependencies": {"after": ["A:5"]}, "execution": true}),
                 parse_job({"name": "D", "dependencies": {"after": ["A:8"]}, "execution": true})], 0)
    for rng, st in (([0, 5], "SUCCEED"), ([6, 8], "SUCCEED"), ([5, 6], "SUCCEED"), ([8, 9], "FAILED")):
        core.restore_final("A", [rng], JobState(st), 1)
    assert core.jobs["C"].state is JobState.QUEUED, core.jobs["C"].messages
    assert core.jobs["D"].state is JobState.OMITTED
    core.mark_retry("A", {9}, 1)
    started = core.schedule(2)
    assert sorted((t.job.name, t.it) for t in started) == [("A", 9), ("C", 0)]  # nothing restored starts again
    retry = next(t for t in started if t.job.name == "A")
    assert [s.value for s, _ in retry.history] == RETRY
    assert core.it_counts[JobState.SUCCEED] == 8 and core.it_counts[JobState.FAILED] == 1


# ---------------------------------------------------------------- kill -9 mid-campaign, --resume
def test_kill_during_campaign_then_resume_runs_exactly_the_rest(tmp_path, background):
    wd = tmp_path / "wd"
    jobs = [{"name": "A", "iteration": {"stop": 40},
             "execution": {"script": "echo ${it} $$ >> starts.txt; sleep 0.3; echo ${it} >> done.txt"}},
            {"name": "B", "dependencies": {"after": ["A"]},
             "execution": {"script": "echo $$ >> b.txt"}},
            {"name": "C", "dependencies": {"after": ["A:5"]},
             "execution": {"script": "echo $$ >> c.txt"}}]
    run = start_service(wd, [{"request": "submit", "jobs": jobs}, FINISH], nodes="4")
    background.append(run)
    at_crash = wait_journal(run, lambda r: len(its_in(r, "fin", "SUCCEED")["A"]) >= 14, quiet=0.06)
    crash(run)
    at_crash = journal_records(wd)  # the dead service cannot add more
    done_before = its_in(at_crash, "fin")["A"]
    running = its_in(at_crash, "run")["A"] - done_before
    assert 14 <= len(done_before) < 40 and running, (sorted(done_before), sorted(running))
    first_run_groups = {line.split()[1] for line in (wd / "starts.txt").read_text().splitlines()}

    res = resume(wd)
    check_ok(res)
    log = resumed_log(res)
    assert f"{len(running)} running at the crash run again" in log, log[:400]

    report = last_states(res)
    its = iterations_of(report, "A")
    assert sorted(its) == list(range(40))
    assert {i: e["state"] for i, e in its.items() if e["state"] != "SUCCEED"} == {}
    for name in ("A", "B", "C"):
        assert report[name]["state"] == "SUCCEED", (name, report[name])
    # the ones running at the crash show the retry; the others do not
    assert all(states(its[i])[:3] == RETRY for i in running), {i: states(its[i]) for i in running}
    assert all(states(its[i])[:2] == ["SCHEDULED", "EXECUTING"] for i in done_before)

    done = collections.Counter(int(x) for x in (wd / "done.txt").read_text().split())
    assert sorted(done) == list(range(40)) and set(done.values()) == {1}, \
        {i: n for i, n in done.items() if n != 1}
    starts = collections.Counter(int(line.split()[0]) for line in (wd / "starts.txt").read_text().splitlines())
    assert all(starts[i] == 1 for i in done_before), "an iteration that had succeeded started again: " + \
        str({i: starts[i] for i in done_before if starts[i] != 1})
    assert all(starts[i] == 2 for i in running), {i: starts[i] for i in running}
    assert len((wd / "b.txt").read_text().split()) == 1 and len((wd / "c.txt").read_text().split()) == 1

    final = res.final_status()
    assert final["States"]["SUCCEED"] == 42 and final["JobStats"]["FinishedJobs"] == 3
    # the first run's options: --nodes 4 and no network interface (it had none)
    assert final["Resources"]["TotalCores"] == 4
    assert final["System"]["Ifaces"] == ["FILE"] and "network interface" not in log
    assert_no_survivors(first_run_groups, res)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_interrupts_and_resume_runs_exactly_the_interrupted_and_the_rest(tmp_path, background, sig):
    """Slurm's SIGTERM (time limit, scancel) and ^C stop the run; what was running is interrupted,
    not cancelled: the journal records no end for it, and --resume runs exactly it and the work
    never started, nothing that succeeded."""
    wd = tmp_path / "wd"
    jobs = [{"name": "A", "iteration": {"stop": 24},
             "execution": {"script": "echo ${it} $$ >> starts.txt; sleep 0.4; echo ${it} >> done.txt"}},
            {"name": "B", "dependencies": {"after": ["A"]}, "execution": {"script": "echo $$ >> b.txt"}}]
    run = start_service(wd, [{"request": "submit", "jobs": jobs}, FINISH], nodes="4")
    background.append(run)
    wait_journal(run, lambda r: len(its_in(r, "fin", "SUCCEED")["A"]) >= 8, quiet=0.1)
    os.kill(run.proc.pid, sig)
    try:
        run.proc.wait(15)
    except subprocess.TimeoutExpired:
        fail(run, f"the service did not stop within 15 s of {sig.name}")
    records = journal_records(wd)
    assert not its_in(records, "fin", "CANCELED"), "interrupted work was journaled as cancelled"
    done_before = its_in(records, "fin")["A"]
    interrupted = its_in(records, "run")["A"] - done_before
    assert 8 <= len(done_before) < 24 and interrupted, (sorted(done_before), sorted(interrupted))
    assert {i for r in records if "interrupted" in r for a, b in r["interrupted"].get("A", []) for i in range(a, b)} \
        >= interrupted
    first_run_groups = {line.split()[1] for line in (wd / "starts.txt").read_text().splitlines()}

    res = resume(wd)
    check_ok(res)
    log = resumed_log(res)
    n = len(interrupted)
    assert f"{n} running at the crash run again ({n} of them interrupted by a signal)" in log, log[:600]
    report = last_states(res)
    its = iterations_of(report, "A")
    assert sorted(its) == list(range(24)) and all(e["state"] == "SUCCEED" for e in its.values())
    assert report["A"]["state"] == report["B"]["state"] == "SUCCEED"
    starts = collections.Counter(int(line.split()[0]) for line in (wd / "starts.txt").read_text().splitlines())
    assert all(starts[i] == 1 for i in done_before), {i: starts[i] for i in done_before if starts[i] != 1}
    assert all(starts[i] == 2 for i in interrupted), {i: starts[i] for i in interrupted}
    done = collections.Counter(int(x) for x in (wd / "done.txt").read_text().split())
    assert sorted(done) == list(range(24)) and set(done.values()) == {1}
    assert_no_survivors(first_run_groups, res)


def test_resume_keeps_failures_and_omitted_dependants(tmp_path, background):
    wd = tmp_path / "wd"
    jobs = [{"name": "F", "execution": {"script": "exit 1"}},
            {"name": "B", "dependencies": {"after": ["F"]}, "execution": {"script": "touch b.ran"}},
            {"name": "G", "iteration": {"stop": 3}, "execution": {"script": "[ ${it} -ne 1 ]"}},
            {"name": "D", "iteration": {"stop": 3}, "dependencies": {"after": ["G:${it}"]},
             "execution": {"script": "touch d.${it}.ran"}},
            {"name": "L", "execution": {"script": "echo $$ >> l.txt; sleep 1.5"}},
            {"name": "E", "dependencies": {"after": ["L"]}, "execution": {"script": "touch e.ran"}}]
    run = start_service(wd, [{"request": "submit", "jobs": jobs}, FINISH], nodes="4")
    background.append(run)

    def settled(records):
        fin = its_in(records, "fin")
        return (fin["F"] == {0} and fin["G"] == {0, 1, 2} and fin["D"] == {0, 1, 2}
                and 0 in its_in(records, "run")["L"] and not fin["L"])

    wait_journal(run, settled)
    crash(run)
    assert (wd / "d.0.ran").exists() and not (wd / "b.ran").exists()
    first_groups = set((wd / "l.txt").read_text().split())
    for f in wd.glob("*.ran"):
        f.unlink()  # from here on, a marker means: ran after the resume

    res = resume(wd)
    check_ok(res)
    report = last_states(res)
    got = {n: report[n]["state"] for n in ("F", "B", "G", "G:1", "D", "D:0", "D:1", "D:2", "L", "E")}
    assert got == {"F": "FAILED", "B": "OMITTED", "G": "FAILED", "G:1": "FAILED", "D": "FAILED",
                   "D:0": "SUCCEED", "D:1": "OMITTED", "D:2": "SUCCEED", "L": "SUCCEED", "E": "SUCCEED"}
    assert sorted(p.name for p in wd.glob("*.ran")) == ["e.ran"]  # B, D:1 never ran; nothing ended ran again
    assert states(report["L"])[1:4] == RETRY  # the retry, after the first QUEUED
    final = res.final_status()["JobStats"]
    assert (final["TotalJobs"], final["FailedJobs"], final["FinishedJobs"]) == (6, 4, 2)
    assert_no_survivors(first_groups, res)


def test_names_stay_taken_and_the_batch_file_goes_on(tmp_path, background):
    wd = tmp_path / "wd"
    first = [{"request": "submit", "jobs": [
                 {"name": "A", "iteration": {"stop": 2},
                  "execution": {"script": "echo $$ >> a.pids; sleep 1.5; echo ${it} >> a.txt"}}]},
             {"request": "submit", "jobs": [{"name": "X", "execution": {"script": "echo x >> x.txt"}}]}]
    run = start_service(wd, first, nodes="3")
    background.append(run)
    wait_journal(run, lambda r: any(rec.get("file") == 1 for rec in r) and its_in(r, "fin")["X"] == {0})
    wait_lines(wd / "a.pids", 2, run)
    crash(run)
    # text added to the batch file after the crash point
    more = [{"request": "submit", "jobs": [{"name": "A", "execution": {"script": "touch wrong-a"}}]},
            {"request": "submit", "jobs": [{"name": "X", "execution": {"script": "touch wrong-x"}}]},
            {"request": "submit", "jobs": [{"name": "D", "dependencies": {"after": ["A"]},
                                            "execution": {"script": "echo d >> d.txt"}}]},
            {"request": "listJobs"}]
    (tmp_path / "wd-reqs.json").write_text(json.dumps(first + more))

    res = resume(wd)  # no finishAfterAllTasksDone and no other interface: ends when everything has
    check_ok(res)
    replies = file_replies(resumed_log(res))
    assert [n for n, _ in replies] == [3, 4, 5, 6], "requests 1-2 were handled before the crash: " + str(replies)
    for n in (3, 4):
        reply = dict(replies)[n]
        assert reply["code"] != 0 and "already exist" in reply["message"], reply
    assert dict(replies)[5]["code"] == 0
    assert set(dict(replies)[6]["data"]["jobs"]) == {"A", "X", "D"}
    assert (wd / "d.txt").read_text() == "d\n"
    assert (wd / "x.txt").read_text() == "x\n"  # X had ended: not run again
    assert sorted((wd / "a.txt").read_text().split()) == ["0", "1"]
    assert not list(wd.glob("wrong-*"))
    report = last_states(res)
    assert report["A"]["state"] == report["D"]["state"] == "SUCCEED"


def test_options_are_restored_and_options_given_again_win(tmp_path, background):
    """First run --nodes 3; resume 1 (nothing given) uses 3 cores; a second crash; resume 2 with
    --nodes 5 --report-format text uses 5 cores and writes text entries."""
    wd = tmp_path / "wd"
    reqs = [{"request": "submit", "jobs": [
                {"name": "S", "iteration": {"stop": 3},
                 "execution": {"script": "echo $$ >> s.pids; sleep 2; echo ${it} >> s.txt"}}]},
            {"request": "resourcesInfo"}]
    run = start_service(wd, reqs, nodes="3")
    background.append(run)
    wait_lines(wd / "s.pids", 3, run)
    crash(run)

    res1 = resume(wd, background=background)
    wait_lines(wd / "s.pids", 6, res1)  # the three started again
    assert wait_for(lambda: "resourcesInfo" in resumed_log(res1), 10)
    crash(res1)
    (reply1,) = [r for n, r in file_replies(resumed_log(res1)) if n == 2]
    assert reply1["data"]["total_cores"] == 3, reply1
    assert "network interface" not in resumed_log(res1)

    res2 = resume(wd, "--nodes", "5", "--report-format", "text")
    check_ok(res2)
    (reply2,) = [r for n, r in file_replies(resumed_log(res2)) if n == 2]
    assert reply2["data"]["total_cores"] == 5, reply2
    final = res2.final_status()
    assert final["Resources"]["TotalCores"] == 5 and final["States"]["SUCCEED"] == 3
    text = res2.report_path.read_text()
    assert re.search(r"^S:0 \(SUCCEED\)$", text, re.M) and not text.lstrip().startswith("{"), text[:300]
    assert sorted((wd / "s.txt").read_text().split()) == ["0", "1", "2"]
    assert_no_survivors((wd / "s.pids").read_text().split(), res2)


def test_torn_last_journal_line_is_dropped_before_appending(tmp_path, background):
    wd = tmp_path / "wd"
    reqs = [{"request": "submit", "jobs": [{"name": "T", "iteration": {"stop": 2},
                                            "execution": {"script": "echo $$ >> t.pids; sleep 1"}}]}, FINISH]
    run = start_service(wd, reqs, nodes="2")
    background.append(run)
    wait_lines(wd / "t.pids", 2, run)
    crash(run)
    with open(journal_path(wd), "ab") as f:
        f.write(b'{"fin": {"SUCCEED": {"T": [[0, ')  # a write cut short by the crash
    res = resume(wd)
    check_ok(res)
    lines = journal_path(wd).read_bytes().splitlines()
    bad = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            bad.append(line)
    assert not bad, f"unreadable journal lines after the resume: {bad}"
    assert its_in(journal_records(wd), "fin", "SUCCEED")["T"] == {0, 1}  # what the resumed run wrote is readable
    assert res.final_status()["States"]["SUCCEED"] == 2


def _drop_report_entries(path: Path, names: set[str], fmt: str) -> None:
    """Remove the entries of `names` from a report: what a crash between the journal write and
    the report write leaves."""
    lines = path.read_text().splitlines(keepends=True)
    kept, dropping = [], False
    for line in lines:
        if fmt == "json":
            if json.loads(line)["name"] not in names:
                kept.append(line)
            continue
        if not line.startswith("\t"):
            dropping = line.split(" (", 1)[0] in names
        if not dropping:
            kept.append(line)
    path.write_text("".join(kept))


@pytest.mark.parametrize("fmt, lost", [("json", True), ("text", True), ("json", False)])
def test_ends_journaled_but_not_reported_at_the_crash_are_reported_at_resume(tmp_path, background, fmt, lost):
    wd = tmp_path / "wd"
    jobs = [{"name": "gate", "execution": {"script": "until [ -e release ]; do sleep 0.05; done"}},
            # ends after the requests are handled: their journal records come before its ends
            {"name": "T", "iteration": {"stop": 3}, "execution": {"exec": "/bin/sleep", "args": ["0.5"]}}]
    run = start_service(wd, [{"request": "submit", "jobs": jobs}, FINISH], nodes="4",
                        args=["--report-format", fmt])
    background.append(run)
    wait_journal(run, lambda r: its_in(r, "fin")["T"] == {0, 1, 2}, quiet=0.2)
    crash(run)
    last = journal_records(wd)[-1]
    assert "fin" in last, last
    in_last = {f"T:{i}" for i in its_in([last], "fin")["T"]}
    if in_last == {"T:0", "T:1", "T:2"}:
        in_last.add("T")  # the job ended in that pass too
    report = wd / SERVICE_DIR / "jobs.report"
    if lost:
        _drop_report_entries(report, in_last, fmt)
    (wd / "release").touch()

    res = resume(wd, "--report-format", fmt)
    check_ok(res)
    text = report.read_text()
    if fmt == "json":
        entries = [json.loads(line) for line in text.splitlines()]
        names = collections.Counter(e["name"] for e in entries)
        for name in ("T:0", "T:1", "T:2", "T"):
            assert names[name] == 1, (name, names)
        assert all(e["state"] == "SUCCEED" for e in entries if e["name"].startswith("T"))
        repaired = {e["name"] for e in entries if "died before writing" in e.get("messages", "")}
    else:
        heads = [line for line in text.splitlines() if line and not line.startswith("\t")]
        names = collections.Counter(line.split(" (", 1)[0] for line in heads)
        assert all(names[n] == 1 for n in ("T:0", "T:1", "T:2", "T")), names
        assert all(" (SUCCEED)" in line for line in heads if line.startswith("T"))
        repaired = {line.split(" (", 1)[0] for line in heads if "died before writing" in line}
    assert repaired == (in_last if lost else set())
    assert ("entries the dead run had journaled" in resumed_log(res)) == lost


@pytest.mark.parametrize("lost", [True, False])
def test_dependents_skipped_in_the_crash_pass_are_reported_at_resume(tmp_path, background, lost):
    # F fails: D (after F) and E (after D) are OMITTED in the same pass, never journaled themselves
    wd = tmp_path / "wd"
    jobs = [{"name": "gate", "execution": {"script": "until [ -e release ]; do sleep 0.05; done"}},
            {"name": "F", "execution": {"script": "sleep 0.5; exit 3"}},  # after the requests
            {"name": "D", "execution": {"exec": "/bin/true"}, "dependencies": {"after": ["F"]}},
            {"name": "E", "execution": {"exec": "/bin/true"}, "dependencies": {"after": ["D"]}}]
    run = start_service(wd, [{"request": "submit", "jobs": jobs}, FINISH], nodes="4")
    background.append(run)
    wait_journal(run, lambda r: its_in(r, "fin")["F"] == {0}, quiet=0.2)
    crash(run)
    assert its_in(journal_records(wd)[-1:], "fin")["F"] == {0}, journal_records(wd)[-3:]
    report = wd / SERVICE_DIR / "jobs.report"
    if lost:
        _drop_report_entries(report, {"F", "D", "E"}, "json")
    (wd / "release").touch()

    res = resume(wd)
    check_ok(res)
    entries = [json.loads(line) for line in report.read_text().splitlines()]
    names = collections.Counter(e["name"] for e in entries)
    assert [names[n] for n in ("F", "D", "E")] == [1, 1, 1], names
    states = {e["name"]: e["state"] for e in entries}
    assert (states["F"], states["D"], states["E"]) == ("FAILED", "OMITTED", "OMITTED")
    repaired = {e["name"] for e in entries if "died before writing" in e.get("messages", "")}
    assert repaired == ({"F", "D", "E"} if lost else set())


def test_large_job_resumes_fast_and_the_journal_stays_compact(tmp_path, background):
    wd = tmp_path / "wd"
    total = 200_000
    reqs = [{"request": "submit", "jobs": [{"name": "big", "iteration": {"stop": total},
                                            "execution": {"exec": "/bin/true"}}]}, FINISH]
    run = start_service(wd, reqs, nodes="64,64,64,64", args=["--fake-launch", "--report-format", "none"])
    background.append(run)
    wait_journal(run, lambda r: len(its_in(r, "fin")["big"]) >= 40_000, timeout=40)
    crash(run)
    done = len(its_in(journal_records(wd), "fin")["big"])
    assert done < total, "the job was not killed mid-way"

    res = resume(wd, timeout=30)
    check_ok(res)
    assert res.elapsed < 10, f"resuming {total - done} iterations took {res.elapsed:.1f} s"
    assert f"{done} iterations finished" in resumed_log(res)
    final = res.final_status()
    assert final["States"]["SUCCEED"] == total and final["IterationStats"]["TotalIterations"] == total
    lines = journal_path(wd).read_bytes().count(b"\n")
    assert lines < total // 100, f"{lines} journal lines for {total} iterations"


def test_resume_without_journal_is_a_clear_error_and_no_journal_writes_none(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run(service_command() + ["--resume", str(empty)], capture_output=True, text=True,
                          env=service_env(), timeout=30)
    assert proc.returncode != 0 and "no service directory with a journal" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr

    wd = tmp_path / "wd"
    wd.mkdir()
    reqs = tmp_path / "r.json"
    reqs.write_text(json.dumps([{"request": "submit", "jobs": [{"name": "j", "iteration": {"stop": 10},
                                                               "execution": {"exec": "/bin/true"}}]}]))
    proc = subprocess.run(service_command() + ["--file-path", str(reqs), "--wd", str(wd), "--id", "test",
                                               "--nodes", "2", "--fake-launch", "--no-journal"],
                          capture_output=True, text=True, env=service_env(), timeout=30)
    assert proc.returncode == 0, proc.stderr
    sdir = wd / SERVICE_DIR
    assert (sdir / "final_status.json").exists() and not (sdir / "journal").exists()
    proc = subprocess.run(service_command() + ["--resume", str(wd)], capture_output=True, text=True,
                          env=service_env(), timeout=30)
    assert proc.returncode != 0 and "no service directory with a journal" in proc.stdout + proc.stderr


def test_resume_with_too_few_cores_for_a_journaled_job_is_a_clear_error(tmp_path, background):
    wd = tmp_path / "wd"
    reqs = [{"request": "submit", "jobs": [{"name": "W", "resources": {"numCores": 3},
                                            "execution": {"script": "echo $$ >> w.pids; sleep 1"}}]}]
    run = start_service(wd, reqs, nodes="3")
    background.append(run)
    wait_lines(wd / "w.pids", 1, run)
    crash(run)
    res = resume(wd, "--nodes", "2")
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "cannot be restored" in res.stderr and "Not enough resources for job W" in res.stderr, res.stderr


# ---------------------------------------------------------------- orphans
def test_killed_service_leaves_no_task_running(tmp_path, background):
    wd = tmp_path / "wd"
    reqs = [{"request": "submit", "jobs": [{"name": "s", "iteration": {"stop": 4},
                                            "execution": {"script": "echo $$ >> pids.txt; sleep 100"}}]}]
    run = start_service(wd, reqs, nodes="4")
    background.append(run)
    groups = wait_lines(wd / "pids.txt", 4, run)
    assert len(group_members(groups)) == 4  # bash execs the last command: one process per task
    crash(run)
    took = assert_no_survivors(groups, run, timeout=5)
    assert took < 5


def test_killed_agent_takes_its_tasks_along_and_they_run_again(tmp_path, background):
    wd = tmp_path / "wd"
    script = "echo $$ >> pids.txt; if [ -e retry.flag ]; then sleep 1; else sleep 100; fi; echo ${it} >> done.txt"
    reqs = [{"request": "submit", "jobs": [{"name": "s", "iteration": {"stop": 4}, "execution": {"script": script}}]},
            FINISH]
    run = start_service(wd, reqs, nodes="4")
    background.append(run)
    groups = wait_lines(wd / "pids.txt", 4, run)
    agent_log = wd / SERVICE_DIR / "agent-local.log"
    pids = [int(p) for p in re.findall(r"agent \S+ \(pid (\d+)\)", agent_log.read_text())]
    assert len(pids) == 1, agent_log.read_text()
    agent = psutil.Process(pids[0])
    assert "qcg_hier_agent" in " ".join(agent.cmdline()) and agent.ppid() == run.proc.pid
    (wd / "retry.flag").touch()
    os.kill(agent.pid, signal.SIGKILL)

    t0 = time.monotonic()
    wait_for(lambda: not group_members(groups), 5, 0.05)
    left = group_members(groups)
    kill_groups(groups)
    assert not left, f"tasks of the killed agent still running after {time.monotonic() - t0:.1f} s"

    finish_background(run, timeout=30)
    assert run.returncode == 0, run.describe()
    assert "restarting the node agent" in run.log_text
    new = [int(p) for p in re.findall(r"agent \S+ \(pid (\d+)\)", agent_log.read_text())]
    assert len(new) == 2 and new[1] != new[0]
    its = iterations_of(run.report(), "s")
    for i, e in its.items():
        assert e["state"] == "SUCCEED" and states(e) == ["SCHEDULED", "EXECUTING", "QUEUED", "SCHEDULED",
                                                          "EXECUTING", "SUCCEED"], (i, states(e))
    assert sorted((wd / "done.txt").read_text().split()) == ["0", "1", "2", "3"]
    assert len((wd / "pids.txt").read_text().split()) == 8
    assert_no_survivors((wd / "pids.txt").read_text().split(), run)


def test_a_resumed_run_does_not_inherit_the_stdin_watch():
    """--exit-on-stdin-close belongs to the process that started the run (a LocalManager): restored
    by --resume from a terminal or /dev/null, it would stop the resumed service at once."""
    from types import SimpleNamespace
    from qcg_hier.service.manager import journal_options

    saved = journal_options(SimpleNamespace(exit_on_stdin_close=True, wd="/x", nodes="2", resume="/y"))
    assert saved == {"wd": "/x", "nodes": "2"}
