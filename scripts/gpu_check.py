#!/usr/bin/env python3
"""The GPU check, for a machine that has NVIDIA GPUs (run it there; it needs nothing but this
checkout, installed, and `nvidia-smi`).

A manager in local mode takes its GPU ids from CUDA_VISIBLE_DEVICES (as a user's batch job
would give it; when unset, every GPU `nvidia-smi -L` lists). It runs, through the batch-file
interface:
  - two jobs of 1 GPU each, each listing from inside the task what it sees (`nvidia-smi -L`
    and its CUDA_VISIBLE_DEVICES) and sleeping a little, so that they overlap if they can;
  - a job asking for one GPU more than the node has, which must be rejected at submit.
Checks: with two GPUs or more, the two jobs ran at the same time on different devices; with
one GPU, they both saw that device and ran one after the other (never sharing it); every
task saw exactly the one device it was given; the oversized job was refused ("Not enough
resources"). Prints what it saw, one line a check, and exits 0 only if every check passed.

    python3 scripts/gpu_check.py [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

SLEEP = 3.0  # seconds each GPU job holds its device, so that two can be seen overlapping


def visible_gpus() -> list[str]:
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given:
        return [g for g in given.split(",") if g]
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True).stdout
    return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


def gpu_job(name: str, gpus: int) -> dict:
    script = (f'echo "CVD=$CUDA_VISIBLE_DEVICES"; nvidia-smi -L; date +%s.%N; sleep {SLEEP}; date +%s.%N')
    return {"name": name, "execution": {"script": script, "stdout": f"{name}.out", "stderr": f"{name}.err"},
            "resources": {"numCores": 1, "nodeCrs": {"gpu": gpus}}}


def service_command() -> list[str]:
    found = shutil.which("qcg-hier-service")
    return [found] if found else [sys.executable, "-m", "qcg_hier"]


def run(wd: Path, gpus: list[str]) -> tuple[dict, str]:
    requests = [{"request": "submit", "jobs": [gpu_job("gpu_a", 1), gpu_job("gpu_b", 1)]},
                {"request": "submit", "jobs": [gpu_job("too_many", len(gpus) + 1)]},
                {"request": "control", "command": "finishAfterAllTasksDone"}]
    reqfile = wd / "requests.json"
    reqfile.write_text(json.dumps(requests))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(gpus))
    subprocess.run(service_command() + ["--file-path", str(reqfile), "--wd", str(wd), "--id", "gpucheck",
                                        "--nodes", "4"], env=env, check=False, timeout=120)
    sdir = wd / ".qcgpjm-service-gpucheck"
    report = {}
    if (sdir / "jobs.report").exists():
        for line in (sdir / "jobs.report").read_text().splitlines():
            entry = json.loads(line)
            report[entry["name"]] = entry
    return report, (sdir / "service.log").read_text() if (sdir / "service.log").exists() else ""


def seen_by(wd: Path, name: str) -> dict:
    lines = (wd / f"{name}.out").read_text().splitlines() if (wd / f"{name}.out").exists() else []
    cvd = next((line[4:] for line in lines if line.startswith("CVD=")), None)
    devices = [line for line in lines if line.startswith("GPU ")]
    stamps = [float(line) for line in lines if line.replace(".", "", 1).isdigit()]
    return {"cvd": cvd, "devices": devices, "start": stamps[0] if stamps else None,
            "end": stamps[-1] if len(stamps) > 1 else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", default=None, help="run in this directory and keep it")
    args = ap.parse_args()
    gpus = visible_gpus()
    wd = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="qcg-hier-gpu-"))
    wd.mkdir(parents=True, exist_ok=True)
    print(f"{datetime.now():%Y-%m-%d %H:%M:%S} GPUs given to the manager: {','.join(gpus)}")
    report, log = run(wd, gpus)
    a, b = seen_by(wd, "gpu_a"), seen_by(wd, "gpu_b")
    for name, seen in (("gpu_a", a), ("gpu_b", b)):
        print(f"{name}: state {report.get(name, {}).get('state')}, CUDA_VISIBLE_DEVICES={seen['cvd']}, "
              f"nvidia-smi -L: {seen['devices']}")
    overlap = None not in (a["start"], a["end"], b["start"], b["end"]) and a["start"] < b["end"] and b["start"] < a["end"]
    checks = [
        ("both GPU jobs SUCCEED", all(report.get(n, {}).get("state") == "SUCCEED" for n in ("gpu_a", "gpu_b"))),
        ("each task sees exactly one device", len(a["devices"]) == 1 and len(b["devices"]) == 1),
        ("each task's device is one of those given", {a["cvd"], b["cvd"]} <= set(gpus)),
    ]
    if len(gpus) >= 2:
        checks += [("the two jobs ran at the same time", overlap),
                   ("on different devices", a["cvd"] != b["cvd"] and a["devices"] != b["devices"])]
    else:
        checks += [("one GPU: the jobs did not share it at the same time", not overlap)]
    checks.append((f"a job of {len(gpus) + 1} GPUs is rejected at submit",
                   "Not enough resources for job too_many" in log and "too_many" not in report))
    for what, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {what}")
    if not args.keep:
        shutil.rmtree(wd, ignore_errors=True)
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    t0 = time.monotonic()
    code = main()
    print(f"gpu_check: {'passed' if code == 0 else 'FAILED'} in {time.monotonic() - t0:.1f} s")
    sys.exit(code)
