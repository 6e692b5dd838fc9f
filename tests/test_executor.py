"""`qcg_hier.api.Executor`: the `concurrent.futures` face of a local manager (upstream's executor API)."""
from __future__ import annotations

import concurrent.futures
import os
import time

import pytest

from net_helpers import kill_tree, wait_for
from qcg_hier.api import BasicTemplate, Executor

ENV_VARS = ("QCG_PM_ZMQ_ADDRESS", "QCG_PM_ZMQ_SERVER_KEY", "QCG_PM_ZMQ_CLIENT_PUBLIC", "QCG_PM_ZMQ_CLIENT_SECRET")


def _stop(ex: Executor) -> None:
    proc = ex.qcgpj_manager.process
    if proc.poll() is None:
        try:
            ex.qcgpj_manager.cancel([n for n, e in ex.qcgpj_manager.list().items()
                                     if e["status"] not in ("SUCCEED", "FAILED", "CANCELED", "OMITTED")])
        except Exception:
            pass
        try:
            ex.shutdown(wait=False)
        except Exception:
            pass
    if proc.poll() is None:
        kill_tree(proc.pid)


@pytest.fixture(scope="module")
def wd(tmp_path_factory):
    return tmp_path_factory.mktemp("executor-wd")


@pytest.fixture(scope="module")
def ex(wd):
    saved = {v: os.environ.pop(v) for v in ENV_VARS if v in os.environ}
    executor = Executor(wd=str(wd), resources="4")
    try:
        yield executor
    finally:
        _stop(executor)
        os.environ.update(saved)


def test_basic_template(ex, wd):
    future = ex.submit(BasicTemplate.template, name="tmpl1", exec="/bin/echo", args=["from", "template"],
                       stdout="tmpl1.out")
    assert future.result(timeout=20) == {"tmpl1": "SUCCEED"}
    assert future.done() and not future.running() and not future.cancelled()
    assert (wd / "tmpl1.out").read_text() == "from template\n"
    assert (wd / "stderr").exists()  # the template's default


def test_custom_template_with_defaults_and_dict_args(ex, wd):
    def template():
        return ("{'name': '${name}', 'execution': {'script': 'echo ${word} $$QCG_PM_EXEC_API_JOB_ID > ${out}'}, "
                "'resources': {'numCores': {'exact': ${cores}}}}"), {"word": "default-word", "cores": 1}

    f1 = ex.submit(template, {"name": "custom1", "out": "custom1.out"})
    f2 = ex.submit(template, {"name": "custom2"}, out="custom2.out", word="given", cores=2)
    assert f1.result(timeout=20) == {"custom1": "SUCCEED"}
    assert f2.result(timeout=20) == {"custom2": "SUCCEED"}
    assert (wd / "custom1.out").read_text() == "default-word custom1\n"
    assert (wd / "custom2.out").read_text() == "given custom2\n"
    info = ex.qcgpj_manager.info_parsed("custom2")["custom2"]
    assert info.total_cores == 2


def test_submit_argv_list(ex, wd):
    future = ex.submit(["/bin/echo", "x", 42], stdout="o.txt")
    result = future.result(timeout=20)
    assert list(result.values()) == ["SUCCEED"] and len(result) == 1
    assert (wd / "o.txt").read_text() == "x 42\n"


def test_submit_script_string_with_cores(ex, wd):
    future = ex.submit("echo ${ncores} > script2.out; exit 0", numCores=2, name="script2")
    assert future.result(timeout=20) == {"script2": "SUCCEED"}
    assert (wd / "script2.out").read_text() == "2\n"


def test_failed_job_result(ex):
    assert ex.submit(["/bin/false"], name="falsejob").result(timeout=20) == {"falsejob": "FAILED"}


def test_iterative_job_future(ex, wd):
    future = ex.submit("echo ${it} > itx_${it}.out", name="itx", iteration=3)
    assert future.result(timeout=20) == {"itx": "SUCCEED"}
    assert sorted(p.read_text() for p in wd.glob("itx_*.out")) == ["0\n", "1\n", "2\n"]


def test_result_timeout_raises_quickly(ex):
    future = ex.submit(["sleep", "30"], name="slow_result")
    try:
        t0 = time.monotonic()
        with pytest.raises(concurrent.futures.TimeoutError):
            future.result(timeout=0.5)
        assert time.monotonic() - t0 < 1.5
        assert not future.done()
    finally:
        assert future.cancel()
    assert wait_for(lambda: ex.qcgpj_manager.list()["slow_result"]["status"] == "CANCELED", 5)


def test_cancel_running_and_queued(ex):
    # the executor has 4 cores: 'run_big' takes all of them, 'queued_big' has to wait
    mgr = ex.qcgpj_manager
    running = ex.submit(["sleep", "30"], name="run_big", numCores=4)
    try:
        assert wait_for(lambda: mgr.list()["run_big"]["status"] == "EXECUTING", 10)
        queued = ex.submit(["sleep", "30"], name="queued_big", numCores=4)
        time.sleep(0.2)
        assert mgr.list()["queued_big"]["status"] == "QUEUED"
        assert queued.cancel() is True
        assert queued.cancelled()
        assert wait_for(lambda: mgr.list()["queued_big"]["status"] == "CANCELED", 3)
        assert mgr.list()["run_big"]["status"] == "EXECUTING"
        t0 = time.monotonic()
        assert running.cancel() is True
        assert running.cancelled() and running.done()
        with pytest.raises(concurrent.futures.CancelledError):
            running.result(timeout=1)
        assert wait_for(lambda: mgr.list()["run_big"]["status"] == "CANCELED", 3)
        assert time.monotonic() - t0 < 3
    finally:
        live = [n for n in ("run_big", "queued_big")
                if n in mgr.list() and mgr.list()[n]["status"] not in ("SUCCEED", "FAILED", "CANCELED", "OMITTED")]
        if live:
            mgr.cancel(live)
    # a finished future cannot be cancelled
    done = ex.submit(["/bin/true"], name="done_already")
    assert done.result(timeout=20) == {"done_already": "SUCCEED"}
    assert done.cancel() is False and not done.cancelled()


def test_many_futures_with_as_completed(ex):
    futures = [ex.submit(["/bin/sh", "-c", f"sleep 0.{i}"], name=f"many{i}") for i in range(6)]
    results = {}
    for f in concurrent.futures.as_completed(futures, timeout=30):
        results.update(f.result())
    assert results == {f"many{i}": "SUCCEED" for i in range(6)}


def test_context_manager_shuts_down_the_service(tmp_path_factory, monkeypatch):
    tmp_path = tmp_path_factory.mktemp("ctx")  # short: the service keeps a unix socket inside
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    with Executor(wd=str(tmp_path), resources="2") as executor:
        future = executor.submit(["/bin/sh", "-c", "sleep 0.3; echo ctx > ctx.out"], name="ctx")
        proc = executor.qcgpj_manager.process
        assert proc.poll() is None
    try:
        # leaving the block waited for the job and stopped the service
        assert future.done() and future.result(timeout=0) == {"ctx": "SUCCEED"}
        assert proc.wait(10) == 0
        assert (tmp_path / "ctx.out").read_text() == "ctx\n"
        with pytest.raises(RuntimeError):
            executor.submit(["/bin/true"])
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
