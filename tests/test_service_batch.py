"""Black-box tests of `qcg-pm-service --file-path`: requests, replies, files, options.

Every request type and its reply in service.log; bad input of every kind (logged,
the service goes on and exits cleanly, nothing accepted is lost); jobs.report,
final_status.json and service.log contents; no starvation of a wide job; the
command line options; and compatibility with upstream's `qcg-pm-report`.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from conftest import HAPPY_JOBS, iterations_of, run_service, service_command, service_env, states, when

TRUE = {"exec": "/bin/true"}


def _ok(reply: dict) -> dict:
    assert reply.get("code") == 0, reply
    return reply


def _error(reply: dict, *parts: str) -> str:
    assert reply.get("code") == 1, reply
    message = reply.get("message", "")
    for part in parts:
        assert part in message, f"{part!r} not in the error message {message!r}"
    return message


# ================================================================ report, final status, log (happy_run)
def _iso(text: str) -> datetime:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}", text), f"not an ISO date with microseconds: {text}"
    return datetime.fromisoformat(text)


def test_report_job_line_fields(happy_run):
    entry = happy_run.report()["plain"]
    assert entry["state"] == "SUCCEED"
    assert states(entry) == ["QUEUED", "SCHEDULED", "EXECUTING", "SUCCEED"]
    dates = [_iso(h["date"]) for h in entry["history"]]
    assert dates == sorted(dates)
    runtime = entry["runtime"]
    for key in ("allocation", "wd", "rtime", "exit_code", "pid", "pname", "cpu_time", "max_rss_kb"):
        assert key in runtime, f"runtime lacks {key}: {runtime}"
        assert isinstance(runtime[key], str), f"runtime {key} must be a string: {runtime}"
    assert re.fullmatch(r"n[01]\[\d+\]", runtime["allocation"])
    assert runtime["wd"] == str(happy_run.wd)
    assert re.fullmatch(r"\d+:\d\d:\d\d(\.\d{6})?", runtime["rtime"])
    assert runtime["exit_code"] == "0"
    assert runtime["pid"].isdigit()
    assert runtime["pname"] == "echo"
    assert float(runtime["cpu_time"]) >= 0
    assert int(runtime["max_rss_kb"]) >= 0
    assert entry["execution"]["exec"] == "/bin/echo"
    assert entry["execution"]["args"] == ["plain", "ok"]
    assert entry["execution"]["stdout"] == "plain.out"
    assert entry["resources"] == {"numCores": {"exact": 1}}


def test_report_iteration_lines_and_dependencies_field(happy_run):
    report = happy_run.report()
    it1 = report["iter:1"]
    assert it1["state"] == "SUCCEED"
    assert states(it1) == ["SCHEDULED", "EXECUTING", "SUCCEED"]
    assert it1["runtime"]["pname"] == "bash" and it1["runtime"]["exit_code"] == "0"
    assert "execution" not in it1  # only whole-job lines carry the description
    job = report["iter"]
    assert states(job)[0] == "QUEUED" and states(job)[-1] == "SUCCEED"
    assert job["iteration"] == {"start": 0, "stop": 3}
    assert "script" in job["execution"]
    assert report["dep_one"]["dependencies"] == {"after": ["iter:1"]}
    # every iteration line comes before its job's line
    names = [e["name"] for e in happy_run.report_entries()]
    assert max(names.index(f"iter:{i}") for i in range(3)) < names.index("iter")


def test_final_status_counts(happy_run):
    status = happy_run.final_status()
    njobs = len(HAPPY_JOBS)
    iterations = sum(len(j["iteration"].get("values", ())) or j["iteration"]["stop"] - j["iteration"].get("start", 0)
                     if "iteration" in j else 1 for j in HAPPY_JOBS)
    assert status["JobStats"] == {"TotalJobs": njobs, "InScheduleJobs": 0, "FailedJobs": 0,
                                  "FinishedJobs": njobs, "ExecutingJobs": 0}
    assert status["IterationStats"] == {"TotalIterations": iterations, "InScheduleIterations": 0,
                                        "FailedIterations": 0, "FinishedIterations": iterations,
                                        "ExecutingIterations": 0}
    assert status["Resources"] == {"TotalNodes": 2, "TotalCores": 4, "UsedCores": 0, "FreeCores": 4}
    assert status["System"]["InstanceId"] == "test"
    assert status["System"]["StatusPublisher"] is None
    assert status["System"]["Wd"] == str(happy_run.wd)


def test_service_log_header(happy_run):
    messages = happy_run.log_messages()
    assert re.match(r"service test version v\S+ started ", messages[0]), messages[0]
    assert "available resources: 4 (0 used) cores on 2 nodes" in messages
    assert happy_run.stdout == "" and "Traceback" not in happy_run.stderr


# ================================================================ every request type
PADDING = 3000  # cheap requests that give the jobs time to finish before jobInfo/removeJob look at them


def _requests_list():
    reqs = [
        {"request": "submit", "jobs": [  # 1
            {"name": "sl", "execution": {"exec": "sleep", "args": ["30"]}},
            {"name": "waiter", "dependencies": {"after": ["sl"]}, "execution": TRUE},
            {"name": "quick", "execution": TRUE},
            {"name": "it", "iteration": {"stop": 3}, "execution": {"exec": "/bin/echo", "args": ["${it}"]}}]},
        {"request": "jobStatus", "jobNames": ["sl", "waiter", "it:1", "nosuch", "it:7", "it"]},  # 2
        {"request": "listJobs"},  # 3
        {"request": "status", "options": {"allJobsFinished": True}},  # 4
        {"request": "cancelJob", "jobNames": ["waiter"]},  # 5: queued (waits for sl)
        {"request": "jobStatus", "jobNames": ["waiter"]},  # 6
        {"request": "cancelJob", "jobNames": ["sl", "ghost"]},  # 7: running
    ]
    reqs += [{"request": "jobStatus", "jobNames": ["sl", "quick", "it"]}] * PADDING  # 8 .. 7+PADDING
    reqs += [
        {"request": "jobInfo", "jobNames": ["it"], "params": {"withChilds": True}},  # P+8
        {"request": "jobInfo", "jobNames": ["quick", "sl", "waiter", "it:2", "nosuch"]},  # P+9
        {"request": "removeJob", "jobNames": ["quick", "ghost"]},  # P+10
        {"request": "listJobs"},  # P+11
        {"request": "resourcesInfo"},  # P+12
        {"request": "status"},  # P+13
        {"request": "status", "options": {"allJobsFinished": True}},  # P+14
        {"request": "submit", "jobs": [{"name": "quick", "execution": {"exec": "/bin/echo", "args": ["again"],
                                                                       "stdout": "again.out"}}]},  # P+15
        {"request": "control", "command": "finishAfterAllTasksDone"},  # P+16
        {"request": "control", "command": "finishAfterAllTasksDone"},  # P+17
        {"request": "control", "command": "nope"},  # P+18
        {"request": "finish"},  # P+19
        {"request": "submit", "jobs": [{"name": "late", "execution": TRUE}]},  # P+20
        {"request": "register", "entity": "manager", "params": {}},  # P+21
        {"request": "notify", "entity": "job", "params": {}},  # P+22
    ]
    return reqs


@pytest.fixture(scope="module")
def requests_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("requests") / "wd"
    return run_service(wd, _requests_list(), nodes="2,2", timeout=60)


def R(n):  # noqa: N802 - request numbers after the padding
    return PADDING + n


def test_submit_reply(requests_run):
    reply = _ok(requests_run.reply(1))
    assert reply["data"] == {"submitted": 4, "jobs": ["sl", "waiter", "quick", "it"]}
    assert reply["message"] == "4 jobs submitted"


def test_job_status_with_iteration_and_unknown_names(requests_run):
    jobs = _ok(requests_run.reply(2))["data"]["jobs"]
    assert jobs["sl"] == {"status": 0, "data": {"jobName": "sl", "status": "EXECUTING"}}
    assert jobs["waiter"] == {"status": 0, "data": {"jobName": "waiter", "status": "QUEUED"}}
    assert jobs["it:1"]["status"] == 0 and jobs["it:1"]["data"]["jobName"] == "it:1"
    assert jobs["it:1"]["data"]["status"] in ("QUEUED", "SCHEDULED", "EXECUTING", "SUCCEED")
    assert jobs["it"]["status"] == 0
    assert jobs["nosuch"]["status"] == 1 and "nosuch" in jobs["nosuch"]["message"]
    assert jobs["it:7"]["status"] == 1 and "7" in jobs["it:7"]["message"]


def test_list_jobs(requests_run):
    data = _ok(requests_run.reply(3))["data"]
    assert data["length"] == 4
    assert set(data["jobs"]) == {"sl", "waiter", "quick", "it"}
    assert data["jobs"]["sl"]["status"] == "EXECUTING"
    assert data["jobs"]["waiter"] == {"status": "QUEUED", "inQueue": 0}
    after = _ok(requests_run.reply(R(11)))["data"]
    assert set(after["jobs"]) == {"sl", "waiter", "it"}  # quick was removed
    assert after["jobs"]["sl"]["status"] == "CANCELED"


def test_status_all_jobs_finished_option(requests_run):
    assert _ok(requests_run.reply(4))["data"] == {"AllJobsFinished": False}
    assert _ok(requests_run.reply(R(14)))["data"] == {"AllJobsFinished": True}


def test_cancel_queued_job(requests_run):
    assert _ok(requests_run.reply(5))["data"] == {"canceled": 1}
    assert _ok(requests_run.reply(6))["data"]["jobs"]["waiter"]["data"]["status"] == "CANCELED"
    entry = requests_run.report(unique=False)["waiter"]
    assert entry["state"] == "CANCELED"
    assert "EXECUTING" not in states(entry)


def test_cancel_running_job_ends_it_quickly(requests_run):
    data = _ok(requests_run.reply(7))["data"]
    assert data["canceled"] == 1
    assert "ghost" in data["errors"]
    entry = requests_run.report(unique=False)["sl"]
    assert entry["state"] == "CANCELED"
    assert "EXECUTING" in states(entry), "sl was meant to be running when it was canceled"
    took = (when(entry, "CANCELED") - when(entry, "EXECUTING")).total_seconds()
    assert took < 3, f"the canceled `sleep 30` ended only after {took:.1f} s"
    assert requests_run.elapsed < 20, "the service waited for the canceled sleep"


def _padding_was_enough(run) -> None:
    last = run.reply(7 + PADDING)["data"]["jobs"]
    unfinished = {n: j["data"]["status"] for n, j in last.items()
                  if j["data"]["status"] not in ("SUCCEED", "CANCELED")}
    assert not unfinished, f"jobs still running after {PADDING} padding requests (machine too slow?): {unfinished}"


def test_job_info_with_childs(requests_run):
    _padding_was_enough(requests_run)
    info = _ok(requests_run.reply(R(8)))["data"]["jobs"]["it"]
    assert info["status"] == 0
    data = info["data"]
    assert data["jobName"] == "it" and data["status"] == "SUCCEED"
    assert data["iterations"] == {"start": 0, "stop": 3, "total": 3, "finished": 3, "failed": 0}
    assert [c["iteration"] for c in data["childs"]] == [0, 1, 2]
    for child in data["childs"]:
        assert child["state"] == "SUCCEED"
        runtime = child["runtime"]
        assert all(isinstance(v, str) for v in runtime.values()), runtime
        assert runtime["exit_code"] == "0" and runtime["pname"] == "echo" and runtime["pid"].isdigit()
    assert "QUEUED" in data["history"] and "SUCCEED" in data["history"]


def test_job_info_runtime_strings_and_unknown_name(requests_run):
    _padding_was_enough(requests_run)
    jobs = _ok(requests_run.reply(R(9)))["data"]["jobs"]
    quick = jobs["quick"]["data"]
    assert quick["status"] == "SUCCEED"
    assert set(quick["runtime"]) >= {"allocation", "wd", "rtime", "exit_code", "pid", "pname"}
    assert all(isinstance(v, str) for v in quick["runtime"].values())
    assert quick["runtime"]["exit_code"] == "0"
    assert [line.split(": ")[-1] for line in quick["history"].strip().splitlines()] == \
        ["QUEUED", "SCHEDULED", "EXECUTING", "SUCCEED"]
    assert jobs["sl"]["data"]["status"] == "CANCELED"
    assert jobs["waiter"]["data"]["status"] == "CANCELED"
    assert jobs["it:2"]["data"]["status"] == "SUCCEED" and jobs["it:2"]["data"]["runtime"]["exit_code"] == "0"
    assert jobs["nosuch"]["status"] == 1 and "nosuch" in jobs["nosuch"]["message"]


def test_remove_job_frees_the_name(requests_run):
    _padding_was_enough(requests_run)
    data = _ok(requests_run.reply(R(10)))["data"]
    assert data["removed"] == 1 and "ghost" in data["errors"]
    assert _ok(requests_run.reply(R(15)))["data"]["jobs"] == ["quick"]
    assert (requests_run.wd / "again.out").read_text() == "again\n"


def test_resources_info(requests_run):
    assert _ok(requests_run.reply(R(12)))["data"] == {"total_nodes": 2, "total_cores": 4, "used_cores": 0,
                                                      "free_cores": 4}


def test_status(requests_run):
    data = _ok(requests_run.reply(R(13)))["data"]
    assert data["Resources"] == {"TotalNodes": 2, "TotalCores": 4, "UsedCores": 0, "FreeCores": 4}
    assert data["JobStats"]["TotalJobs"] == 3  # quick removed
    assert data["JobStats"]["FinishedJobs"] == 3  # it SUCCEED, sl and waiter CANCELED
    assert data["IterationStats"]["TotalIterations"] == 5
    system = data["System"]
    for key in ("InstanceId", "Started", "Generated", "Uptime", "Ifaces", "Host", "Account", "Wd", "PythonVersion",
                "Python", "Platform"):
        assert key in system, key
    assert system["Ifaces"] == ["FILE"] and system["InstanceId"] == "test"


def test_control_and_finish(requests_run):
    assert _ok(requests_run.reply(R(16)))["message"] == "finishAfterAllTasksDone command accepted"
    _error(requests_run.reply(R(17)), "already requested")
    _error(requests_run.reply(R(18)), "nope")
    _error(requests_run.reply(R(19)), "already requested")
    _error(requests_run.reply(R(20)), "finishing")
    _error(requests_run.reply(R(21)), "Wrong register request - missing key register parameters")
    _error(requests_run.reply(R(22)), "Wrong notify request - missing key notify parameters")
    assert "late" not in requests_run.report(unique=False)
    assert requests_run.report(unique=False)["quick"]["state"] == "SUCCEED"  # accepted before the finish: still run


def test_requests_after_finish_control_are_all_answered(tmp_path):
    """The jobs may all end while the file is still being read: the rest of the file is still served."""
    requests = [{"request": "submit", "jobs": [{"name": "q", "execution": TRUE}]},
                {"request": "control", "command": "finishAfterAllTasksDone"}]
    requests += [{"request": "resourcesInfo"}] * 500
    requests += [{"request": "jobStatus", "jobNames": ["q"]}]
    run = run_service(tmp_path / "wd", requests, nodes="2")
    assert len(run.replies()) == len(requests), f"only {len(run.replies())} of {len(requests)} requests answered"
    assert _ok(run.reply(len(requests)))["data"]["jobs"]["q"]["data"]["status"] == "SUCCEED"


def test_finish_request_waits_for_accepted_jobs(tmp_path):
    requests = [
        {"request": "submit", "jobs": [{"name": "a", "execution": {"exec": "sleep", "args": ["0.5"]}}]},
        {"request": "finish"},
        {"request": "submit", "jobs": [{"name": "b", "execution": TRUE}]},
    ]
    run = run_service(tmp_path / "wd", requests, timeout=30)
    assert "when" in _ok(run.reply(2))["data"]
    _error(run.reply(3), "finishing")
    report = run.report()
    assert report["a"]["state"] == "SUCCEED"
    assert "b" not in report


# ================================================================ bad requests
BAD = [  # (request, words the error message must contain)
    ("just a string", ["Invalid request"]),
    ({"request": "nope"}, ["Unknown request", "nope"]),
    ({"jobs": [{"name": "x", "execution": TRUE}]}, ["Invalid request"]),
    ({"request": "submit", "jobs": []}, ["jobs"]),
    ({"request": "submit", "jobs": [{"execution": TRUE}]}, ["name"]),
    ({"request": "submit", "jobs": [{"name": "noexec"}]}, ["noexec", "execution"]),
    ({"request": "submit", "jobs": [{"name": "d1", "execution": TRUE}, {"name": "d1", "execution": TRUE}]},
     ["d1", "twice"]),
    ({"request": "submit", "jobs": [{"name": "good", "execution": TRUE}]}, ["good", "exist"]),
    ({"request": "submit", "jobs": [{"name": "both", "execution": {"exec": "/bin/true", "script": "true"}}]},
     ["both", "exec", "script"]),
    ({"request": "submit", "jobs": [{"name": "uk_top", "stdout": "x", "execution": TRUE}]}, ["uk_top", "stdout"]),
    ({"request": "submit", "jobs": [{"name": "uk_exec", "execution": {"exec": "/bin/true", "foo": 1}}]},
     ["uk_exec", "execution.foo"]),
    ({"request": "submit", "jobs": [{"name": "uk_res", "execution": TRUE, "resources": {"cpus": 2}}]},
     ["uk_res", "resources.cpus"]),
    ({"request": "submit", "jobs": [
        {"name": "c1", "execution": TRUE, "dependencies": {"after": ["c2"]}},
        {"name": "c2", "execution": TRUE, "dependencies": {"after": ["c1"]}}]}, ["cycle", "c1", "c2"]),
    ({"request": "submit", "jobs": [{"name": "selfdep", "execution": TRUE, "dependencies": {"after": ["selfdep"]}}]},
     ["cycle", "selfdep"]),
    ({"request": "submit", "jobs": [{"name": "big", "execution": TRUE, "resources": {"numCores": 100}}]},
     ["big", "100"]),
    ({"request": "submit", "jobs": [{"name": "zero", "execution": TRUE, "resources": {"numCores": 0}}]},
     ["zero", "numCores"]),
    ({"request": "submit", "jobs": [{"name": "neg", "execution": TRUE, "resources": {"numCores": -2}}]},
     ["neg", "numCores"]),
    ({"request": "submit", "jobs": [{"name": "itbad", "execution": TRUE, "iteration": {"start": 5, "stop": 2}}]},
     ["itbad", "stop"]),
    ({"request": "submit", "jobs": [{"name": "wtbad", "execution": TRUE, "resources": {"wt": "abc"}}]},
     ["wtbad", "wt"]),
    ({"request": "submit", "jobs": [{"name": "wtbad2", "execution": TRUE, "resources": {"wt": "10 minutes"}}]},
     ["wtbad2", "wt"]),
    ({"request": "jobStatus"}, ["Wrong job status request - missing job names"]),
    ({"request": "cancelJob", "jobNames": "good"}, ["Wrong cancel job request - missing job names"]),
]
BAD_FIRST = 2  # request number of BAD[0]
REJECTED_NAMES = {"x", "noexec", "d1", "both", "uk_top", "uk_exec", "uk_res", "c1", "c2", "selfdep", "big", "zero",
                  "neg", "itbad", "wtbad", "wtbad2"}


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("bad") / "wd"
    requests = [{"request": "submit", "jobs": [{"name": "good", "execution": {"exec": "/bin/echo", "args": ["good"],
                                                                               "stdout": "good.out"}}]}]
    requests += [req for req, _ in BAD]
    requests += [
        {"request": "submit", "jobs": [{"name": "orphan", "execution": TRUE, "dependencies": {"after": ["ghost"]}}]},
        {"request": "submit", "jobs": [{"name": "good2", "execution": TRUE}]},
        {"request": "control", "command": "finishAfterAllTasksDone"},
    ]
    return run_service(wd, requests, nodes="2,2", timeout=60)


@pytest.mark.parametrize("index", range(len(BAD)), ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_request_is_answered_with_a_clear_error(bad_run, index):
    number = BAD_FIRST + index
    _error(bad_run.reply(number), *BAD[index][1])
    logged = [m for m in bad_run.log_messages() if m.startswith(f"file request {number} failed: ")]
    assert logged, f"no error line logged for request {number}"


def test_bad_requests_lose_nothing_accepted(bad_run):
    report = bad_run.report()
    assert report["good"]["state"] == "SUCCEED"
    assert report["good2"]["state"] == "SUCCEED"  # submitted after all the bad requests
    assert (bad_run.wd / "good.out").read_text() == "good\n"
    assert not REJECTED_NAMES & set(report), f"rejected jobs ran: {REJECTED_NAMES & set(report)}"
    assert bad_run.final_status()["JobStats"]["TotalJobs"] == 3
    assert "Traceback" not in bad_run.stderr + bad_run.log_text


def test_dependency_on_unknown_job_is_omitted(bad_run):
    _ok(bad_run.reply(BAD_FIRST + len(BAD)))
    entry = bad_run.report()["orphan"]
    assert entry["state"] == "OMITTED"
    assert "ghost" in entry["messages"]


def test_malformed_json_file(tmp_path):
    run = run_service(tmp_path / "wd", '[{"request": "submit", "jobs": [', expect_rc=None)
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "not valid JSON" in output and "wd-reqs.json" in output, run.describe()
    assert "Traceback" not in output
    assert any("not valid JSON" in m for m in run.log_messages()), run.describe()


def test_file_that_is_not_a_list(tmp_path):
    run = run_service(tmp_path / "wd", json.dumps({"request": "listJobs"}), expect_rc=None)
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "list" in output, run.describe()
    assert "Traceback" not in output
    assert any("list" in m and "request file" in m for m in run.log_messages()), run.describe()


def test_ten_million_iterations_cancelled_at_once(tmp_path):
    requests = [
        {"request": "submit", "jobs": [{"name": "first", "execution": {"exec": "/bin/echo", "args": ["first"],
                                                                        "stdout": "first.out"}}]},
        {"request": "submit", "jobs": [{"name": "huge", "iteration": {"stop": 10 ** 7}, "execution": TRUE}]},
        {"request": "cancelJob", "jobNames": ["huge"]},
        {"request": "control", "command": "finishAfterAllTasksDone"},
    ]
    run = run_service(tmp_path / "wd", requests, timeout=60)
    assert _ok(run.reply(2))["data"]["submitted"] == 1
    assert _ok(run.reply(3))["data"]["canceled"] == 1
    report = run.report()
    assert report["huge"]["state"] == "CANCELED"
    assert report["first"]["state"] == "SUCCEED"
    assert len(iterations_of(report, "huge")) < 1000  # only what had started is reported one by one
    assert run.final_status()["IterationStats"]["TotalIterations"] == 10 ** 7 + 1
    assert run.elapsed < 6, f"the run took {run.elapsed:.1f} s"


class _PeakRss:
    """The peak RSS (VmHWM, KiB) of the service running in `wd`, read from /proc while it runs."""

    def __init__(self, wd: Path):
        import threading
        self.wd, self.kib, self.pid = str(wd), 0, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        import psutil
        while not self._stop.is_set():
            if self.pid is None:
                for proc in psutil.process_iter(["cmdline"]):
                    argv = proc.info["cmdline"] or []
                    if "--file-path" in argv and self.wd in argv:
                        self.pid = proc.pid
                        break
            if self.pid is not None:
                try:
                    with open(f"/proc/{self.pid}/status") as f:
                        for line in f:
                            if line.startswith("VmHWM:"):
                                self.kib = max(self.kib, int(line.split()[1]))
                except OSError:
                    pass
            self._stop.wait(0.01)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.kib


def test_a_job_of_10_12_iterations_costs_no_memory_per_iteration(tmp_path):
    """10^12 iterations: a few end, then the job is cancelled (in bulk); another is OMITTED at once.
    The service stays small (its per-iteration states cost memory only where iterations ended)."""
    n = 10 ** 12
    wd = tmp_path / "wd"
    requests = [
        {"request": "submit", "jobs": [{"name": "huge", "iteration": {"stop": n}, "execution": TRUE}]},
        # one turn of the loop each: the fake launch ends a few iterations meanwhile
        *[{"request": "jobStatus", "jobNames": ["huge"]} for _ in range(10)],
        {"request": "cancelJob", "jobNames": ["huge"]},
        {"request": "jobInfo", "jobNames": ["huge"], "params": {"withChilds": True}},
        {"request": "jobStatus", "jobNames": ["huge:0", f"huge:{n - 1}"]},
        {"request": "submit", "jobs": [{"name": "omitted", "iteration": {"stop": n}, "execution": TRUE,
                                        "dependencies": {"after": ["no-such-job"]}}]},
        {"request": "jobInfo", "jobNames": ["omitted", f"omitted:{n // 2}"]},
        {"request": "control", "command": "finishAfterAllTasksDone"},
    ]
    watch = _PeakRss(wd)
    try:
        run = run_service(wd, requests, nodes="4", args=["--fake-launch"], timeout=60)
    finally:
        peak_kib = watch.stop()
    assert watch.pid is not None and peak_kib > 0
    assert peak_kib < 200 * 1024, f"the service's peak RSS was {peak_kib / 1024:.0f} MiB"
    assert _ok(run.reply(1))["data"]["submitted"] == 1
    assert _ok(run.reply(12))["data"]["canceled"] == 1
    info = _ok(run.reply(13))["data"]["jobs"]["huge"]["data"]
    assert info["status"] == "CANCELED"
    its = info["iterations"]
    done = its["total"] - its["failed"]  # the iterations that ran (SUCCEED); the others were cancelled
    assert its["start"] == 0 and its["stop"] == n and its["total"] == its["finished"] == n and 4 <= done < 10 ** 5
    childs = info["childs"]
    assert len(childs) == 100_000 and [c["iteration"] for c in childs[:3]] == [0, 1, 2]
    assert [c["state"] for c in childs] == ["SUCCEED"] * done + ["CANCELED"] * (100_000 - done)
    assert childs[0]["runtime"]["exit_code"] == "0" and "runtime" not in childs[-1]
    statuses = _ok(run.reply(14))["data"]["jobs"]
    assert statuses["huge:0"]["data"]["status"] == "SUCCEED"
    assert statuses[f"huge:{n - 1}"]["data"]["status"] == "CANCELED"
    omitted = _ok(run.reply(16))["data"]["jobs"]
    assert omitted["omitted"]["data"]["status"] == "OMITTED"
    assert omitted["omitted"]["data"]["iterations"]["finished"] == n
    assert omitted[f"omitted:{n // 2}"]["data"]["status"] == "OMITTED"
    report = run.report()
    assert report["huge"]["state"] == "CANCELED" and report["omitted"]["state"] == "OMITTED"
    assert len(iterations_of(report, "huge")) == done  # only what ran is reported one by one
    assert all(e["state"] == "SUCCEED" for e in iterations_of(report, "huge").values())
    stats = run.final_status()["IterationStats"]
    assert stats["TotalIterations"] == 2 * n and stats["InScheduleIterations"] == 0
    assert stats["FailedIterations"] == n and stats["FinishedIterations"] == n  # OMITTED; SUCCEED + CANCELED
    assert run.elapsed < 20, f"the run took {run.elapsed:.1f} s"


# ================================================================ starvation
def test_wide_job_is_not_starved_by_later_iterations(tmp_path):
    sleep = {"exec": "sleep", "args": ["0.05"]}
    requests = [{"request": "submit", "jobs": [
        {"name": "A", "iteration": {"stop": 40}, "execution": sleep},
        {"name": "B", "resources": {"numCores": 4}, "execution": TRUE},
        {"name": "C", "iteration": {"stop": 40}, "execution": sleep},
    ]}]
    run = run_service(tmp_path / "wd", requests, nodes="4", timeout=60)
    report = run.report()
    assert all(report[n]["state"] == "SUCCEED" for n in ("A", "B", "C"))
    b_start = when(report["B"], "SCHEDULED")
    c_starts = [when(e, "SCHEDULED") for e in iterations_of(report, "C").values()]
    assert len(c_starts) == 40
    later = sum(1 for t in c_starts if t > b_start)
    assert later >= 30, f"B started after {40 - later} of C's 40 iterations"


# ================================================================ command line options
def test_show_progress_prints_lines_when_not_a_terminal(tmp_path):
    requests = [{"request": "submit", "jobs": [{"name": "p", "iteration": {"stop": 5}, "execution": TRUE}]}]
    run = run_service(tmp_path / "wd", requests, args=["--show-progress"])
    lines = [m for m in map(str.strip, run.stdout.splitlines())
             if re.match(r"done \d+\s+failed \d+\s+running \d+\s+queued \d+", m)]
    assert lines, f"no progress line on stdout:\n{run.stdout}"
    assert "\r" not in run.stdout and "\033" not in run.stdout  # plain lines, not terminal control
    last = re.match(r"done (\d+)\s+failed (\d+)\s+running (\d+)\s+queued (\d+)", lines[-1]).groups()
    assert last == ("5", "0", "0", "0"), f"the last progress line does not show the end: {lines[-1]}"


def test_fake_launch_runs_ten_thousand_iterations_fast(tmp_path):
    requests = [{"request": "submit", "jobs": [{"name": "f", "iteration": {"stop": 10_000}, "execution": TRUE}]}]
    run = run_service(tmp_path / "wd", requests, nodes="8,8", args=["--fake-launch"], timeout=30)
    entries = run.report_entries()
    assert len(entries) == 10_001
    assert all(e["state"] == "SUCCEED" for e in entries)
    assert len(iterations_of(run.report(), "f")) == 10_000
    assert run.elapsed < 5, f"--fake-launch with 10,000 iterations took {run.elapsed:.2f} s"


# (--net, --resume and the governor's options were on this list until they landed)
@pytest.mark.parametrize("option", [["--enable-proc-stats"], ["--enable-rt-stats"]], ids=lambda o: o[0])
def test_not_yet_supported_options(tmp_path, option):
    (tmp_path / "reqs.json").write_text("[]")
    proc = subprocess.run(service_command() + ["--file-path", str(tmp_path / "reqs.json"), "--wd",
                                               str(tmp_path / "wd"), *option],
                          capture_output=True, text=True, timeout=30, env=service_env())
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "not yet supported" in output and option[0] in output, output
    assert "Traceback" not in output


def test_resume_of_a_directory_without_journal_is_a_clear_error(tmp_path):
    proc = subprocess.run(service_command() + ["--resume", str(tmp_path)], capture_output=True, text=True,
                          timeout=30, env=service_env())
    assert proc.returncode != 0
    assert "no service directory with a journal" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_report_format_text(tmp_path):
    requests = [{"request": "submit", "jobs": [{"name": "t", "iteration": {"stop": 2}, "execution": TRUE},
                                               {"name": "bad", "execution": {"exec": "/bin/false"}}]}]
    run = run_service(tmp_path / "wd", requests, args=["--report-format", "text"])
    text = run.report_path.read_text()
    with pytest.raises(ValueError):
        json.loads(text.splitlines()[0])
    for header in ("t:0 (SUCCEED)", "t:1 (SUCCEED)", "t (SUCCEED)", "bad (FAILED) exit code 1"):
        assert re.search(rf"^{re.escape(header)}", text, re.M), f"no entry {header!r} in:\n{text}"
    assert re.search(r"^\t\d{4}-\d\d-\d\dT[\d:.]+: EXECUTING$", text, re.M)
    assert re.search(r"^\texit_code: 1$", text, re.M)


def test_system_core_reserves_one_core(tmp_path):
    requests = [
        {"request": "resourcesInfo"},
        {"request": "submit", "jobs": [{"name": "all", "execution": TRUE, "resources": {"numCores": 4}}]},
        {"request": "submit", "jobs": [{"name": "three", "execution": TRUE, "resources": {"numCores": 3}}]},
    ]
    run = run_service(tmp_path / "wd", requests, nodes="2,2", args=["--system-core"], timeout=30)
    info = _ok(run.reply(1))["data"]
    assert info["total_cores"] == 3 and info["free_cores"] == 3, info
    _error(run.reply(2), "all")  # can never get 4 cores: rejected, not queued forever
    assert run.report()["three"]["state"] == "SUCCEED"
    assert "available resources: 4 (1 used) cores on 2 nodes" in run.log_messages()


# ================================================================ upstream's report tool
CMDS_VENV = Path("/tmp/qcg-cmds-venv")


def _qcg_pm_report() -> Path:
    """upstream's qcg-pm-report, installed once into a cached venv (fails, never skips, without PyPI)."""
    tool = CMDS_VENV / "bin" / "qcg-pm-report"
    marker = CMDS_VENV / ".installed-qcg-pilotjob-cmds-0.14.2"
    with open("/tmp/qcg-cmds-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and tool.exists():
            return tool
        shutil.rmtree(CMDS_VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(CMDS_VENV)], check=True, timeout=300)
        proc = subprocess.run([str(CMDS_VENV / "bin" / "pip"), "install", "--disable-pip-version-check",
                               "qcg-pilotjob-cmds==0.14.2"], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or not tool.exists():
            pytest.fail(f"cannot install qcg-pilotjob-cmds==0.14.2 ({proc.returncode}):\n"
                        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        marker.write_text("ok\n")
    return tool


@pytest.mark.slow
def test_upstream_report_tool_reads_our_files(tmp_path):
    tool = _qcg_pm_report()
    requests = [{"request": "submit", "jobs": [
        {"name": "ok", "execution": {"exec": "/bin/echo", "args": ["x"]}},
        {"name": "its", "iteration": {"stop": 5}, "execution": {"exec": "sleep", "args": ["0.1"]}},
        {"name": "two", "resources": {"numCores": 2}, "execution": TRUE},
        {"name": "bad", "execution": {"exec": "/bin/false"}},
    ]}]
    run = run_service(tmp_path / "wd", requests, nodes="2,2")
    assert {e["state"] for e in run.report_entries()} == {"SUCCEED", "FAILED"}
    proc = subprocess.run([str(tool), "stats", str(run.wd)], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")})
    assert proc.returncode == 0, f"qcg-pm-report stats failed:\n{proc.stdout}\n{proc.stderr}"
    values = dict(re.findall(r"^\s*([a-z -]+): (.*)$", proc.stdout, re.M))
    iterations = run.final_status()["IterationStats"]
    assert values.get("total jobs") == str(iterations["TotalIterations"]) == "8", proc.stdout
    assert values.get("failed jobs") == str(iterations["FailedIterations"]) == "1", proc.stdout
    assert values.get("total cores") == "4" and values.get("total nodes") == "2", proc.stdout
    assert re.fullmatch(r"\d+\.\d\d secs", values.get("service runtime", "")), proc.stdout
    assert re.fullmatch(r"-?\d+\.\d\d secs", values.get("init overhead", "")), proc.stdout
    proc = subprocess.run([str(tool), "jobs", str(run.wd)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^\s*bad state FAILED", proc.stdout, re.M), proc.stdout


def test_nl_start_method_ssh_is_refused_clearly(tmp_path):
    (tmp_path / "reqs.json").write_text("[]")
    proc = subprocess.run(service_command() + ["--file-path", str(tmp_path / "reqs.json"), "--wd",
                                               str(tmp_path / "wd"), "--nl-start-method", "ssh"],
                          capture_output=True, text=True, timeout=30, env=service_env())
    assert proc.returncode != 0 and "not yet supported" in proc.stdout + proc.stderr


@pytest.mark.parametrize("schema,expected", [("auto", "unset"), ("slurm", "1"), ("common", "unset")])
def test_envschema_decides_the_slurm_variables(tmp_path, schema, expected):
    requests = [{"request": "submit", "jobs": [{"name": "e", "execution": {
        "script": 'echo "${SLURM_NNODES-unset}"', "stdout": "e.out"}}]}]
    run_service(tmp_path / "wd", requests, args=["--envschema", schema])
    assert (tmp_path / "wd" / "e.out").read_text().strip() == expected
