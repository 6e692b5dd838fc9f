"""The client-side "simple" job format of `Jobs.add`, turned into the std format."""
import uuid

from .errors import JobDescriptionError

_EXEC_KEYS = ("exec", "script", "args", "env", "stdin", "stdout", "stderr", "wd", "modules", "venv", "model",
              "model_opts")
SIMPLE_KEYS = frozenset(("name", "numNodes", "numCores", "wt", "iteration", "after", "tags", "nodeCrs",
                         "attributes") + _EXEC_KEYS)


def _range(value, job, field):
    if isinstance(value, bool):
        raise JobDescriptionError(job, field, f"must be an integer or an object, got {value!r}")
    if isinstance(value, int):
        return {"exact": value}
    if isinstance(value, dict):
        return value
    raise JobDescriptionError(job, field, f"must be an integer or an object, got {type(value).__name__}")


def simple_to_std(attrs: dict) -> dict:
    """`Jobs.add(name=..., exec=..., numCores=2, iteration=10, after='a')` -> a std job description."""
    unknown = sorted(set(attrs) - SIMPLE_KEYS)
    name = attrs.get("name") or uuid.uuid4().hex
    if unknown:
        raise JobDescriptionError(name, unknown[0], f"unknown attribute (allowed: {', '.join(sorted(SIMPLE_KEYS))})")
    if attrs.get("exec") is None and attrs.get("script") is None:
        raise JobDescriptionError(name, "exec", "a job needs 'exec' or 'script'")
    job = {"name": name, "execution": {k: attrs[k] for k in _EXEC_KEYS if attrs.get(k) is not None}}
    resources = {}
    for key in ("numCores", "numNodes"):
        if attrs.get(key) is not None:
            resources[key] = _range(attrs[key], name, key)
    for key in ("wt", "tags", "nodeCrs"):
        if attrs.get(key) is not None:
            resources[key] = attrs[key]
    if resources:
        job["resources"] = resources
    iteration = attrs.get("iteration")
    if iteration is not None:
        if isinstance(iteration, bool):
            raise JobDescriptionError(name, "iteration", "must be a count, a list of values or an object")
        if isinstance(iteration, int):
            iteration = {"start": 0, "stop": iteration}
        elif isinstance(iteration, list):
            iteration = {"values": iteration}
        elif not isinstance(iteration, dict):
            raise JobDescriptionError(name, "iteration", "must be a count, a list of values or an object")
        job["iteration"] = iteration
    after = attrs.get("after")
    if after is not None:
        job["dependencies"] = {"after": [after] if isinstance(after, str) else list(after)}
    if attrs.get("attributes") is not None:
        job["attributes"] = attrs["attributes"]
    return job
