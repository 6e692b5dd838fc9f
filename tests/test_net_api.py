"""Our client API (`qcg_hier.api`: Manager, LocalManager, Jobs, JobInfo) against a live `--net` service.

One LocalManager (CURVE, the default) is shared by the module; tests that stop a service
(finish, SIGKILL) start their own.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path

import pytest

from net_helpers import FINAL, free_port, kill_tree, sigkill, start_net_service, wait_for
from qcg_hier.api import (ConnectionError, InvalidJobDescriptionError, JobInfo, JobNotDefinedError, Jobs,
                          LocalManager, Manager, ServiceError, TimeoutElapsed)

NODES = "16"
ENV_VARS = ("QCG_PM_ZMQ_ADDRESS", "QCG_PM_ZMQ_KEYS_FILE", "QCG_PM_ZMQ_SERVER_KEY", "QCG_PM_ZMQ_CLIENT_PUBLIC",
            "QCG_PM_ZMQ_CLIENT_SECRET")


@pytest.fixture(autouse=True)
def _no_outer_manager(monkeypatch):
    """The tests may run inside a task of another manager: its address and keys must not leak in."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


def _stop_local(manager: LocalManager) -> None:
    manager.cleanup()
    if manager.process.poll() is None:
        manager.kill_manager_process()
        try:
            manager.process.wait(10)
        except Exception:
            kill_tree(manager.process.pid)


@pytest.fixture(scope="module")
def wd(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("api-wd")


@pytest.fixture(scope="module")
def lm(wd):
    saved = {v: os.environ.pop(v) for v in ENV_VARS if v in os.environ}
    manager = LocalManager(["--wd", str(wd), "--nodes", NODES], {"request_timeout": 15})
    try:
        yield manager
    finally:
        _stop_local(manager)
        os.environ.update(saved)


@pytest.fixture(scope="module")
def sdir(lm, wd) -> Path:
    dirs = list(wd.glob(".qcgpjm-service-*"))
    assert len(dirs) == 1, dirs
    return dirs[0]


def _creds(sdir: Path) -> dict:
    return json.loads((sdir / "credentials.json").read_text())


def _env_for(sdir: Path) -> dict:
    c = _creds(sdir)
    return {"QCG_PM_ZMQ_ADDRESS": (sdir / "address").read_text().strip(),
            "QCG_PM_ZMQ_SERVER_KEY": c["server_public"], "QCG_PM_ZMQ_CLIENT_PUBLIC": c["client_public"],
            "QCG_PM_ZMQ_CLIENT_SECRET": c["client_secret"]}


def _wait_state(manager, name, states, timeout=10.0) -> str:
    seen = {}

    def check():
        seen["s"] = manager.status(name)["jobs"][name]["data"]["status"]
        return seen["s"] in states

    assert wait_for(check, timeout, 0.05), f"{name} never reached {states}: last {seen.get('s')}"
    return seen["s"]


def _sync_events(manager, prefix: str) -> None:
    """Make sure `manager`'s subscription is live (a SUB joins late): probe jobs until one's event arrives."""
    for n in range(20):
        manager.submit(Jobs().add(name=f"{prefix}{n}", exec="/bin/true"))
        try:
            manager.wait4_any_job_finish(timeout=0.5)
            break
        except TimeoutElapsed:
            continue
    else:
        pytest.fail("no status event ever reached the client")
    time.sleep(0.2)
    while True:  # drop the probes' other events
        try:
            manager.wait4_any_job_finish(timeout=0.2)
        except TimeoutElapsed:
            break


# ================================================================ basics
def test_local_manager_answers_resources(lm):
    res = lm.resources()
    assert res["total_cores"] == 16 and res["total_nodes"] == 1
    assert set(res) >= {"total_nodes", "total_cores", "used_cores", "free_cores"}
    assert res["used_cores"] + res["free_cores"] == 16


def test_submit_exec_args_stdout(lm, wd):
    names = lm.submit(Jobs().add(name="echo1", exec="/bin/echo", args=["hello", "world"], stdout="echo1.out"))
    assert names == ["echo1"]
    assert lm.wait4("echo1", timeout=20) == {"echo1": "SUCCEED"}
    assert (wd / "echo1.out").read_text() == "hello world\n"


def test_submit_script_with_num_cores(lm, wd):
    lm.submit(Jobs().add(name="sc2", script="echo ${ncores} $QCG_PM_NPROCS > sc2.out", numCores=2))
    assert lm.wait4(["sc2"], timeout=20) == {"sc2": "SUCCEED"}
    assert (wd / "sc2.out").read_text().split() == ["2", "2"]
    info = lm.info_parsed("sc2")["sc2"]
    assert isinstance(info, JobInfo)
    assert info.status == "SUCCEED"
    assert info.total_cores == 2
    assert sum(len(c) for c in info.nodes.values()) == 2
    assert isinstance(info.time, datetime.timedelta)
    assert Path(info.wdir) == wd


def test_submit_iterations_int_and_list(lm, wd):
    jobs = (Jobs().add(name="itn", exec="/bin/echo", args=["n${it}"], stdout="itn_${it}.out", iteration=3)
            .add(name="itl", script="echo ${itval}-${it} > itl_${it}.out", iteration=["a", "b"]))
    assert lm.submit(jobs) == ["itn", "itl"]
    assert lm.wait4(["itn", "itl"], timeout=20) == {"itn": "SUCCEED", "itl": "SUCCEED"}
    assert [(wd / f"itn_{i}.out").read_text() for i in range(3)] == ["n0\n", "n1\n", "n2\n"]
    assert [(wd / f"itl_{i}.out").read_text() for i in range(2)] == ["a-0\n", "b-1\n"]
    assert not (wd / "itn_3.out").exists()


def test_submit_after_dependency(lm, wd):
    jobs = (Jobs().add(name="first", script="sleep 0.3; echo done-first > first.out")
            .add(name="second", script="cat first.out > second.out", after="first"))
    lm.submit(jobs)
    assert lm.wait4(["first", "second"], timeout=20) == {"first": "SUCCEED", "second": "SUCCEED"}
    assert (wd / "second.out").read_text() == "done-first\n"


def test_submit_std_format(lm, wd):
    lm.submit(Jobs().add_std({"name": "std1", "execution": {"exec": "/bin/echo", "args": ["std", "${jname}"],
                                                             "stdout": "std1.out"},
                              "resources": {"numCores": {"exact": 1}}}))
    assert lm.wait4("std1", timeout=20) == {"std1": "SUCCEED"}
    assert (wd / "std1.out").read_text() == "std std1\n"


def test_list_shows_submitted_jobs(lm):
    listed = lm.list()
    for name in ("echo1", "sc2", "itn", "itl", "first", "second", "std1"):
        assert listed[name]["status"] == "SUCCEED", (name, listed.get(name))


def test_status_of_jobs_iterations_and_unknown_names(lm):
    data = lm.status(["itn", "itn:2", "itl:0", "nosuch", "itn:7"])["jobs"]
    assert data["itn"] == {"status": 0, "data": {"jobName": "itn", "status": "SUCCEED"}}
    assert data["itn:2"]["status"] == 0 and data["itn:2"]["data"]["status"] == "SUCCEED"
    assert data["itl:0"]["data"]["jobName"] == "itl:0"
    assert data["nosuch"]["status"] == 1 and "nosuch" in data["nosuch"]["message"]
    assert data["itn:7"]["status"] == 1 and data["itn:7"]["message"]


def test_info_with_childs(lm):
    data = lm.info("itn", withChilds=True)["jobs"]["itn"]
    assert data["status"] == 0
    job = data["data"]
    assert job["jobName"] == "itn" and job["status"] == "SUCCEED"
    assert job["iterations"]["total"] == 3 and job["iterations"]["finished"] == 3
    assert [c["iteration"] for c in job["childs"]] == [0, 1, 2]
    assert all(c["state"] == "SUCCEED" for c in job["childs"])
    plain = lm.info("itn")["jobs"]["itn"]["data"]
    assert "childs" not in plain


def test_info_parsed_with_childs(lm, wd):
    info = lm.info_parsed(["itn", "echo1"], withChilds=True)
    itn = info["itn"]
    assert itn.status == "SUCCEED" and itn.iterations["total"] == 3
    assert [c.name for c in itn.childs] == ["itn:0", "itn:1", "itn:2"]
    assert [c.status for c in itn.childs] == ["SUCCEED"] * 3
    child = itn.childs[1]
    assert child.total_cores == 1 and len(child.nodes) == 1
    assert isinstance(child.time, datetime.timedelta) and Path(child.wdir) == wd
    echo = info["echo1"]
    assert echo.total_cores == 1 and echo.exit_code == 0 and echo.history
    assert any("SUCCEED" in h for h in echo.history)


def test_cancel_running_job(lm):
    lm.submit(Jobs().add(name="long", exec="sleep", args=["30"]))
    _wait_state(lm, "long", ("EXECUTING",))
    t0 = time.monotonic()
    lm.cancel("long")
    assert lm.wait4("long", timeout=5) == {"long": "CANCELED"}
    assert time.monotonic() - t0 < 2.5
    assert lm.list()["long"]["status"] == "CANCELED"


def test_remove(lm):
    lm.submit(Jobs().add(name="gone", exec="/bin/true"))
    lm.wait4("gone", timeout=20)
    lm.remove("gone")
    assert "gone" not in lm.list()
    with pytest.raises(ConnectionError, match="Job 'gone' doesn't exist"):  # as upstream's service and client
        lm.status(["gone"])
    # the name is free again
    lm.submit(Jobs().add(name="gone", exec="/bin/true"))
    assert lm.wait4("gone", timeout=20) == {"gone": "SUCCEED"}


def test_wait4_returns_states_and_wait4all(lm):
    lm.submit(Jobs().add(name="w_ok", exec="/bin/true").add(name="w_bad", exec="/bin/false")
              .add(name="w_it", script="sleep 0.2", iteration=2))
    assert lm.wait4(["w_ok", "w_bad", "w_it:1"], timeout=20) == {"w_ok": "SUCCEED", "w_bad": "FAILED",
                                                               "w_it:1": "SUCCEED"}
    lm.wait4all(timeout=20)
    assert all(e["status"] in FINAL for e in lm.list().values())


def test_is_status_finished():
    for state in ("SUCCEED", "FAILED", "CANCELED", "OMITTED"):
        assert Manager.is_status_finished(state)
    for state in ("QUEUED", "SCHEDULED", "EXECUTING", "nonsense"):
        assert not Manager.is_status_finished(state)


# ================================================================ finding the service
def test_manager_tcp_address_with_credentials_from_env(lm, sdir, monkeypatch):
    env = _env_for(sdir)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    m = Manager(env["QCG_PM_ZMQ_ADDRESS"], {"connect_timeout": 5})
    try:
        assert m.resources()["total_cores"] == 16
    finally:
        m.cleanup()


def test_manager_from_working_directory(lm, wd):
    m = Manager(str(wd))
    try:
        assert m.list()["echo1"]["status"] == "SUCCEED"
    finally:
        m.cleanup()


def test_manager_from_service_directory(lm, sdir):
    m = Manager(str(sdir))
    try:
        assert m.system_status()["System"]["Zmqaddress"] == (sdir / "address").read_text().strip()
    finally:
        m.cleanup()


def test_manager_without_address_uses_environment(lm, sdir, monkeypatch, tmp_path):
    for k, v in _env_for(sdir).items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)  # nothing to find here: the environment must be used
    m = Manager()
    try:
        assert m.resources()["total_cores"] == 16
    finally:
        m.cleanup()


def test_manager_without_address_uses_service_dir_under_cwd(lm, wd, monkeypatch):
    monkeypatch.chdir(wd)
    m = Manager()
    try:
        assert m.resources()["total_cores"] == 16
    finally:
        m.cleanup()


def test_task_as_application_controller(lm, wd):
    code = ("from qcg_hier.api import Manager, Jobs; m = Manager(); "
            "print(m.submit(Jobs().add(name='child', exec='/bin/echo', args=['from-child'], stdout='child.out'))); "
            "m.cleanup()")
    lm.submit(Jobs().add(name="ctl", exec=sys.executable, args=["-c", code], stdout="ctl.out", stderr="ctl.err"))
    assert lm.wait4("ctl", timeout=30) == {"ctl": "SUCCEED"}, (wd / "ctl.err").read_text()
    assert "child" in (wd / "ctl.out").read_text()
    assert lm.wait4("child", timeout=20) == {"child": "SUCCEED"}
    assert (wd / "child.out").read_text() == "from-child\n"


# ================================================================ timeouts
def test_connect_timeout_on_closed_port():
    t0 = time.monotonic()
    with pytest.raises(ConnectionError):
        Manager(f"tcp://127.0.0.1:{free_port()}", {"connect_timeout": 1})
    assert time.monotonic() - t0 < 2.0


def test_request_timeout_after_service_killed(tmp_path_factory):
    svc = start_net_service(tmp_path_factory.mktemp("kill"), auth="curve", nodes="2", instance_id="killed")
    try:
        m = Manager(str(svc.sdir), {"request_timeout": 2})
        assert m.resources()["total_cores"] == 2
        svc.remember_descendants()
        sigkill(svc.proc.pid)
        svc.proc.wait(5)
        t0 = time.monotonic()
        with pytest.raises(ConnectionError):
            m.resources()
        assert time.monotonic() - t0 < 3.0
        t0 = time.monotonic()
        with pytest.raises(ConnectionError):
            m.list()  # the next call also ends, not hangs on the first one's lost reply
        assert time.monotonic() - t0 < 3.0
        m.cleanup()
    finally:
        svc.stop()


# ================================================================ waiting is event driven
def test_wait4_and_wait4all_are_event_driven(lm, sdir):
    m = Manager(str(sdir), {"poll_delay": 30})
    try:
        _sync_events(m, "evprobe")
        m.wait4all(timeout=10)
        m.submit(Jobs().add(name="quick1", script="sleep 0.3"))
        t0 = time.monotonic()
        assert m.wait4("quick1", timeout=10) == {"quick1": "SUCCEED"}
        assert time.monotonic() - t0 < 1.25
        m.submit(Jobs().add(name="quick2", script="sleep 0.3"))
        t0 = time.monotonic()
        m.wait4all(timeout=10)
        assert time.monotonic() - t0 < 1.25
        assert m.status("quick2")["jobs"]["quick2"]["data"]["status"] == "SUCCEED"
    finally:
        m.cleanup()


def test_wait4all_after_wait4_does_not_take_a_stale_no_jobs_event(lm, sdir):
    m = Manager(str(sdir))
    other = Manager(str(sdir))
    try:
        _sync_events(m, "staleprobe")
        m.submit(Jobs().add(name="staleA", script="sleep 0.4"))
        # another client asks "all finished?" while A runs: a NOJ event follows A's end
        assert other.send_request({"request": "status", "options": {"allJobsFinished": True}})["data"] == {
            "AllJobsFinished": False}
        assert m.wait4("staleA", timeout=10) == {"staleA": "SUCCEED"}
        time.sleep(0.2)  # the NOJ is now waiting, unread, on m's subscription
        m.submit(Jobs().add(name="staleB", script="sleep 1.5"))
        t0 = time.monotonic()
        m.wait4all(timeout=20)
        elapsed = time.monotonic() - t0
        state = m.status("staleB")["jobs"]["staleB"]["data"]["status"]
        assert state == "SUCCEED", f"wait4all returned after {elapsed:.2f} s with staleB {state}"
        assert elapsed >= 1.3
    finally:
        m.cleanup()
        other.cleanup()


# ================================================================ finish (own service)
def test_finish_stops_the_service(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("fin")  # short: the service keeps a unix socket inside
    manager = LocalManager(["--wd", str(tmp_path), "--nodes", "2"])
    try:
        manager.submit(Jobs().add(name="last", script="sleep 0.3; echo ok > last.out"))
        t0 = time.monotonic()
        manager.finish()
        assert manager.process.wait(10) == 0
        assert time.monotonic() - t0 < 8
        # finish waits for running jobs
        assert (tmp_path / "last.out").read_text() == "ok\n"
        with pytest.raises(ConnectionError):
            manager.list()
    finally:
        _stop_local(manager)


def test_local_manager_reports_a_service_that_cannot_start(tmp_path_factory):
    t0 = time.monotonic()
    with pytest.raises(ServiceError) as exc:
        LocalManager(["--wd", str(tmp_path_factory.mktemp("bad")), "--nodes", "bogus"])
    assert "bogus" in str(exc.value)
    assert time.monotonic() - t0 < 5


def test_local_manager_in_a_deep_working_directory(tmp_path_factory):
    deep = tmp_path_factory.mktemp("deep") / ("d" * 60) / ("e" * 60)
    manager = LocalManager(["--wd", str(deep), "--nodes", "2"], {"connect_timeout": 2})
    try:
        manager.submit(Jobs().add(name="deep", exec="/bin/true"))
        assert manager.wait4("deep", timeout=10) == {"deep": "SUCCEED"}
    finally:
        _stop_local(manager)


def test_manager_from_directory_after_rerun_without_auth(tmp_path_factory):
    wd = tmp_path_factory.mktemp("rerun")
    first = start_net_service(wd, auth="curve", nodes="1", instance_id="same")
    try:
        first.request({"request": "finish"})
        assert first.proc.wait(10) == 0
    finally:
        first.stop()
    second = start_net_service(wd, auth="none", nodes="1", instance_id="same")
    try:
        # the first run's keys are gone; found in a directory, a service without keys is used only
        # when the client says it expects one (it may be another user's)
        with pytest.raises(ConnectionError, match="has no keys .*cfg=\\{'auth': 'none'\\}"):
            Manager(str(wd), {"connect_timeout": 2})
        m = Manager(str(wd), {"connect_timeout": 2, "auth": "none"})
        try:
            assert m.resources()["total_cores"] == 1
        finally:
            m.cleanup()
    finally:
        second.stop()


# ================================================================ Jobs (no service)
def test_jobs_container_operations(tmp_path):
    jobs = Jobs()
    jobs.add(name="b", exec="/bin/true").add(name="a", script="echo a", numCores=2, iteration=2, after="b")
    jobs.add_std({"name": "c", "execution": {"exec": "/bin/echo"}})
    assert jobs.job_names() == ["b", "a", "c"]
    assert jobs.ordered_job_names() == ["b", "a", "c"]
    assert [j["name"] for j in jobs.jobs()] == ["b", "a", "c"]
    assert [j["name"] for j in jobs.ordered_jobs()] == ["b", "a", "c"]
    a = jobs.jobs()[1]
    assert a["execution"]["script"] == "echo a"
    assert a["resources"]["numCores"] == {"exact": 2}
    assert a["iteration"] == {"start": 0, "stop": 2}
    assert a["dependencies"] == {"after": ["b"]}
    path = tmp_path / "jobs.json"
    jobs.save_to_file(str(path))
    loaded = Jobs().load_from_file(str(path))
    assert loaded.jobs() == jobs.jobs()
    jobs.remove("a")
    assert jobs.job_names() == ["b", "c"]
    with pytest.raises(JobNotDefinedError):
        jobs.remove("a")
    jobs.clear()
    assert jobs.job_names() == [] and len(jobs) == 0
    with pytest.raises(InvalidJobDescriptionError):
        Jobs().add(name="dup", exec="x").add(name="dup", exec="y")


@pytest.mark.parametrize("attrs, field", [
    ({"name": "j"}, "exec"),
    ({"name": "j", "exec": "/bin/true", "numCores": "two"}, "numCores"),
    ({"name": "j", "exec": "/bin/true", "bogus": 1}, "bogus"),
    ({"name": "j", "exec": "/bin/true", "iteration": "many"}, "iteration"),
    ({"name": "bad name", "exec": "/bin/true"}, "name"),
    ({"name": "j", "exec": "/bin/true", "args": "notalist"}, "args"),
])
def test_invalid_simple_description_names_the_field(attrs, field):
    with pytest.raises(InvalidJobDescriptionError) as exc:
        Jobs().add(**attrs)
    assert field in str(exc.value)


@pytest.mark.parametrize("desc, field", [
    ({"name": "j"}, "execution"),
    ({"name": "j", "execution": {"exec": "/bin/true"}, "resources": {"numCores": {"exact": "x"}}}, "numCores"),
    ({"name": "j", "execution": {"exec": "/bin/true", "stdot": "x"}}, "stdot"),
    ({"name": "j", "execution": {"exec": "/bin/true"}, "iteration": {"start": 3, "stop": 1}}, "iteration"),
])
def test_invalid_std_description_names_the_field(desc, field):
    with pytest.raises(InvalidJobDescriptionError) as exc:
        Jobs().add_std(desc)
    assert field in str(exc.value)


# ---------------------------------------------------------------- a client that dies
CLIENT_THAT_DIES = """
import sys, time
import psutil
from qcg_hier.api import Jobs, LocalManager
m = LocalManager(["--wd", sys.argv[1], "--nodes", "2"])
m.submit(Jobs().add(name="long", exec="/bin/sleep", args=[sys.argv[2]]))
deadline = time.monotonic() + 20
task = None
while task is None and time.monotonic() < deadline:
    task = next((p.pid for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["/bin/sleep", sys.argv[2]]),
                None)
    time.sleep(0.02)
print(m.process.pid, task, flush=True)
if sys.argv[3] == "hang":
    time.sleep(600)  # killed here
"""


@pytest.mark.parametrize("how", ["kill-9", "return-without-finish"])
def test_a_local_manager_service_ends_with_its_client(tmp_path, how):
    """A script that dies (or just ends) before finish() leaves no service and no task behind."""
    import psutil
    import subprocess

    marker = f"{os.getpid() % 1000}.{time.monotonic_ns() % 100000}"  # the task's argv: sleep <marker>
    script = tmp_path / "client.py"
    script.write_text(CLIENT_THAT_DIES)
    client = subprocess.Popen([sys.executable, str(script), str(tmp_path / "wd"), marker,
                               "hang" if how == "kill-9" else "return"], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    service_pid, task_pid = client.stdout.readline().split()
    assert task_pid != "None", "the task never ran"
    service, task = psutil.Process(int(service_pid)), int(task_pid)
    if how == "kill-9":
        client.kill()
    assert client.wait(30) in (0, -9)
    t0 = time.monotonic()
    try:
        service.wait(10)
    except psutil.TimeoutExpired:
        kill_tree(service.pid)
        pytest.fail(f"the service outlived its client ({how}) by 10 s")
    def task_gone() -> bool:
        try:
            return psutil.Process(task).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    assert wait_for(task_gone, 10 - (time.monotonic() - t0)), "its task outlived it"
    log = next((tmp_path / "wd").glob(".qcgpjm-service-*/service.log")).read_text()
    assert "standard input closed" in log
