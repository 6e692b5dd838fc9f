"""Upstream's own, unmodified client (`qcg-pilotjob==0.14.2`: `qcg.pilotjob.api.manager.Manager`,
`qcg.pilotjob.api.job.Jobs`) against our service started with `--auth none --net`.

Upstream is a TEST dependency only: it lives in its own venv (/tmp/qcg-hier-upstream-venv, made once
and reused), never in the main environment, where it would replace our `qcg-pm-service` command.
Each test runs a small script with that venv's python; the script prints one JSON line of results.
"""
from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from net_helpers import clean_env, service_command, start_net_service

VENV = Path("/tmp/qcg-hier-upstream-venv")
UPSTREAM = "qcg-pilotjob==0.14.2"
PY = VENV / "bin" / "python"
CHECK = "import importlib.metadata as m, qcg.pilotjob.api.manager, qcg.pilotjob.api.job; print(m.version('qcg-pilotjob'))"


def _venv_ok() -> bool:
    if not PY.exists():
        return False
    r = subprocess.run([str(PY), "-c", CHECK], capture_output=True, text=True, env=_upstream_env(), timeout=60,
                       cwd="/")
    return r.returncode == 0 and r.stdout.strip() == "0.14.2"


def _upstream_env(extra: dict | None = None) -> dict:
    env = clean_env(extra)
    for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        env.pop(var, None)
    return env


@pytest.fixture(scope="session")
def upstream_python() -> Path:
    lock_path = Path(str(VENV) + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be building it right now
        if not _venv_ok():
            shutil.rmtree(VENV, ignore_errors=True)
            steps = [[sys.executable, "-m", "venv", str(VENV)],
                     [str(PY), "-m", "pip", "install", "-q", "--disable-pip-version-check", UPSTREAM]]
            for step in steps:
                r = subprocess.run(step, capture_output=True, text=True, env=_upstream_env(), timeout=600)
                if r.returncode != 0:
                    shutil.rmtree(VENV, ignore_errors=True)
                    pytest.fail(f"cannot build the upstream venv: {' '.join(step)} exited {r.returncode}\n"
                                f"{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
            assert _venv_ok(), "the upstream venv was built but does not import qcg.pilotjob 0.14.2"
    # our own package must not have leaked into it (nor upstream into ours)
    r = subprocess.run([str(PY), "-c", "import importlib.util as u; print(u.find_spec('qcg_hier'))"],
                       capture_output=True, text=True, env=_upstream_env(), timeout=60, cwd="/")
    assert r.stdout.strip() == "None", r.stdout
    return PY


@pytest.fixture(scope="module")
def svc(tmp_path_factory, upstream_python):
    service = start_net_service(tmp_path_factory.mktemp("upstream-wd"), auth="none", nodes="8",
                                instance_id="upstream")
    yield service
    service.stop()


PREAMBLE = """
import json, sys, time
from qcg.pilotjob.api.manager import Manager
from qcg.pilotjob.api.job import Jobs
from qcg.pilotjob.api import errors
out = {}
def done():
    print("RESULT " + json.dumps(out, default=str))
"""


def run_upstream(python: Path, svc, body: str, tmp_path: Path, timeout: float = 40, env: dict | None = None) -> dict:
    """Run PREAMBLE + body with upstream's python (argv[1] = the service address); its `out` dict."""
    script = tmp_path / "script.py"
    script.write_text(PREAMBLE + textwrap.dedent(body) + "\ndone()\n")
    cwd = tmp_path / "client"
    cwd.mkdir(exist_ok=True)
    try:
        r = subprocess.run([str(python), str(script), svc.address], cwd=cwd, capture_output=True, text=True,
                           timeout=timeout, env=_upstream_env(env))
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"upstream client script did not finish in {timeout} s\n{exc.stdout}\n{exc.stderr}\n"
                    f"{svc.describe()}")
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert r.returncode == 0 and lines, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}\n{svc.describe()}"
    return json.loads(lines[-1][len("RESULT "):])


def test_upstream_venv_is_separate(upstream_python):
    """Upstream's package is in the venv only: our environment still runs our service."""
    import importlib.metadata
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.version("qcg-pilotjob")
    command = Path(service_command()[0])
    if command.name == "qcg-pm-service":  # our console script, next to the interpreter running the tests
        head = command.read_text(errors="replace")[:2000]
        assert "qcg_hier" in head, head


def test_resources_submit_status_info_list(upstream_python, svc, tmp_path):
    wd = svc.wd
    out = run_upstream(upstream_python, svc, """
        m = Manager(sys.argv[1], {'wdir': '.', 'poll_delay': 1})
        out['resources'] = m.resources()
        jobs = Jobs()
        jobs.add(name='up_echo', exec='/bin/echo', args=['hello', 'up'], stdout='up_echo.out')
        jobs.add(name='up_two', script='echo ${ncores} > up_two.out', numCores=2)
        jobs.add(name='up_it', exec='/bin/echo', args=['${it}'], stdout='up_it_${it}.out', iteration=3)
        jobs.add(name='up_vals', script='echo ${itval} > up_vals_${it}.out', iteration=['x', 'y'])
        jobs.add(name='up_after', script='cat up_echo.out > up_after.out', after='up_echo')
        out['submitted'] = m.submit(jobs)
        out['wait4'] = m.wait4(['up_echo', 'up_two', 'up_it', 'up_vals', 'up_after'])
        out['status'] = m.status(['up_echo', 'up_it', 'up_it:2'])
        out['info'] = m.info(['up_it'], withChilds=True)
        out['info_plain'] = m.info('up_echo')
        parsed = m.info_parsed(['up_it', 'up_two'], withChilds=True)
        out['parsed'] = {name: {'name': ji.name, 'status': ji.status, 'total_cores': ji.total_cores,
                                'nodes': ji.nodes, 'wdir': ji.wdir, 'time': ji.time,
                                'iterations': ji.iterations,
                                'childs': [(c.name, c.status, c.iteration, c.total_cores) for c in ji.childs or []]}
                         for name, ji in parsed.items()}
        out['list'] = m.list()
        out['system'] = m.system_status()
        try:
            out['unknown'] = m.status(['no_such_job'])
        except errors.QCGPJMAError as exc:
            out['unknown'] = type(exc).__name__ + ': ' + str(exc)
        m.cleanup()
    """, tmp_path)
    assert out["resources"]["total_cores"] == 8 and out["resources"]["total_nodes"] == 1
    assert out["submitted"] == ["up_echo", "up_two", "up_it", "up_vals", "up_after"]
    assert out["wait4"] == {n: "SUCCEED" for n in out["submitted"]}
    assert (wd / "up_echo.out").read_text() == "hello up\n"
    assert (wd / "up_two.out").read_text() == "2\n"
    assert [(wd / f"up_it_{i}.out").read_text() for i in range(3)] == ["0\n", "1\n", "2\n"]
    assert [(wd / f"up_vals_{i}.out").read_text() for i in range(2)] == ["x\n", "y\n"]
    assert (wd / "up_after.out").read_text() == "hello up\n"
    st = out["status"]["jobs"]
    assert st["up_echo"]["data"]["status"] == "SUCCEED" and st["up_it:2"]["data"]["jobName"] == "up_it:2"
    info = out["info"]["jobs"]["up_it"]["data"]
    assert info["iterations"]["total"] == 3
    assert [(c["iteration"], c["state"]) for c in info["childs"]] == [(0, "SUCCEED"), (1, "SUCCEED"), (2, "SUCCEED")]
    assert out["info_plain"]["jobs"]["up_echo"]["data"]["status"] == "SUCCEED"
    it = out["parsed"]["up_it"]
    assert it["status"] == "SUCCEED" and it["iterations"]["total"] == 3
    assert it["childs"] == [["up_it:0", "SUCCEED", 0, 1], ["up_it:1", "SUCCEED", 1, 1], ["up_it:2", "SUCCEED", 2, 1]]
    two = out["parsed"]["up_two"]
    assert two["total_cores"] == 2 and sum(len(c) for c in two["nodes"].values()) == 2
    assert Path(two["wdir"]) == wd and two["time"].startswith("0:00:")
    assert {n: e["status"] for n, e in out["list"].items() if n.startswith("up_")} == out["wait4"]
    assert out["system"]["System"]["StatusPublisher"]
    # no name known: the request fails as upstream's does, and upstream's client raises on it
    assert out["unknown"] == "ConnectionError: Request failed - Job 'no_such_job' doesn't exist"


def test_cancel_and_remove(upstream_python, svc, tmp_path):
    out = run_upstream(upstream_python, svc, """
        m = Manager(sys.argv[1], {'wdir': '.', 'poll_delay': 1})
        m.submit(Jobs().add(name='up_long', exec='sleep', args=['30']))
        deadline = time.time() + 10
        while m.status('up_long')['jobs']['up_long']['data']['status'] != 'EXECUTING' and time.time() < deadline:
            time.sleep(0.05)
        t0 = time.time()
        m.cancel('up_long')
        out['wait4'] = m.wait4('up_long', timeout=10)
        out['cancel_secs'] = time.time() - t0
        m.remove('up_long')
        out['listed_after_remove'] = 'up_long' in m.list()
        try:
            m.remove('up_long')
            out['second_remove'] = 'no error'
        except Exception as exc:
            out['second_remove'] = type(exc).__name__
        m.cleanup()
    """, tmp_path)
    assert out["wait4"] == {"up_long": "CANCELED"}
    assert out["cancel_secs"] < 2.5
    assert out["listed_after_remove"] is False


def test_wait4all_after_wait4_waits_for_the_real_end(upstream_python, svc, tmp_path):
    out = run_upstream(upstream_python, svc, """
        m = Manager(sys.argv[1], {'wdir': '.', 'poll_delay': 1})
        m.submit(Jobs().add(name='up_A', script='sleep 0.3'))
        out['wait4'] = m.wait4('up_A', timeout=10)
        m.submit(Jobs().add(name='up_B', script='sleep 1.5'))
        t0 = time.time()
        m.wait4all(timeout_secs=20)
        out['elapsed'] = time.time() - t0
        out['B'] = m.status('up_B')['jobs']['up_B']['data']['status']
        m.cleanup()
    """, tmp_path)
    assert out["wait4"] == {"up_A": "SUCCEED"}
    assert out["B"] == "SUCCEED", out
    assert out["elapsed"] >= 1.3


def test_wait4all_waits_for_running_jobs(upstream_python, svc, tmp_path):
    out = run_upstream(upstream_python, svc, """
        m = Manager(sys.argv[1], {'wdir': '.', 'poll_delay': 1})
        m.submit(Jobs().add(name='up_all', script='sleep 0.4', iteration=3))
        t0 = time.time()
        m.wait4all(timeout_secs=20)
        out['elapsed'] = time.time() - t0
        out['state'] = m.status('up_all')['jobs']['up_all']['data']['status']
        m.cleanup()
    """, tmp_path)
    assert out["state"] == "SUCCEED" and 0.3 <= out["elapsed"] < 5, out


def test_wait4all_when_everything_already_finished(upstream_python, svc, tmp_path):
    out = run_upstream(upstream_python, svc, """
        m = Manager(sys.argv[1], {'wdir': '.', 'poll_delay': 1})
        # a quick job whose JFI reaches upstream's own subscription (retried: the SUB joins late)
        for i in range(50):
            m.submit(Jobs().add(name=f'up_fast{i}', exec='/bin/true'))
            if m._zmq_status_poller.poll(300):
                break
        out['probes'] = i + 1
        names = [f'up_fast{k}' for k in range(i + 1)]
        deadline = time.time() + 10
        while any(e['data']['status'] != 'SUCCEED' for e in m.status(names)['jobs'].values()):
            assert time.time() < deadline
            time.sleep(0.05)
        time.sleep(0.2)
        # everything has ended; an event is unread on the subscription, as after any wait4 by status
        t0 = time.time()
        try:
            m.wait4all(timeout_secs=2.5)
            out['result'] = 'returned'
        except errors.TimeoutElapsed:
            out['result'] = 'timeout'
        out['elapsed'] = time.time() - t0
        m.cleanup()
    """, tmp_path)
    assert out["result"] == "returned" and out["elapsed"] < 2, out


def test_manager_address_from_environment(upstream_python, svc, tmp_path):
    out = run_upstream(upstream_python, svc, """
        m = Manager(cfg={'wdir': '.'})
        out['resources'] = m.resources()
        m.cleanup()
    """, tmp_path, env={"QCG_PM_ZMQ_ADDRESS": svc.address})
    assert out["resources"]["total_cores"] == 8


def test_finish(upstream_python, tmp_path, tmp_path_factory):
    service = start_net_service(tmp_path_factory.mktemp("upfin"), auth="none", nodes="2", instance_id="upfinish")
    try:
        out = run_upstream(upstream_python, service, """
            m = Manager(sys.argv[1], {'wdir': '.'})
            m.submit(Jobs().add(name='up_last', script='sleep 0.3; echo fin > up_last.out'))
            m.finish()
            out['finished'] = True
        """, tmp_path)
        assert out["finished"]
        t0 = time.monotonic()
        assert service.proc.wait(10) == 0
        assert time.monotonic() - t0 < 8
        assert (service.wd / "up_last.out").read_text() == "fin\n"
        assert (service.sdir / "final_status.json").exists()
    finally:
        service.stop()


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "after-jobs"])
def test_finish_after_the_finish_control_is_answered_as_upstream(upstream_python, tmp_path, tmp_path_factory, busy):
    """`finishAfterAllTasksDone`, then at once the client's finish(): upstream's service is still there
    and answers "Finish request already requested" (its client raises on it); ours must not have
    gone, or the client waits for ever."""
    service = start_net_service(tmp_path_factory.mktemp("upctl"), auth="none", nodes="2", instance_id="upctl")
    try:
        out = run_upstream(upstream_python, service, f"""
            m = Manager(sys.argv[1], {{'wdir': '.', 'poll_delay': 1}})
            if {busy}:
                m.submit(Jobs().add(name='ctl_job', script='sleep 0.5'))
            out['control'] = m.send_request({{'request': 'control', 'command': 'finishAfterAllTasksDone'}})
            if {busy}:
                m.wait4all()
            try:
                m.finish()
                out['finish'] = 'returned'
            except errors.QCGPJMAError as exc:
                out['finish'] = type(exc).__name__ + ': ' + str(exc)
        """, tmp_path, timeout=30)
        assert out["control"] == {"code": 0, "message": "finishAfterAllTasksDone command accepted"}
        assert out["finish"] == "ConnectionError: Request failed - Finish request already requested"
        assert service.proc.wait(10) == 0  # and then it goes
    finally:
        service.stop()


# ---------------------------------------------------------------- against a governor
@pytest.fixture(scope="module")
def governor(tmp_path_factory, upstream_python):
    service = start_net_service(tmp_path_factory.mktemp("upstream-gov"), auth="none", nodes="2,2",
                                args=["--governor", "--partition-nodes", "1"], instance_id="upgov")
    yield service
    service.stop()


def test_upstream_client_against_a_governor(upstream_python, governor, tmp_path):
    """Everything upstream's governor could not do: jobInfo, listJobs, cancel, a dependency across
    partitions, wait4all (it never returned there)."""
    wd = governor.wd
    out = run_upstream(upstream_python, governor, """
        m = Manager(sys.argv[1], {'wdir': '.', 'poll_delay': 1})
        out['resources'] = m.resources()
        jobs = Jobs()
        jobs.add(name='g_it', script='sleep 0.2; echo ${it} > g_it_${it}.out', iteration=8)
        jobs.add_std({'name': 'g_a', 'execution': {'script': 'echo a > g_a.out'},
                      'resources': {'tags': ['partition-0']}})
        jobs.add_std({'name': 'g_b', 'execution': {'script': 'cat g_a.out > g_b.out'},
                      'dependencies': {'after': ['g_a']}, 'resources': {'tags': ['partition-1']}})
        jobs.add(name='g_long', exec='/bin/sleep', args=['30'])
        out['submitted'] = m.submit(jobs)
        out['wait4'] = m.wait4(['g_it', 'g_b'])
        out['info'] = m.info(['g_it'], withChilds=True)
        parsed = m.info_parsed(['g_it'], withChilds=True)['g_it']
        out['parsed'] = [(c.name, c.status, c.total_cores, sorted(c.nodes or {})) for c in parsed.childs]
        out['list'] = m.list()
        out['cancel'] = m.cancel(['g_long'])
        m.wait4all(timeout_secs=30)
        out['final'] = m.status(['g_it', 'g_a', 'g_b', 'g_long'])
        out['system'] = m.system_status()
        m.cleanup()
    """, tmp_path, timeout=60)
    assert out["resources"]["total_cores"] == 4
    assert out["submitted"] == ["g_it", "g_a", "g_b", "g_long"]
    assert out["wait4"] == {"g_it": "SUCCEED", "g_b": "SUCCEED"}
    assert (wd / "g_b.out").read_text() == "a\n"
    assert sorted((wd / f"g_it_{i}.out").read_text() for i in range(8)) == sorted(f"{i}\n" for i in range(8))
    childs = out["info"]["jobs"]["g_it"]["data"]["childs"]
    assert {c["runtime"]["manager"] for c in childs} == {"partition-0", "partition-1"}
    assert all(total == 1 and nodes in (["n0"], ["n1"]) for _, _, total, nodes in out["parsed"]), out["parsed"]
    assert out["list"]["g_long"]["status"] in ("QUEUED", "EXECUTING")
    final = {n: e["data"]["status"] for n, e in out["final"]["jobs"].items()}
    assert final == {"g_it": "SUCCEED", "g_a": "SUCCEED", "g_b": "SUCCEED", "g_long": "CANCELED"}
    assert out["system"]["System"]["StatusPublisher"]
