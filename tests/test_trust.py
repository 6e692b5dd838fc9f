"""Trust between users of one machine, with a real second Unix user (`useradd`, `setpriv`): no
secret in a task's environment, and nothing taken from a directory or file another user owns
or may write (our client, a child's --parent, the service's own service directory)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import service_command
from net_helpers import clean_env, start_net_service

from qcg_hier.api import ConnectionError, Jobs, Manager

OTHER = "qcghier-other"


@pytest.fixture(scope="module")
def other_user() -> tuple[int, int]:
    """(uid, gid) of a second user, made once (root is needed: the suite runs as root)."""
    if os.geteuid() != 0:
        pytest.fail("the trust tests need root, to make a second user with useradd")
    probe = subprocess.run(["id", "-u", OTHER], capture_output=True, text=True)
    if probe.returncode != 0:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER], check=True,
                       capture_output=True)
    uid = int(subprocess.run(["id", "-u", OTHER], capture_output=True, text=True, check=True).stdout)
    gid = int(subprocess.run(["id", "-g", OTHER], capture_output=True, text=True, check=True).stdout)
    return uid, gid


def as_other(user: tuple[int, int], argv: list, **kw) -> subprocess.CompletedProcess:
    uid, gid = user
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv],
                          capture_output=True, text=True, timeout=30, **kw)


@pytest.fixture
def public_tmp() -> Path:
    """A directory the other user can reach (pytest's own are 0700 all the way up: behind them a
    "Permission denied" would prove nothing)."""
    path = Path(tempfile.mkdtemp(prefix="qcg-hier-trust-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shared_dir(public_tmp) -> Path:
    """A directory every user may write, like a shared scratch space (sticky, as /tmp)."""
    path = public_tmp / "shared"
    path.mkdir()
    os.chmod(path, 0o1777)
    return path


def plant_service_dir(user, shared: Path, name: str, address: str, keys: dict | None = None) -> Path:
    """The other user makes a service directory with an address (and keys) of theirs."""
    sdir = shared / f".qcgpjm-service-{name}"
    script = (f"import os, json; os.makedirs({str(sdir)!r}, mode=0o700); "
              f"open({str(sdir / 'address')!r}, 'w').write({address!r})")
    if keys is not None:
        script += f"; open({str(sdir / 'client-keys.json')!r}, 'w').write({json.dumps(keys)!r})"
    r = as_other(user, [sys.executable, "-c", script])
    assert r.returncode == 0, r.stderr
    return sdir


def test_a_task_gets_a_keys_file_not_the_secret_and_another_user_cannot_read_it(other_user, public_tmp):
    wd = public_tmp / "wd"
    svc = start_net_service(wd, auth="curve", nodes="2", instance_id="trust")
    try:
        secret = json.loads((svc.sdir / "credentials.json").read_text())["client_secret"]
        m = Manager(str(svc.sdir))
        # the task writes its environment where anybody can read it, then submits a job itself
        code = ("import os; open('env.txt', 'w').write(repr(dict(os.environ))); os.chmod('env.txt', 0o644); "
                "from qcg_hier.api import Manager, Jobs; m = Manager(); "
                "m.submit(Jobs().add(name='inner', exec='/bin/true')); m.cleanup()")
        m.submit(Jobs().add(name="dump", exec=sys.executable, args=["-c", code], stderr="dump.err"))
        assert m.wait4("dump", timeout=30) == {"dump": "SUCCEED"}, (wd / "dump.err").read_text()
        assert m.wait4("inner", timeout=30) == {"inner": "SUCCEED"}  # Manager() in a task still works
        m.cleanup()
    finally:
        svc.stop()
    dumped = (wd / "env.txt").read_text()
    assert secret not in dumped, "the client secret is in the task's environment"
    env = eval(dumped)  # noqa: S307 (our own file)
    keys_file = Path(env["QCG_PM_ZMQ_KEYS_FILE"])
    assert keys_file.parent == svc.sdir and oct(keys_file.stat().st_mode & 0o777) == "0o600"
    assert oct(svc.sdir.stat().st_mode & 0o777) == "0o700"
    os.chmod(wd, 0o755)  # the other user may walk up to the service directory, and read env.txt
    assert as_other(other_user, ["cat", str(wd / "env.txt")]).returncode == 0
    r = as_other(other_user, ["cat", str(keys_file)])
    assert r.returncode != 0 and "Permission denied" in r.stderr, (r.returncode, r.stdout)


def test_our_client_refuses_a_service_directory_another_user_planted(other_user, shared_dir):
    plant_service_dir(other_user, shared_dir, "fake", "tcp://127.0.0.1:1",
                      {"server_public": "x" * 40, "client_public": "y" * 40, "client_secret": "z" * 40})
    with pytest.raises(ConnectionError, match="owned by uid"):
        Manager(str(shared_dir))


def test_a_keys_file_others_may_read_is_refused(tmp_path):
    svc = start_net_service(tmp_path / "wd", auth="curve", nodes="1", instance_id="loose")
    try:
        os.chmod(svc.sdir / "client-keys.json", 0o644)
        with pytest.raises(ConnectionError, match="readable or writable by group or others"):
            Manager(str(svc.sdir))
        os.chmod(svc.sdir / "client-keys.json", 0o600)
        os.chmod(svc.sdir, 0o777)
        with pytest.raises(ConnectionError, match="writable by group or others"):
            Manager(str(svc.sdir))
    finally:
        os.chmod(svc.sdir, 0o700)
        svc.stop()


def test_a_child_refuses_a_governor_directory_another_user_planted(other_user, shared_dir, tmp_path):
    """Another user's fake governor in a shared directory: the child must not register there (it
    would run that user's commands as us)."""
    plant_service_dir(other_user, shared_dir, "gov", "tcp://127.0.0.1:1")
    argv = service_command() + ["--parent", str(shared_dir), "--nodes", "1", "--wd", str(tmp_path / "child"),
                                "--child-timeout", "2", "--child-heartbeat", "0.5"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=clean_env())
    assert r.returncode != 0
    assert "owned by uid" in r.stderr, r.stderr


def test_a_child_does_not_join_a_governor_without_keys_unless_told(tmp_path):
    gov = start_net_service(tmp_path / "gov", auth="none", nodes=None, args=["--governor"], instance_id="opengov")
    try:
        argv = service_command() + ["--parent", str(gov.sdir), "--nodes", "1", "--wd", str(tmp_path / "child"),
                                    "--child-timeout", "2", "--child-heartbeat", "0.5"]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=clean_env())
        assert r.returncode != 0 and "has no keys" in r.stderr and "--auth none" in r.stderr, r.stderr
    finally:
        gov.stop()


def test_the_service_refuses_a_service_directory_another_user_made(other_user, shared_dir):
    plant_service_dir(other_user, shared_dir, "mine", "tcp://127.0.0.1:1")
    r = subprocess.run(service_command() + ["--net", "--wd", str(shared_dir), "--id", "mine", "--nodes", "1"],
                       capture_output=True, text=True, timeout=30, env=clean_env())
    assert r.returncode != 0
    assert "service directory" in r.stderr and "owned by uid" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
