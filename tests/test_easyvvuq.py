"""EasyVVUQ 1.3 campaigns on our `Executor`: `QCGPJPool(qcgpj_executor=qcg_hier.api.Executor(...))`.

EasyVVUQ (and with it upstream's qcg-pilotjob 0.13.1 and qcg-pilotjob-executor-api) is a TEST
dependency only: it lives in its own venv (/tmp/qcg-hier-easyvvuq-venv, built once and reused),
never in the main environment. Our package is installed into that venv from a snapshot of the
checkout, not editable, as `pip install` gives it to a user (so the packaging is tested too); the
snapshot's digest is kept in the venv, and any change of the checkout's sources reinstalls it, so
the tests always run the checkout's current code. Both packages install a `qcg-pm-service`
command (whichever came last wins); ours is also `qcg-hier-service`.

The campaign: the cooling coffee cup (a model script written here), two uncertain parameters and
a first-order PCE sampler (4 runs), run once with upstream's QCGPJExecutor (upstream's service)
and once with ours, through EasyVVUQ's stock templates (basic and parallel, with and without
template_params); the statistics must agree.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from net_helpers import clean_env

REPO = Path(__file__).resolve().parent.parent
VENV = Path("/tmp/qcg-hier-easyvvuq-venv")
PY = VENV / "bin" / "python"
# numpoly (chaospy's, EasyVVUQ's) imports six without declaring it
REQUIREMENTS = ["easyvvuq==1.3", "six"]
CHECK = ("import importlib.metadata as m, importlib.util as u; "
         "print(m.version('easyvvuq'), m.version('qcg-pilotjob'), m.version('six') and 'six', "
         "all(u.find_spec(n) for n in ('easyvvuq', 'qcg.pilotjob.executor_api', 'chaospy')))")
STAMP = VENV / "qcg-hier-source.sha256"  # digest of the snapshot of our sources installed there
SOURCES = ("pyproject.toml", "README.md", "qcg_hier", "agents")  # what building our package reads
INSTALLED_CHECK = "import qcg_hier.api.executor as e; print(e.__file__)"


def _env(extra: dict | None = None) -> dict:
    env = clean_env(extra)
    for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        env.pop(var, None)
    return env


def _run(argv, timeout=600, **kw) -> subprocess.CompletedProcess:
    options = {"env": _env(), "cwd": "/", **kw}  # cwd: no checkout on the path of `python -m`
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **options)


def _easyvvuq_ok() -> bool:
    if not PY.exists():
        return False
    r = _run([PY, "-c", CHECK], timeout=120)
    return r.returncode == 0 and r.stdout.split() == ["1.3", "0.13.1", "six", "True"]


def _snapshot(dest: Path) -> str:
    """Copy what building our package needs into `dest`; the copy's digest."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    digest = hashlib.sha256()
    for path in sorted(p for p in dest.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(dest)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _step(argv, what: str) -> None:
    r = _run(argv)
    if r.returncode != 0:
        pytest.fail(f"cannot {what}: {' '.join(map(str, argv))} exited {r.returncode}\n"
                    f"{r.stdout[-2000:]}\n{r.stderr[-3000:]}")


@pytest.fixture(scope="session")
def evvuq_python():
    with open(str(VENV) + ".lock", "w") as lock:
        # exclusive to build or reinstall (another test run may be doing it right now), then shared
        # while the tests use the venv: no other run reinstalls it under them
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _easyvvuq_ok():
            shutil.rmtree(VENV, ignore_errors=True)
            try:
                _step([sys.executable, "-m", "venv", VENV], "build the EasyVVUQ venv")
                _step([PY, "-m", "pip", "install", "-q", "--disable-pip-version-check", *REQUIREMENTS],
                      "install EasyVVUQ into its venv")
            except BaseException:
                shutil.rmtree(VENV, ignore_errors=True)
                raise
            assert _easyvvuq_ok(), "the EasyVVUQ venv was built but does not import easyvvuq 1.3 / qcg-pilotjob 0.13.1"
        with tempfile.TemporaryDirectory(prefix="qcg-hier-src-") as tmp:
            digest = _snapshot(Path(tmp))
            installed = STAMP.read_text().strip() if STAMP.exists() else None
            if installed != digest or _run([PY, "-c", INSTALLED_CHECK], timeout=120).returncode != 0:
                STAMP.unlink(missing_ok=True)
                _run([PY, "-m", "pip", "uninstall", "-y", "-q", "qcg-hier"])
                _step([PY, "-m", "pip", "install", "-q", "--disable-pip-version-check", tmp],
                      "install qcg-hier (a snapshot of the checkout) into the EasyVVUQ venv")
                STAMP.write_text(digest + "\n")
            installed_executor = Path(_run([PY, "-c", INSTALLED_CHECK], timeout=120).stdout.strip())
            # the venv runs an installed copy, and it is the checkout's current code
            assert VENV in installed_executor.parents, installed_executor
            assert installed_executor.read_bytes() == (Path(tmp) / "qcg_hier" / "api" / "executor.py").read_bytes()
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield PY


# ---------------------------------------------------------------- the command collision
def test_our_service_command_next_to_upstreams(evvuq_python, tmp_path):
    """With upstream's package in the same venv, `qcg-hier-service` and `python -m qcg_hier` are ours,
    and our LocalManager starts our service."""
    for argv in ([VENV / "bin" / "qcg-hier-service", "--help"], [evvuq_python, "-m", "qcg_hier", "--help"]):
        r = _run(argv, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "--net-bind" in r.stdout and "--auth" in r.stdout, r.stdout  # options upstream does not have
    script = tmp_path / "start.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        import psutil
        import qcg_hier
        from qcg_hier.api import LocalManager
        m = LocalManager(["--nodes", "2", "--wd", sys.argv[1]])
        try:
            out = {"cmdline": psutil.Process(m.process.pid).cmdline(), "package": qcg_hier.__file__,
                   "cores": m.resources()["total_cores"],
                   "keys": any(p.name == "credentials.json" for p in __import__("pathlib").Path(sys.argv[1]).rglob("*"))}
        finally:
            m.finish()
        print("RESULT " + json.dumps(out))
    """))
    wd = tmp_path / "wd"
    wd.mkdir()
    r = _run([evvuq_python, script, wd], timeout=60, cwd=str(tmp_path))
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert r.returncode == 0 and lines, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["cmdline"][0] == str(evvuq_python)
    assert out["cmdline"][1:3] == ["-m", "qcg_hier"], out["cmdline"]
    assert VENV in Path(out["package"]).parents
    assert out["cores"] == 2
    assert out["keys"]  # our service's CURVE keys: upstream's service has none


# ---------------------------------------------------------------- the campaign
MODEL = """
import csv, json, math, sys
with open(sys.argv[1]) as f:
    p = json.load(f)
with open(p["out_file"], "w", newline="") as f:
    out = csv.writer(f)
    out.writerow(["time", "te"])
    for step in range(11):
        t = 10.0 * step
        out.writerow([t, p["t_env"] + (p["temp_init"] - p["t_env"]) * math.exp(-p["kappa"] * t)])
"""

TEMPLATE = '{"temp_init": $temp_init, "kappa": $kappa, "t_env": $t_env, "out_file": "$out_file"}\n'

DRIVER = r"""
import json, os, sys, time
import chaospy as cp
import easyvvuq as uq
from easyvvuq.actions import Actions, CreateRunDirectory, Decode, Encode, ExecuteLocal, QCGPJPool
from easyvvuq.actions.execute_qcgpj import EasyVVUQBasicTemplate, EasyVVUQParallelTemplate

kind, work, venv = sys.argv[1:4]
here = os.path.dirname(os.path.abspath(__file__))
params = {"temp_init": {"type": "float", "default": 95.0}, "kappa": {"type": "float", "default": 0.025},
          "t_env": {"type": "float", "default": 15.0}, "out_file": {"type": "string", "default": "output.csv"}}
actions = Actions(
    CreateRunDirectory(root=work, flatten=True),
    Encode(uq.encoders.GenericEncoder(template_fname=os.path.join(here, "cooling.template"), delimiter="$",
                                      target_filename="cooling_in.json")),
    ExecuteLocal(f"{sys.executable} {os.path.join(here, 'cooling_model.py')} cooling_in.json"),
    Decode(uq.decoders.SimpleCSV(target_filename="output.csv", output_columns=["te"])))
campaign = uq.Campaign(name=f"cooling_{kind}_", params=params, actions=actions, work_dir=work)
campaign.set_sampler(uq.sampling.PCESampler(vary={"kappa": cp.Uniform(0.025, 0.075), "t_env": cp.Uniform(15, 25)},
                                            polynomial_order=1))
out = {"batches": [], "started": time.time()}

def run_batch(pool, nsamples):
    action_pool = campaign.execute(nsamples=nsamples, pool=pool)
    most_active, deadline = 0, time.monotonic() + 120
    while time.monotonic() < deadline:
        progress = action_pool.progress()  # EasyVVUQ's own progress: future.running() counts as active
        most_active = max(most_active, progress["active"])
        if progress["finished"] + progress["failed"] == len(action_pool.futures):
            break
        time.sleep(0.2)
    action_pool.collate()
    out["batches"].append({"took": time.time() - out["started"], "progress": progress, "most_active": most_active,
                           "results": [f.result() for f in action_pool.futures]})

if kind == "upstream":
    from qcg.pilotjob.executor_api.qcgpj_executor import QCGPJExecutor
    executor = QCGPJExecutor(wd=work, resources="4")
    pools = [(QCGPJPool(qcgpj_executor=executor, template=EasyVVUQBasicTemplate(), template_params={"venv": venv},
                        polling_interval=0.2), 0)]
else:
    from qcg_hier.api import Executor
    executor = Executor(wd=work, resources="4")
    out["service"] = executor.qcgpj_manager.process.args
    # the one-line switch, in two batches of the same campaign: the default pool (EasyVVUQ's basic
    # template and no template_params: EasyVVUQ passes None, the venv is '', meaning none, and python3
    # comes from PATH), then its parallel template with template_params
    pools = [(QCGPJPool(qcgpj_executor=executor, polling_interval=0.2), 2),
             (QCGPJPool(qcgpj_executor=executor, template=EasyVVUQParallelTemplate(),
                        template_params={"venv": venv, "numCores": 1, "numNodes": 1}, polling_interval=0.2), 2)]
    # and the two other pairings, on a small job each (a campaign's task takes seconds to import EasyVVUQ)
    out["checks"] = {}
    for label, template, template_params in (("basic_params", EasyVVUQBasicTemplate(), {"venv": venv}),
                                              ("parallel_none", EasyVVUQParallelTemplate(), None)):
        future = executor.submit(template.template, template_params, exec="/bin/sh", name=f"check_{label}",
                                 args=["-c", "echo $QCG_PM_EXEC_API_JOB_ID $VIRTUAL_ENV"],
                                 stdout=f"{work}/check_{label}.out", stderr=f"{work}/check_{label}.err")
        out["checks"][label] = [future.result(timeout=60), open(f"{work}/check_{label}.out").read().split()]
for pool, nsamples in pools:
    run_batch(pool, nsamples)
pools[-1][0].shutdown()
results = campaign.analyse(qoi_cols=["te"])
out["runs"] = sum(1 for _ in campaign.campaign_db.runs())
for stat in ("mean", "std", "var"):
    out[stat] = [float(x) for x in results.describe("te", stat)]
out["sobols_kappa"] = [float(x) for x in results.sobols_first("te", "kappa")]
print("RESULT " + json.dumps(out, default=str))
"""


@pytest.fixture(scope="module")
def campaigns(evvuq_python, tmp_path_factory):
    """Both campaigns, run at the same time (each waits mostly on its tasks' python start-up)."""
    base = tmp_path_factory.mktemp("evvuq")
    (base / "cooling_model.py").write_text(MODEL)
    (base / "cooling.template").write_text(TEMPLATE)
    (base / "driver.py").write_text(DRIVER)
    # PATH leads to the venv: a task without a venv runs the venv's python3 (as an activated venv would)
    env = _env({"PATH": f"{VENV / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"})
    procs = {}
    for kind in ("upstream", "ours"):
        work = base / kind
        work.mkdir()
        procs[kind] = subprocess.Popen([str(evvuq_python), str(base / "driver.py"), kind, str(work), str(VENV)],
                                       cwd=str(work), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, start_new_session=True)
    results = {}
    try:
        for kind, proc in procs.items():
            try:
                stdout, stderr = proc.communicate(timeout=240)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the {kind} campaign did not finish in 240 s")
            lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
            assert proc.returncode == 0 and lines, (f"{kind} campaign: exit {proc.returncode}\n{stdout[-3000:]}\n"
                                                    f"{stderr[-5000:]}")
            results[kind] = json.loads(lines[-1][len("RESULT "):])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    return results


def test_campaign_statistics_match_upstream(campaigns):
    ours, upstream = campaigns["ours"], campaigns["upstream"]
    assert ours["runs"] == upstream["runs"] == 4
    for stat in ("mean", "std", "var", "sobols_kappa"):
        assert len(ours[stat]) == len(upstream[stat]) == 11
        assert ours[stat] == pytest.approx(upstream[stat], rel=1e-9, abs=1e-12), stat
    # and they are the model's numbers: the cup starts at 95 in every run, then cools towards 15..25
    assert ours["mean"][0] == pytest.approx(95.0) and ours["std"][0] == pytest.approx(0.0, abs=1e-9)
    assert 20.0 < ours["mean"][-1] < 95.0 and ours["std"][-1] > 1.0


def test_campaign_ran_on_our_service_with_every_template(campaigns):
    ours = campaigns["ours"]
    assert ours["service"][1:3] == ["-m", "qcg_hier"], ours["service"]
    batches = ours["batches"]
    assert [len(b["results"]) for b in batches] == [2, 2]  # basic without template_params, parallel with
    for batch in batches:
        assert batch["progress"]["failed"] == 0 and batch["progress"]["active"] == 0
        assert all(list(r.values()) == ["SUCCEED"] for r in batch["results"]), batch
        # EasyVVUQ's progress saw the task running (future.running() while the job is EXECUTING)
        assert batch["most_active"] >= 1, batch
    # the other pairings of EasyVVUQ's templates and template_params: the job's name in its
    # environment, and the venv activated where one was given
    assert ours["checks"] == {"basic_params": [{"check_basic_params": "SUCCEED"}, ["check_basic_params", str(VENV)]],
                              "parallel_none": [{"check_parallel_none": "SUCCEED"}, ["check_parallel_none"]]}
