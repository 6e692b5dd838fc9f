"""The agent's spec of a task: CPU binding, and the environment split into a shared and a per-task part."""
import pytest

from qcg_hier.core.job import Job, Task
from qcg_hier.core.jobdesc import parse_job
from qcg_hier.core.nodespec import NodeSpec
from qcg_hier.core.resources import Allocation, Node
from qcg_hier.launch.taskspec import TaskContext, build


def _task_on(node_spec, slots, tid=7, it=0, desc=None):
    """A minimal task on one node's slots, for building its launch spec."""
    job = Job(parse_job(desc or {"name": "b", "execution": {"exec": "/bin/true"}}), 1, ("QUEUED", 0.0))
    return Task(tid, job, it, Allocation([(Node(node_spec), list(slots), (), 0)]), None, 0, [])


@pytest.mark.parametrize("node_cores,slots,expected", [
    (2, [1], [1]),          # as many slots as CPUs: slot i is the agent's i-th CPU
    (2, [0, 1], None),      # every CPU the agent has: nothing to bind, the task inherits them
    (4, [3], None),         # more slots than CPUs (virtual node): all the agent's CPUs, no CPU 3
])
def test_binding_policy(tmp_path, node_cores, slots, expected):
    ctx = TaskContext(str(tmp_path), "x", {}, {"n1": [0, 1]}, binding=True)
    spec = build(_task_on(NodeSpec("n1", node_cores), slots), ctx)
    assert spec.get("cpus") == expected
    assert set(spec.get("cpus") or [0, 1]) <= {0, 1}  # never an id the agent does not have


@pytest.mark.parametrize("templated", [False, True])
def test_tasks_of_a_job_share_their_env_and_differ_only_in_tenv(tmp_path, templated):
    # The agent caches its merge of "env" by its content: a per-task value in it would defeat the cache.
    env = {"MINE": "${it}" if templated else "fixed"}
    desc = {"name": "sweep", "iteration": {"stop": 10}, "execution": {"exec": "/bin/true", "env": env}}
    node = NodeSpec("n1", 2)
    ctx = TaskContext(str(tmp_path), "s.", {"QCG_PM_ZMQ_ADDRESS": "tcp://h:1"}, {"n1": [0, 1]}, binding=True)
    job_task = _task_on(node, [0], desc=desc)
    first = build(job_task, ctx)
    second = build(Task(8, job_task.job, 3, job_task.alloc, None, 0, []), ctx)
    assert first["tenv"] == {"QCG_PM_STEP_ID": "s.7", "QCG_PM_ITERATION": "0"}
    assert second["tenv"] == {"QCG_PM_STEP_ID": "s.8", "QCG_PM_ITERATION": "3"}
    for name in ("QCG_PM_STEP_ID", "QCG_PM_ITERATION"):
        assert name not in first["env"] and name not in second["env"]
    assert first["env"]["QCG_PM_ZMQ_ADDRESS"] == "tcp://h:1" and first["env"]["QCG_PM_NPROCS"] == "1"
    if templated:
        assert (first["env"]["MINE"], second["env"]["MINE"]) == ("0", "3")
    else:
        assert first["env"] is second["env"]  # one template, not copied per task


def test_a_plain_job_has_no_iteration_variable(tmp_path):
    ctx = TaskContext(str(tmp_path), "p.", {}, {}, binding=False)
    spec = build(_task_on(NodeSpec("n1", 2), [0, 1], tid=31), ctx)
    assert spec["tenv"] == {"QCG_PM_STEP_ID": "p.1f"}
