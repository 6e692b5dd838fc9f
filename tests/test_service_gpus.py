"""GPUs end to end: each task gets its own CUDA_VISIBLE_DEVICES, no two running tasks share a GPU,
tasks without GPUs have the variable removed, and the ids come from --gpus or the environment."""
from itertools import combinations

from conftest import iterations_of, run_service, when


def _gpu_job(name, its, gpus=1, sleep=0.4):
    return {"name": name, "iteration": {"stop": its},
            "execution": {"script": f'sleep {sleep}; echo "${{CUDA_VISIBLE_DEVICES-unset}}"',
                          "stdout": f"{name}.${{it}}.out"},
            "resources": {"numCores": 1, "nodeCrs": {"gpu": gpus}}}


def test_each_running_task_has_gpus_of_its_own(tmp_path):
    wd = tmp_path / "wd"
    requests = [{"request": "submit", "jobs": [
        _gpu_job("g", 8),
        {"name": "plain", "execution": {"script": 'echo "${CUDA_VISIBLE_DEVICES-unset}"', "stdout": "plain.out"}},
    ]}, {"request": "control", "command": "finishAfterAllTasksDone"}]
    # 8 cores but 2 GPUs per node: GPUs, not cores, limit the concurrency
    run = run_service(wd, requests, nodes="4,4", args=["--gpus", "0,1"], env={"CUDA_VISIBLE_DEVICES": "7"})
    its = iterations_of(run.report(), "g")
    assert len(its) == 8 and all(e["state"] == "SUCCEED" for e in its.values())
    seen = {}
    for it, entry in its.items():
        gpu = (wd / f"g.{it}.out").read_text().strip()
        assert gpu in ("0", "1"), gpu
        node = entry["runtime"]["allocation"].split("[")[0]
        seen[it] = (node, gpu, when(entry, "EXECUTING"), when(entry, "SUCCEED"))
    for (a, (na, ga, sa, ea)), (b, (nb, gb, sb, eb)) in combinations(seen.items(), 2):
        overlap = sa < eb and sb < ea
        assert not (overlap and na == nb and ga == gb), f"iterations {a} and {b} shared GPU {ga} on {na}"
    assert (wd / "plain.out").read_text().strip() == "unset"  # the service's own 7 is not passed on


def test_gpu_ids_come_from_the_environment_and_a_request_without_numnodes_works(tmp_path):
    wd = tmp_path / "wd"
    requests = [{"request": "submit", "jobs": [_gpu_job("two", 2, gpus=2, sleep=0.1)]},
                {"request": "control", "command": "finishAfterAllTasksDone"}]
    run = run_service(wd, requests, nodes="2", env={"CUDA_VISIBLE_DEVICES": "3,5"})
    assert all(e["state"] == "SUCCEED" for e in iterations_of(run.report(), "two").values())
    assert {(wd / f"two.{i}.out").read_text().strip() for i in range(2)} == {"3,5"}


def test_more_gpus_than_a_node_has_is_rejected_at_submit(tmp_path):
    wd = tmp_path / "wd"
    requests = [{"request": "submit", "jobs": [_gpu_job("toomany", 1, gpus=3)]}]
    run = run_service(wd, requests, nodes="2", args=["--gpus", "0,1"])
    assert "Not enough resources for job toomany" in run.log_text
