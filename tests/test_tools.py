"""The operator tools `qcg-hier status` and `qcg-hier report stats|jobs|efficiency|gantt`,
run as commands on real runs of `qcg-pm-service` in temporary working directories.

* `mixed` (module-wide): a batch run on nodes a:2,b:2 with SUCCEED iterations, a FAILED job
  (exit 2), OMITTED jobs (after the failed one), a job CANCELED while running (`sleep 30`,
  cancelled after a few hundred jobStatus requests) and one CANCELED while queued (after it).
* `busy`/`idle`: 4 x `sleep 0.5` and 1 x `sleep 0.5` on 4 cores, for the efficiency report.
* the status tests start `--net` services (LocalManager, or a batch file with `--net` in the
  background) and look at them while their jobs run and after they have ended.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import finish_background, run_service, start_service, wait_for
from qcg_hier.api import LocalManager
from qcg_hier.tools.gantt import COLOURS

ALL_STATES = ("QUEUED", "SCHEDULED", "EXECUTING", "SUCCEED", "FAILED", "CANCELED", "OMITTED")
FINAL = ("SUCCEED", "FAILED", "CANCELED", "OMITTED")
ENV_VARS = ("QCG_PM_ZMQ_ADDRESS", "QCG_PM_ZMQ_KEYS_FILE", "QCG_PM_ZMQ_SERVER_KEY", "QCG_PM_ZMQ_CLIENT_PUBLIC",
            "QCG_PM_ZMQ_CLIENT_SECRET")
SVG = "{http://www.w3.org/2000/svg}"


# ---------------------------------------------------------------- helpers
def hier_command() -> list[str]:
    """The `qcg-hier` console script of the interpreter running the tests."""
    sibling = Path(sys.executable).parent / "qcg-hier"
    if sibling.exists():
        return [str(sibling)]
    found = shutil.which("qcg-hier")
    if found:
        return [found]
    return [sys.executable, "-c", "from qcg_hier.tools.cli import main; main()"]


def tool_env(extra: dict | None = None) -> dict:
    """Our environment without the address/keys of an outer manager (the tests may run in a task)."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS and not k.startswith("SLURM_")}
    env.update(extra or {})
    return env


def hier(*args, timeout: float = 30, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(hier_command() + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env=tool_env(env), cwd=cwd, stdin=subprocess.DEVNULL)


def ok(*args, **kw) -> str:
    """Run `qcg-hier ARGS` and return its stdout; it must succeed without a traceback."""
    res = hier(*args, **kw)
    assert res.returncode == 0, f"qcg-hier {' '.join(map(str, args))} exited {res.returncode}\n" \
                                f"--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}"
    assert "Traceback" not in res.stderr, res.stderr
    return res.stdout


def fails(*args, **kw) -> subprocess.CompletedProcess:
    """Run `qcg-hier ARGS`: it must fail cleanly (non-zero exit, an `Error:` message, no traceback)."""
    res = hier(*args, **kw)
    assert res.returncode != 0, f"qcg-hier {' '.join(map(str, args))} succeeded\n{res.stdout}"
    assert "Traceback" not in res.stderr and "Error:" in res.stderr, res.stderr
    return res


def ok_json(*args, **kw):
    out = ok(*args, **kw)
    try:
        return json.loads(out)
    except ValueError:
        raise AssertionError(f"qcg-hier {' '.join(map(str, args))} printed no JSON:\n{out}") from None


def table(text: str) -> list[dict]:
    """The rows of `report jobs` as {name, state, runtime (float or None), nodes}."""
    lines = text.splitlines()
    assert lines and lines[0].split()[:2] == ["name", "state"], text
    rows = []
    for line in lines[1:]:
        parts = line.split()
        ran = parts[2] != "-"
        rows.append({"name": parts[0], "state": parts[1],
                     "runtime": float(parts[4]) if ran and parts[4] != "-" else None,
                     "nodes": parts[6].split(",") if ran and len(parts) > 6 else []})
    return rows


def names(rows) -> list[str]:
    return [r["name"] for r in rows]


def job_lines(run) -> dict:
    """jobs.report's whole-job lines (they describe the job: execution/resources)."""
    return {e["name"]: e for e in run.report_entries() if "execution" in e or "resources" in e}


def ran_lines(run) -> dict:
    """jobs.report's lines of tasks that really ran (they have an allocation)."""
    return {e["name"]: e for e in run.report_entries() if (e.get("runtime") or {}).get("allocation")}


def cores_of(entry: dict) -> set[str]:
    """`a[0:1],b[1]` -> {'a[0]', 'a[1]', 'b[1]'}"""
    out = set()
    for node, slots in re.findall(r"([^,\[\]]+)\[([^\]]*)\]", entry["runtime"]["allocation"]):
        out.update(f"{node}[{s}]" for s in slots.split(":") if s)
    return out


def nonzero(states: dict) -> dict:
    return {k: v for k, v in states.items() if v}


# ---------------------------------------------------------------- runs
PADDING = 300  # cheap requests between the submit and the cancels: the long job is running by then

MIXED_JOBS = [
    {"name": "long", "execution": {"exec": "sleep", "args": ["30"]}},
    {"name": "waiter", "dependencies": {"after": ["long"]}, "execution": {"exec": "/bin/true"}},
    {"name": "ok", "iteration": {"stop": 4}, "execution": {"exec": "sleep", "args": ["0.2"]}},
    {"name": "bad", "execution": {"script": "exit 2"}},
    {"name": "dep", "dependencies": {"after": ["bad"]}, "execution": {"exec": "/bin/true"}},
    {"name": "depit", "iteration": {"stop": 2}, "dependencies": {"after": ["bad"]},
     "execution": {"exec": "/bin/true"}},
]
# iterations: ok 4 SUCCEED, bad FAILED, dep + depit:0..1 OMITTED, long and waiter CANCELED
MIXED_ITERATIONS = {"SUCCEED": 4, "FAILED": 1, "OMITTED": 3, "CANCELED": 2}
MIXED_JOBS_STATES = {"SUCCEED": 1, "FAILED": 1, "OMITTED": 2, "CANCELED": 2}


def _mixed_requests():
    reqs = [{"request": "submit", "jobs": MIXED_JOBS}]
    reqs += [{"request": "jobStatus", "jobNames": ["long"]}] * PADDING  # 2 .. PADDING+1
    reqs += [{"request": "cancelJob", "jobNames": ["waiter"]},  # queued: it waits for long
             {"request": "cancelJob", "jobNames": ["long"]},  # running
             {"request": "control", "command": "finishAfterAllTasksDone"}]
    return reqs


@pytest.fixture(autouse=True)
def _no_outer_manager(monkeypatch):
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    wd = tmp_path_factory.mktemp("mixed") / "wd"
    run = run_service(wd, _mixed_requests(), nodes="a:2,b:2", timeout=60)
    # the premises of the tests below: long ran and was cancelled running, waiter never ran
    assert run.reply(PADDING + 1)["data"]["jobs"]["long"]["data"]["status"] == "EXECUTING", run.describe()
    lines = job_lines(run)
    assert [h["state"] for h in lines["long"]["history"]][-2:] == ["EXECUTING", "CANCELED"], lines["long"]
    assert "EXECUTING" not in [h["state"] for h in lines["waiter"]["history"]], lines["waiter"]
    return run


def _sleeps_run(tmp_path_factory, name: str, count: int):
    wd = tmp_path_factory.mktemp(name) / "wd"
    jobs = [{"name": "s", "iteration": {"stop": count}, "execution": {"exec": "sleep", "args": ["0.5"]}}]
    return run_service(wd, [{"request": "submit", "jobs": jobs},
                            {"request": "control", "command": "finishAfterAllTasksDone"}], nodes="4", timeout=60)


@pytest.fixture(scope="module")
def busy(tmp_path_factory):
    return _sleeps_run(tmp_path_factory, "busy", 4)


@pytest.fixture(scope="module")
def idle(tmp_path_factory):
    return _sleeps_run(tmp_path_factory, "idle", 1)


# ================================================================ report stats
@pytest.fixture(scope="module")
def mixed_stats(mixed):
    return ok_json("report", "stats", mixed.wd, "--json")


def test_stats_counts_match_the_report_and_final_status(mixed, mixed_stats):
    s = mixed_stats
    final = mixed.final_status()
    lines = job_lines(mixed)
    # jobs: one line per job in jobs.report
    assert s["jobs"] == len(lines) == len(MIXED_JOBS)
    from_report = {}
    for e in lines.values():
        from_report[e["state"]] = from_report.get(e["state"], 0) + 1
    assert s["job_states"] == from_report == MIXED_JOBS_STATES
    # iterations: the never-run ones (OMITTED, CANCELED while queued) too, as final_status.json counts them
    assert s["iteration_states"] == nonzero(final["States"]) == MIXED_ITERATIONS
    assert s["iterations"] == final["IterationStats"]["TotalIterations"] == sum(MIXED_ITERATIONS.values())
    assert s["tasks_run"] == len(ran_lines(mixed)) == 6  # ok:0..3, bad, long
    assert s["retries"] == 0
    assert s["cores"] == 4 and s["nodes"] == 2


def test_stats_times_are_plausible(mixed, mixed_stats):
    s = mixed_stats
    rt, qt = s["runtime"], s["queue_time"]
    assert rt["count"] == qt["count"] == 6
    assert rt["median"] >= 0.19, rt  # four of six tasks sleep 0.2 s
    assert 0.0 <= rt["min"] <= rt["median"] <= rt["max"] < 10, rt  # the cancelled sleep 30 did not run on
    assert rt["min"] <= rt["mean"] <= rt["max"] and rt["stdev"] >= 0
    assert 0.0 <= qt["min"] <= qt["median"] <= qt["max"] < 10, qt
    assert 0.0 < s["core_utilisation"] <= 1.0, s
    assert s["init_overhead"] >= 0 and s["finish_overhead"] >= 0, s
    # the service ran at least as long as a task: two waves of 0.2 s on one core (ok:3 after long)
    assert rt["max"] <= s["service_runtime"] < 30, s
    assert s["service_start"] < s["service_end"]


def test_stats_text_and_output_file(mixed, mixed_stats, tmp_path):
    text = ok("report", "stats", mixed.wd)
    assert "iterations: 10" in text, text
    for state, n in MIXED_ITERATIONS.items():
        assert f"{state} {n}" in text, text
    assert "core utilisation:" in text and "runtime (s):" in text and "queue time (s):" in text, text
    out = tmp_path / "stats.txt"
    assert ok("report", "stats", mixed.wd, "-o", out) == ""
    assert out.read_text() == text
    out_json = tmp_path / "stats.json"
    assert ok("report", "stats", mixed.wd, "--json", "-o", out_json) == ""
    assert json.loads(out_json.read_text()) == mixed_stats


def test_reports_accept_the_service_directory(mixed, mixed_stats, tmp_path):
    by_sdir = ok_json("report", "stats", mixed.sdir, "--json")
    assert by_sdir["iteration_states"] == mixed_stats["iteration_states"]
    assert by_sdir["job_states"] == mixed_stats["job_states"]
    assert names(table(ok("report", "jobs", mixed.sdir, "--state", "FAILED"))) == ["bad"]
    assert ok_json("report", "efficiency", mixed.sdir, "--json")["overall"] is not None
    ok("report", "gantt", mixed.sdir, "-o", tmp_path / "g.svg")
    assert sorted(_svg(tmp_path / "g.svg")[1]) == ["a[0]", "a[1]", "b[0]", "b[1]"]


def test_stats_of_a_text_report_fails_naming_the_format(tmp_path):
    jobs = [{"name": "one", "execution": {"exec": "/bin/true"}}]
    run = run_service(tmp_path / "wd", [{"request": "submit", "jobs": jobs},
                                        {"request": "control", "command": "finishAfterAllTasksDone"}],
                      nodes="2", args=["--report-format", "text"])
    assert run.report_path.exists()
    for command in (["stats"], ["jobs"], ["efficiency"], ["gantt", "-o", tmp_path / "g.svg"]):
        res = fails("report", *command, run.wd)
        assert "jobs.report" in res.stderr and "JSON" in res.stderr and "--report-format json" in res.stderr, \
            res.stderr
    assert not (tmp_path / "g.svg").exists()


def test_reports_of_a_missing_directory_fail_clearly(tmp_path):
    missing = tmp_path / "nowhere"
    for command in (["stats"], ["jobs"], ["efficiency"]):
        res = fails("report", *command, missing)
        assert "no .qcgpjm-service-" in res.stderr and str(missing) in res.stderr, res.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no .qcgpjm-service-" in fails("report", "stats", empty).stderr


# ================================================================ report jobs
def test_jobs_lists_every_task_and_every_job_that_never_ran(mixed):
    rows = table(ok("report", "jobs", mixed.wd))
    expected = set(ran_lines(mixed)) | {"dep", "depit", "waiter"}
    assert set(names(rows)) == expected and len(rows) == len(expected), rows
    states = {r["name"]: r["state"] for r in rows}
    assert states["bad"] == "FAILED" and states["long"] == "CANCELED" and states["waiter"] == "CANCELED"
    assert states["dep"] == states["depit"] == "OMITTED"


def test_jobs_filter_failed_only(mixed):
    text = ok("report", "jobs", mixed.wd, "--state", "FAILED")
    rows = table(text)
    assert names(rows) == ["bad"] and rows[0]["state"] == "FAILED"
    assert "exit code 2" in text, text
    assert names(table(ok("report", "jobs", mixed.wd, "--state", "failed"))) == ["bad"]  # any case


def test_jobs_never_run_are_listed_for_their_state(mixed):
    omitted = table(ok("report", "jobs", mixed.wd, "--state", "OMITTED"))
    assert sorted(names(omitted)) == ["dep", "depit"], omitted
    assert all(r["runtime"] is None and r["nodes"] == [] for r in omitted)
    canceled = table(ok("report", "jobs", mixed.wd, "--state", "CANCELED"))
    assert sorted(names(canceled)) == ["long", "waiter"], canceled
    by_name = {r["name"]: r for r in canceled}
    assert by_name["long"]["runtime"] is not None and by_name["waiter"]["runtime"] is None
    both = table(ok("report", "jobs", mixed.wd, "--state", "OMITTED", "--state", "CANCELED"))
    assert sorted(names(both)) == ["dep", "depit", "long", "waiter"]
    assert table(ok("report", "jobs", mixed.wd, "--state", "SCHEDULED")) == []


def test_jobs_filter_by_node(mixed):
    ran = ran_lines(mixed)
    for node in ("a", "b"):
        expected = sorted(n for n, e in ran.items() if any(c.startswith(f"{node}[") for c in cores_of(e)))
        assert expected, f"no task ran on node {node}: {ran}"
        rows = table(ok("report", "jobs", mixed.wd, "--node", node))
        assert sorted(names(rows)) == expected, rows
        assert all(node in r["nodes"] for r in rows)
    assert table(ok("report", "jobs", mixed.wd, "--node", "nosuchnode")) == []


def test_jobs_filter_by_name_glob(mixed):
    assert sorted(names(table(ok("report", "jobs", mixed.wd, "--name", "ok:*")))) == [f"ok:{i}" for i in range(4)]
    # a job's name selects its iterations
    assert sorted(names(table(ok("report", "jobs", mixed.wd, "--name", "ok")))) == [f"ok:{i}" for i in range(4)]
    assert names(table(ok("report", "jobs", mixed.wd, "--name", "ok:2"))) == ["ok:2"]
    assert sorted(names(table(ok("report", "jobs", mixed.wd, "--name", "dep*")))) == ["dep", "depit"]
    failed_ok = table(ok("report", "jobs", mixed.wd, "--name", "ok*", "--state", "FAILED"))
    assert failed_ok == []


def test_jobs_sort_orders(mixed):
    rows = table(ok("report", "jobs", mixed.wd, "--sort", "runtime"))
    ran = [r for r in rows if r["runtime"] is not None]
    never = [r for r in rows if r["runtime"] is None]
    assert len(ran) == 6 and sorted(names(never)) == ["dep", "depit", "waiter"]
    # ascending by the key; the jobs that never ran come last
    runtimes = [r["runtime"] for r in ran]
    assert runtimes == sorted(runtimes), runtimes
    assert rows[:len(ran)] == ran
    order = names(ran)
    assert order.index("bad") < min(order.index(f"ok:{i}") for i in range(4))  # exit 2 at once vs sleep 0.2
    by_name = table(ok("report", "jobs", mixed.wd, "--sort", "name"))
    ran_names = [r["name"] for r in by_name if r["runtime"] is not None]
    assert ran_names == sorted(ran_names)
    # by start: the order of the EXECUTING times in jobs.report
    lines = ran_lines(mixed)
    start = {n: [h["date"] for h in e["history"] if h["state"] == "EXECUTING"][-1] for n, e in lines.items()}
    by_start = [r["name"] for r in table(ok("report", "jobs", mixed.wd)) if r["name"] in start]
    assert [start[n] for n in by_start] == sorted(start.values()), by_start
    fails("report", "jobs", mixed.wd, "--sort", "nosuchkey")


def test_jobs_output_file(mixed, tmp_path):
    out = tmp_path / "jobs.txt"
    assert ok("report", "jobs", mixed.wd, "--state", "FAILED", "-o", out) == ""
    assert names(table(out.read_text())) == ["bad"]


# ================================================================ report efficiency
def test_efficiency_overall_and_per_node_between_0_and_1(mixed, mixed_stats):
    e = ok_json("report", "efficiency", mixed.wd, "--json")
    assert 0.0 < e["overall"] <= 1.0, e
    assert e["cores"] == 4 and e["wall"] > 0
    assert set(e["nodes"]) == {"a", "b"}
    for node, v in e["nodes"].items():
        assert v["cores"] == 2 and 0.0 < v["efficiency"] <= 1.0, (node, v)
    assert sum(v["busy_core_seconds"] for v in e["nodes"].values()) == pytest.approx(e["busy_core_seconds"])
    assert e["overall"] == pytest.approx(mixed_stats["core_utilisation"])
    text = ok("report", "efficiency", mixed.wd)
    assert text.startswith("overall: ") and "of 4 cores" in text
    assert re.search(r"^\s+a\s+\d+\.\d %", text, re.M) and re.search(r"^\s+b\s+\d+\.\d %", text, re.M), text


def test_efficiency_of_a_full_and_of_a_mostly_idle_run(busy, idle, tmp_path):
    full = ok_json("report", "efficiency", busy.wd, "--json")
    sparse = ok_json("report", "efficiency", idle.wd, "--json")
    assert 0.4 < full["overall"] <= 1.0, full
    assert 0.0 < sparse["overall"] < 0.5, sparse
    assert full["overall"] > sparse["overall"] * 2
    assert full["busy_core_seconds"] == pytest.approx(2.0, abs=0.3)
    assert sparse["busy_core_seconds"] == pytest.approx(0.5, abs=0.1)
    assert list(full["nodes"]) == list(sparse["nodes"]) and len(full["nodes"]) == 1
    out = tmp_path / "eff.json"
    assert ok("report", "efficiency", busy.wd, "--json", "-o", out) == ""
    assert json.loads(out.read_text())["overall"] == pytest.approx(full["overall"])


# ================================================================ report gantt
def _svg(path: Path):
    root = ET.parse(path).getroot()  # well-formed XML
    assert root.tag == f"{SVG}svg"
    labels = [t.text for t in root.iter(f"{SVG}text") if t.get("text-anchor") == "end"]
    bars = {}
    for rect in root.iter(f"{SVG}rect"):
        title = rect.find(f"{SVG}title")
        if title is not None:  # task bars have a title: "<name> <state> <seconds> s"
            name, state = title.text.split()[:2]
            bars.setdefault(name, []).append((state, rect.get("fill"), float(rect.get("width"))))
    return root, labels, bars


def test_gantt_svg_lanes_per_core_and_colours(mixed, tmp_path):
    out = tmp_path / "g.svg"
    assert f"wrote {out}" in ok("report", "gantt", mixed.wd, "-o", out)
    root, labels, bars = _svg(out)
    ran = ran_lines(mixed)
    used = set().union(*(cores_of(e) for e in ran.values()))
    assert sorted(labels) == sorted(used) and len(labels) == len(set(labels)), labels
    assert "a[0]" in labels and labels == sorted(labels, key=lambda x: (x[0], int(x[2:-1])))
    assert set(bars) == set(ran), bars  # every task that ran, nothing that did not
    for name, entry in ran.items():
        assert len(bars[name]) == len(cores_of(entry))
        for state, fill, width in bars[name]:
            assert state == entry["state"] and fill == COLOURS[state] and width > 0, (name, bars[name])
    assert bars["bad"][0][1] == COLOURS["FAILED"] != COLOURS["SUCCEED"] == bars["ok:0"][0][1]
    assert bars["long"][0][1] == COLOURS["CANCELED"]
    legend = {t.text for t in root.iter(f"{SVG}text")} & set(COLOURS)
    assert legend == {"SUCCEED", "FAILED", "CANCELED"}


def test_gantt_svg_lanes_per_node(mixed, tmp_path):
    out = tmp_path / "n.svg"
    ok("report", "gantt", mixed.wd, "-o", out, "--lanes", "node")
    _, labels, bars = _svg(out)
    assert labels == ["a", "b"]
    assert set(bars) == set(ran_lines(mixed))


def test_gantt_default_output_is_gantt_svg_in_the_current_directory(mixed, tmp_path):
    ok("report", "gantt", mixed.wd, cwd=tmp_path)
    _svg(tmp_path / "gantt.svg")


def test_gantt_png(mixed, tmp_path):
    out = tmp_path / "g.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # the [plot] extra is not installed: a clear message instead of a picture
        res = fails("report", "gantt", mixed.wd, "-o", out)
        assert "matplotlib" in res.stderr and "svg" in res.stderr.lower(), res.stderr
        assert not out.exists()
        return
    ok("report", "gantt", mixed.wd, "-o", out, timeout=60)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, len(data)
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 500 and height > 100


def test_gantt_of_a_missing_directory_fails_clearly(tmp_path):
    out = tmp_path / "g.svg"
    res = fails("report", "gantt", tmp_path / "nowhere", "-o", out)
    assert "no .qcgpjm-service-" in res.stderr and "nowhere" in res.stderr, res.stderr
    assert not out.exists()


def test_outputs_into_a_missing_directory_fail_clearly(mixed, tmp_path):
    commands = [["stats"], ["jobs"], ["efficiency"], ["gantt"]]
    for command in commands:
        res = fails("report", *command, mixed.wd, "-o", tmp_path / "no" / "such" / "out.svg")
        assert "out.svg" in res.stderr, res.stderr
    res = fails("report", "gantt", mixed.wd, "-o", tmp_path / "no" / "such" / "out.png", timeout=60)
    assert "out.png" in res.stderr or "matplotlib" in res.stderr, res.stderr


# ================================================================ status
LIVE_ITERATIONS = 6


def _status_json(target, **kw) -> dict:
    s = ok_json("status", target, "--json", **kw)
    assert set(s["states"]) == set(ALL_STATES), s
    return s


@pytest.fixture
def live_service(tmp_path):
    """A LocalManager (`--net`, CURVE) on nodes a:2,b:2 running 6 x sleep 30 (4 at a time)."""
    wd = tmp_path / "live"
    manager = LocalManager(["--wd", str(wd), "--nodes", "a:2,b:2", "--id", "live"], {"request_timeout": 15})
    try:
        manager.send_request({"request": "submit", "jobs": [
            {"name": "s", "iteration": {"stop": LIVE_ITERATIONS}, "execution": {"exec": "sleep", "args": ["30"]}}]})
        yield manager, wd
    finally:
        manager.cleanup()
        if manager.process.poll() is None:
            manager.kill_manager_process()
            manager.process.wait(15)


def test_status_of_a_running_service(live_service):
    manager, wd = live_service
    sdir = wd / ".qcgpjm-service-live"

    def executing() -> bool:
        return manager.system_status()["States"]["EXECUTING"] == 4
    assert wait_for(executing, 15), manager.system_status()

    s = _status_json(wd)
    assert s["live"] is True and s["service"] == "live"
    assert sum(s["states"].values()) == LIVE_ITERATIONS, s
    assert s["states"]["EXECUTING"] == 4 and s["states"]["QUEUED"] + s["states"]["SCHEDULED"] == 2, s
    assert s["cores"] == {"total": 4, "used": 4, "free": 0}, s
    assert [(n["name"], n["total"], n["used"]) for n in s["nodes"]] == [("a", 2, 2), ("b", 2, 2)]
    assert s["uptime"] > 0 and s["eta"] is None  # nothing finished yet: no rate, no ETA

    text = ok("status", wd)
    assert "(running)" in text and "EXECUTING 4" in text and "cores: 4 used, 0 free of 4" in text, text
    assert re.search(r"^\s+a\s+2/2\s+ready$", text, re.M) and re.search(r"^\s+b\s+2/2\s+ready$", text, re.M), text

    # the service directory, and the address (the keys from the environment, as a task has them)
    assert _status_json(sdir)["states"] == s["states"]
    address = (sdir / "address").read_text().strip()
    creds = json.loads((sdir / "credentials.json").read_text())
    env = {"QCG_PM_ZMQ_ADDRESS": address, "QCG_PM_ZMQ_SERVER_KEY": creds["server_public"],
           "QCG_PM_ZMQ_CLIENT_PUBLIC": creds["client_public"], "QCG_PM_ZMQ_CLIENT_SECRET": creds["client_secret"]}
    by_address = _status_json(address, env=env)
    assert by_address["live"] is True and by_address["states"] == s["states"]

    # cancel: the service ends; then status reads final_status.json
    manager.cancel("s")
    manager.finish()
    assert manager.process.returncode == 0
    final = _status_json(wd)
    assert final["live"] is False
    assert final["states"]["CANCELED"] == LIVE_ITERATIONS and sum(final["states"].values()) == LIVE_ITERATIONS
    assert sum(final["states"][st] for st in FINAL) == LIVE_ITERATIONS
    assert final["cores"] == {"total": 4, "used": 0, "free": 4} and final["eta"] == 0.0
    assert _status_json(sdir)["live"] is False
    assert "(finished)" in ok("status", wd)


WATCH_JOBS = [{"name": "w", "iteration": {"stop": 6}, "execution": {"exec": "sleep", "args": ["1"]}}]


def test_status_watch_follows_the_service_to_its_end(tmp_path, background):
    run = start_service(tmp_path / "wd", [{"request": "submit", "jobs": WATCH_JOBS},
                                          {"request": "control", "command": "finishAfterAllTasksDone"}],
                        nodes="a:2,b:2", args=["--net"])
    background.append(run)
    assert wait_for(lambda: (run.sdir / "address").exists() or run.proc.poll() is not None, 20)
    assert run.proc.poll() is None, finish_background(run).describe()
    t0 = time.monotonic()
    out = ok("status", run.wd, "--watch", "--interval", "0.5", timeout=40)
    took = time.monotonic() - t0
    finish_background(run)
    assert run.returncode == 0, run.describe()
    heads = re.findall(r"^service test \((running|finished)\)", out, re.M)
    assert len(heads) >= 3, out
    assert heads[-1] == "finished" and set(heads[:-1]) == {"running"}, heads
    assert "\033[" not in out  # no screen clearing when not on a terminal
    assert "SUCCEED 6" in out.split("service test (finished)")[-1]
    assert took < 8, f"--watch took {took:.1f} s to notice the end of a 2 s service"

    final = _status_json(run.wd)
    assert final["live"] is False and final["states"]["SUCCEED"] == 6
    assert sum(final["states"][st] for st in FINAL) == sum(final["states"].values()) == 6
    # --watch on a finished service prints once and returns
    assert len(re.findall(r"^service test", ok("status", run.wd, "--watch", "--interval", "0.5"), re.M)) == 1


def test_status_without_a_service_fails_clearly(tmp_path):
    res = fails("status", tmp_path)
    assert "no .qcgpjm-service-" in res.stderr and str(tmp_path) in res.stderr, res.stderr
    res = fails("status", "tcp://127.0.0.1:1", "--json", timeout=40)
    assert "127.0.0.1:1" in res.stderr, res.stderr
