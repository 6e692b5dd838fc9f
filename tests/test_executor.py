"""`qcg_hier.api.Executor`: the `concurrent.futures` face of a local manager (upstream's executor API)."""
from __future__ import annotations

import concurrent.futures
import os
import threading
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


# ---------------------------------------------------------------- upstream executor-api compatibility
def indented_template():
    """The shape of upstream's and EasyVVUQ's templates: an indented triple-quoted string, 'venv' ''."""
    template = """
        {
            'name': '${name}',
            'execution': {
                'exec': '${exec}',
                'args': ${args},
                'stdout': '${stdout}',
                'venv': '${venv}',
                'modules': ${modules},
                'model_opts': ${model_opts}
            }
        }
         """
    return template, {"args": [], "stdout": "stdout", "venv": "", "modules": [], "model_opts": {}}


def test_template_is_dedented_and_none_args_skipped():
    job = Executor._from_template(indented_template, (None, {"name": "t1", "args": ["a"]}, None),
                                  {"exec": "/bin/echo"})
    assert job == {"name": "t1", "execution": {"exec": "/bin/echo", "args": ["a"], "stdout": "stdout", "venv": "",
                                               "modules": [], "model_opts": {},
                                               "env": {"QCG_PM_EXEC_API_JOB_ID": "${jname}"}}}
    # kwargs over dict args (the later over the earlier) over defaults, as upstream
    given = ({"name": "t2", "exec": "x", "stdout": "first"}, None, {"stdout": "second"})
    assert Executor._from_template(indented_template, given, {"stdout": "kw"})["execution"]["stdout"] == "kw"
    assert Executor._from_template(indented_template, given, {})["execution"]["stdout"] == "second"
    assert Executor._from_template(indented_template, given[:1], {})["execution"]["stdout"] == "first"


def test_indented_template_with_none_and_empty_venv_runs(ex, wd):
    # what EasyVVUQ's QCGPJPool sends without template_params: the indented template, None, venv ''
    f1 = ex.submit(indented_template, None, name="indent1", exec="/bin/echo", args=["indented", 1],
                   stdout="indent1.out")
    f2 = ex.submit(indented_template, None, {"venv": "  "}, None, name="indent2", exec="/bin/echo",
                   args=["blank venv"], stdout="indent2.out")
    assert f1.result(timeout=20) == {"indent1": "SUCCEED"}
    assert f2.result(timeout=20) == {"indent2": "SUCCEED"}
    assert (wd / "indent1.out").read_text() == "indented 1\n"
    assert (wd / "indent2.out").read_text() == "blank venv\n"


def test_running_while_executing(ex):
    mgr = ex.qcgpj_manager
    running = ex.submit(["sleep", "30"], name="flag_run", numCores=4)
    queued = None
    try:
        assert not running.done()
        assert wait_for(running.running, 5), running
        assert mgr.list()["flag_run"]["status"] == "EXECUTING"
        queued = ex.submit(["sleep", "30"], name="flag_queued", numCores=4)
        time.sleep(0.3)
        assert mgr.list()["flag_queued"]["status"] == "QUEUED"
        assert not queued.running() and not queued.done()
        assert running.running() and not running.done()
    finally:
        assert running.cancel()
        if queued is not None:
            assert queued.cancel()
    assert not running.running() and running.cancelled() and running.done()
    assert wait_for(lambda: mgr.list()["flag_run"]["status"] == "CANCELED", 5)


def test_cancelled_futures_count_as_done_for_wait_and_as_completed(ex):
    mgr = ex.qcgpj_manager
    for i in range(20):
        future = ex.submit(["sleep", "30"], name=f"cw{i}")
        if i % 2:
            assert wait_for(future.running, 5)  # cancelled while executing, else while queued
        t0 = time.monotonic()
        assert future.cancel() and future.cancelled()
        done, not_done = concurrent.futures.wait([future], timeout=5)
        assert done == {future} and not not_done, f"round {i}: wait() did not see the cancelled future"
        assert list(concurrent.futures.as_completed([future], timeout=5)) == [future]
        assert time.monotonic() - t0 < 2
        with pytest.raises(concurrent.futures.CancelledError):
            future.result(timeout=1)
        assert future.cancel()  # again: still True, nothing changes
    assert wait_for(lambda: all(mgr.list()[f"cw{i}"]["status"] == "CANCELED" for i in range(20)), 10)


@pytest.fixture
def no_outer_service(monkeypatch):
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


def _in_thread(fn, timeout: float) -> bool:
    """Run fn in a daemon thread; whether it returned within `timeout` (a hang must fail, not hang)."""
    errors = []

    def target():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if errors:
        raise errors[0]
    return not thread.is_alive()


@pytest.mark.parametrize("how", ["shutdown", "with", "cancel_futures"])
def test_cancel_then_shutdown_never_hangs(tmp_path_factory, no_outer_service, how):
    wd = tmp_path_factory.mktemp(f"cs-{how}")
    for i in range(7):
        executor = Executor(wd=str(wd), resources="1")
        proc = executor.qcgpj_manager.process
        try:
            if how == "cancel_futures":
                short = executor.submit(["sleep", "0.3"], name=f"short{i}")
                assert wait_for(lambda: short.running() or short.done(), 5)  # seen executing, not pending
                long = executor.submit(["sleep", "30"], name=f"long{i}")  # queued behind it
                assert _in_thread(lambda: executor.shutdown(cancel_futures=True), 15), f"round {i}: hung"
                assert long.cancelled() and short.result(timeout=0) == {f"short{i}": "SUCCEED"}
            else:
                futures = [executor.submit(["sleep", "30"], name=f"j{i}_{k}") for k in range(2)]
                for future in futures:
                    assert future.cancel()

                def leave():
                    if how == "with":
                        with executor:
                            pass
                    else:
                        executor.shutdown()

                assert _in_thread(leave, 15), f"round {i}: {how} hung after cancel()"
                assert all(f.cancelled() for f in futures)
            assert proc.wait(10) == 0
            assert executor.finished
        finally:
            if proc.poll() is None:
                kill_tree(proc.pid)


def test_shutdown_without_wait_cancels_what_is_left(tmp_path_factory, no_outer_service):
    executor = Executor(wd=str(tmp_path_factory.mktemp("nowait")), resources="1")
    proc = executor.qcgpj_manager.process
    try:
        running = executor.submit(["sleep", "30"], name="nw_run")
        queued = executor.submit(["sleep", "30"], name="nw_queued")
        assert wait_for(running.running, 5)
        t0 = time.monotonic()
        assert _in_thread(lambda: executor.shutdown(wait=False), 15)
        assert time.monotonic() - t0 < 5
        assert running.cancelled() and queued.cancelled()
        with pytest.raises(concurrent.futures.CancelledError):
            running.result(timeout=1)
        assert proc.wait(10) == 0
        executor.shutdown()  # a second call does nothing
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)


def test_service_death_fails_the_futures(tmp_path_factory, no_outer_service):
    from qcg_hier.api import ServiceError
    executor = Executor(wd=str(tmp_path_factory.mktemp("death")), resources="1")
    proc = executor.qcgpj_manager.process
    try:
        future = executor.submit(["sleep", "30"], name="orphan")
        assert wait_for(future.running, 5)
        kill_tree(proc.pid)
        with pytest.raises(ServiceError):
            future.result(timeout=10)
        assert _in_thread(executor.shutdown, 10)
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)


def test_upstream_positional_signature_and_attributes(tmp_path_factory, no_outer_service):
    # upstream: QCGPJExecutor(wd=".", resources=None, reserve_core=False, enable_rt_stats=False,
    #                         wrapper_rt_stats=None, log_level='info', *other_args)
    wd = tmp_path_factory.mktemp("positional")
    executor = Executor(str(wd), "3", False, False, None, "WARNING")  # upstream takes the level in any case
    proc = executor.qcgpj_manager.process
    try:
        assert executor.qcgpj_manager.resources()["total_cores"] == 3
        future = executor.submit(BasicTemplate.template, name="pos", exec="/bin/true")
        assert future.ids == ["pos"] and future.qcgpjm is executor.qcgpj_manager
        assert future.result(timeout=20) == {"pos": "SUCCEED"}
        assert not executor.finished
        executor.shutdown()
        assert executor.finished and proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
