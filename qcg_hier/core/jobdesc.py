"""The job description (upstream's "std" format): strict parsing into immutable specs.

Every problem raises JobDescriptionError naming the job and the field. Unknown keys
are errors at every level, as upstream (which passes the dicts as **kwargs).
"""
import re
import sys
from dataclasses import dataclass, field

import orjson

from .errors import JobDescriptionError
from .resources import Request
from .variables import uses_launch_variables
from .walltime import parse_walltime

MODELS = ("default", "threads", "openmpi", "intelmpi", "srunmpi")
ITERATION_SCHEDULERS = ("maximum-iters", "split-into")
_BAD_NAME_CHARS = re.compile(r"[$:{}()'\"\s]")
_UNSAFE_NAME_CHARS = re.compile(r"[\x00-\x1f\x7f/]")
MAX_NAME_BYTES = 512

_JOB_KEYS = {"name", "execution", "resources", "iteration", "dependencies", "attributes"}
_EXEC_KEYS = {"exec", "args", "script", "env", "wd", "stdin", "stdout", "stderr", "modules", "venv", "model",
              "model_opts"}
_MODEL_OPTS_KEYS = {"mpirun", "mpirun_args", "srun_args"}
_RES_KEYS = {"numCores", "numNodes", "wt", "nodeCrs", "tags"}
_RANGE_KEYS = {"exact", "min", "max", "scheduler"}
_CRS_KEYS = {"gpu", "mem"}
_DEP_KEYS = {"after"}
MEMO_LIMIT = 100_000  # distinct dependency lists remembered (then forgotten at once)
SPEC_MEMO_LIMIT = 4096  # distinct executions / resources remembered: a sweep of distinct ones gains nothing


@dataclass(frozen=True, slots=True)
class Range:
    """numCores / numNodes: exact, or min..max (max None: as much as is free), maybe an iteration scheduler."""

    min: int
    max: int | None
    scheduler: str | None = None
    params: tuple = ()  # sorted (key, value) pairs of the scheduler's params
    min_given: bool = True  # False: `min` was left out (1 is assumed; split-into may then resolve to zero)

    @property
    def exact(self) -> bool:
        return self.scheduler is None and self.max == self.min

    def to_dict(self) -> dict:
        if self.exact:
            return {"exact": self.min}
        out = {"min": self.min} if self.min_given else {}
        if self.max is not None:
            out["max"] = self.max
        if self.scheduler:
            out["scheduler"] = {"name": self.scheduler, "params": dict(self.params)}
        return out


@dataclass(frozen=True, slots=True)
class ResourceSpec:
    cores: Range | None = None
    nodes: Range | None = None
    wt: float | None = None
    wt_text: str | None = None
    gpus: int = 0
    mem_mb: int = 0
    tags: tuple = ()
    _request: Request | None = field(default=None, compare=False, repr=False)  # memo of request()

    def to_dict(self) -> dict:
        out = {}
        if self.cores:
            out["numCores"] = self.cores.to_dict()
        if self.nodes:
            out["numNodes"] = self.nodes.to_dict()
        if self.wt_text:
            out["wt"] = self.wt_text
        if self.gpus or self.mem_mb:
            out["nodeCrs"] = {k: v for k, v in (("gpu", self.gpus), ("mem", self.mem_mb)) if v}
        if self.tags:
            out["tags"] = list(self.tags)
        return out

    def request(self, cores: int | None = None, nodes: int | None = None) -> Request:
        """The allocation request; `cores`/`nodes` replace the range by an iteration scheduler's size."""
        if cores is None and nodes is None:
            if self._request is None:
                object.__setattr__(self, "_request", self._make_request(None, None))
            return self._request
        return self._make_request(cores, nodes)

    def _make_request(self, cores, nodes) -> Request:
        crange = _bounds(self.cores, cores)
        nrange = _bounds(self.nodes, nodes)
        if nrange is None:
            cmin, cmax = crange or (1, 1)
            return _intern(Request(cmin, cmax, None, None, self.gpus, self.mem_mb, _tag_key(self.tags)))
        cmin, cmax = crange or (0, 0)  # numNodes alone: whole nodes
        return _intern(Request(cmin, cmax, nrange[0], nrange[1], self.gpus, self.mem_mb, _tag_key(self.tags)))


UNLIMITED = 1 << 30


def _tag_key(tags: tuple) -> tuple:
    return tuple(sorted(set(tags))) if tags else ()


def _bounds(rng: Range | None, size: int | None) -> tuple | None:
    if size is not None:
        return size, size
    if rng is None:
        return None
    return rng.min, rng.max if rng.max is not None else UNLIMITED


_REQUESTS: dict = {}


def _intern(req: Request) -> Request:
    """Jobs with the same needs share one Request (memory, and the scheduler buckets by identity)."""
    return _REQUESTS.setdefault(req, req)


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~1.5 us per job
class ExecutionSpec:
    exec: str | None = None
    args: tuple = ()
    script: str | None = None
    env: tuple = ()  # (name, value) pairs
    wd: str | None = None
    stdin: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    modules: tuple = ()
    venv: str | None = None
    model: str = "default"
    model_opts: tuple = ()  # (key, value) pairs
    _templated: bool | None = field(default=None, compare=False, repr=False)

    @property
    def templated(self) -> bool:
        """Whether launch-time variables are used, so each task needs substitution (found once, lazily)."""
        if self._templated is None:
            texts = [self.exec, self.script, self.wd, self.stdin, self.stdout, self.stderr, self.venv,
                     *self.args, *self.modules, *(v for _, v in self.env)]
            # most jobs have no '$' at all: no need to look for our variable names
            self._templated = any(t and "$" in t for t in texts) and uses_launch_variables(self.to_dict())
        return self._templated


    def to_dict(self) -> dict:
        """The form upstream writes into reports."""
        out = {"exec": self.exec, "args": list(self.args), "env": dict(self.env), "script": self.script}
        for key in ("wd", "stdin", "stdout", "stderr", "venv"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.modules:
            out["modules"] = list(self.modules)
        if self.model != "default":
            out["model"] = self.model
        out["model_opts"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.model_opts}
        return out


@dataclass(frozen=True, slots=True)
class IterationSpec:
    start: int
    stop: int
    values: tuple | None = None

    def __len__(self) -> int:
        return self.stop - self.start

    def value(self, it: int) -> str:
        return str(self.values[it - self.start]) if self.values is not None else str(it)

    def to_dict(self) -> dict:
        if self.values is not None:
            return {"values": list(self.values)}
        return {"start": self.start, "stop": self.stop}


@dataclass(slots=True)  # not frozen: cheaper to build, and nothing hashes it
class JobSpec:
    name: str
    execution: ExecutionSpec
    resources: ResourceSpec
    iteration: IterationSpec | None = None
    after: tuple = ()
    attributes: dict | None = None

    def to_dict(self) -> dict:
        out = {"name": self.name, "execution": self.execution.to_dict(), "resources": self.resources.to_dict()}
        if self.iteration is not None:
            out["iteration"] = self.iteration.to_dict()
        if self.after:
            out["dependencies"] = {"after": list(self.after)}
        if self.attributes:
            out["attributes"] = self.attributes
        return out


# ---------------------------------------------------------------- helpers
def _check_keys(obj, allowed: set, job, field: str) -> None:
    if not isinstance(obj, dict):
        raise JobDescriptionError(job, field, f"must be an object, got {type(obj).__name__}")
    if obj.keys() <= allowed:
        return
    unknown = sorted(set(obj) - allowed)
    if unknown:
        path = f"{field}.{unknown[0]}" if field else unknown[0]
        raise JobDescriptionError(job, path, f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _fresh(text: str) -> str:
    """A copy of a string: a kept reference into a parsed request would pin the request's memory
    (its allocator arenas) for the life of the job."""
    return (text + ".")[:-1]


def _keep(text: str) -> str:
    """A string a spec keeps: copied out of the request and shared with equal ones (exec, args...)."""
    return sys.intern(_fresh(text))


def _string(value, job, field, allow_empty=False) -> str:
    if not isinstance(value, str):
        raise JobDescriptionError(job, field, f"must be a string, got {type(value).__name__}")
    if not allow_empty and not value:
        raise JobDescriptionError(job, field, "must not be empty")
    return _keep(value)


def _scalar_text(value, job, field) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise JobDescriptionError(job, field, f"must be a string or a number, got {type(value).__name__}")
    return _keep(value) if isinstance(value, str) else str(value)


def _string_list(value, job, field, allow_single=False) -> tuple:
    if allow_single and isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise JobDescriptionError(job, field, f"must be a list, got {type(value).__name__}")
    return tuple(_scalar_text(v, job, f"{field}[{i}]") for i, v in enumerate(value))


def _positive_int(value, job, field, minimum=1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise JobDescriptionError(job, field, f"must be an integer, got {value!r}")
    if value < minimum:
        raise JobDescriptionError(job, field, f"must be at least {minimum}, got {value}")
    return value


# ---------------------------------------------------------------- parsing
def check_job_name(name, job=None) -> str:
    """Upstream's characters, and what names files: at most MAX_NAME_BYTES, no control character,
    no '/' (a name with '..' and '/' put a hostfile outside the working directory)."""
    if not isinstance(name, str) or not name:
        raise JobDescriptionError(job, "name", "missing or empty job name")
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        raise JobDescriptionError(f"{name[:40]}...", "name",
                                  f"a job name may have at most {MAX_NAME_BYTES} bytes, this one has {size}")
    if _BAD_NAME_CHARS.search(name):
        raise JobDescriptionError(name, "name",
                                  "job name contains invalid characters or unknown variables "
                                  "(not allowed: whitespace and $ : { } ( ) ' \")")
    if _UNSAFE_NAME_CHARS.search(name):
        raise JobDescriptionError(ascii(name)[1:-1][:80], "name",
                                  "job name contains a control character or '/' (not allowed in names)")
    return name


def _parse_env(value, job) -> tuple:
    if not isinstance(value, dict):
        raise JobDescriptionError(job, "execution.env", "must be an object of NAME: value")
    return tuple((_string(k, job, "execution.env"), _scalar_text(v, job, f"execution.env.{k}"))
                 for k, v in value.items())


def _parse_model(value, job) -> str:
    model = _string(value, job, "execution.model").lower()
    if model not in MODELS:
        raise JobDescriptionError(job, "execution.model", f"unknown model {value!r} (known: {', '.join(MODELS)})")
    return model


def _parse_model_opts(value, job) -> tuple:
    _check_keys(value, _MODEL_OPTS_KEYS, job, "execution.model_opts")
    return tuple((key, _string(v, job, "execution.model_opts.mpirun") if key == "mpirun"
                  else _string_list(v, job, f"execution.model_opts.{key}")) for key, v in value.items())


def _parse_venv(value, job) -> str | None:
    """An empty (or blank) venv means no venv, as upstream: EasyVVUQ's templates default it to ''."""
    if isinstance(value, str) and not value.strip():
        return None
    return _string(value, job, "execution.venv")


# one parser per execution field: a description is walked by the keys it has, not probed for all
_EXEC_FIELDS = {
    "exec": lambda v, job: _string(v, job, "execution.exec"),
    "script": lambda v, job: _string(v, job, "execution.script"),
    "args": lambda v, job: _string_list(v, job, "execution.args"),
    "env": _parse_env,
    "modules": lambda v, job: _string_list(v, job, "execution.modules", allow_single=True),
    "model": _parse_model,
    "model_opts": _parse_model_opts,
    **{key: (lambda k: lambda v, job: _string(v, job, f"execution.{k}"))(key)
       for key in ("wd", "stdin", "stdout", "stderr")},
    "venv": _parse_venv,
}


def _shared(memo: dict, parse, obj, job):
    """A part equal to one parsed before (its JSON text, byte for byte) gets that one's spec: a
    sweep's jobs often differ only in name, and then they share immutable specs (and the scheduler
    judges each shared spec once per batch)."""
    try:
        key = orjson.dumps(obj)
    except (orjson.JSONEncodeError, TypeError):
        key = None  # e.g. an integer beyond 64 bits from a batch file: parsed (and rejected) below
    spec = memo.get(key)
    if spec is None:
        spec = parse(obj, job)
        if key is not None:
            if len(memo) >= SPEC_MEMO_LIMIT:
                memo.clear()
            memo[key] = spec
    return spec


def parse_execution(obj, job) -> ExecutionSpec:
    return _shared(_EXECUTIONS, _parse_execution, obj, job)


def _parse_execution(obj, job) -> ExecutionSpec:
    if obj is None:
        raise JobDescriptionError(job, "execution", "missing (a job needs 'execution' with 'exec' or 'script')")
    _check_keys(obj, _EXEC_KEYS, job, "execution")
    fields = {key: _EXEC_FIELDS[key](value, job) for key, value in obj.items() if value is not None}
    if "exec" in fields and "script" in fields:
        raise JobDescriptionError(job, "execution", "'exec' and 'script' are exclusive: give one of them")
    if "exec" not in fields and "script" not in fields:
        raise JobDescriptionError(job, "execution", "needs 'exec' or 'script'")
    if "script" in fields and fields.get("args"):
        raise JobDescriptionError(job, "execution.args", "'args' goes with 'exec', not with 'script'")
    return ExecutionSpec(**fields)


def parse_range(value, job, field) -> Range:
    if isinstance(value, bool):
        raise JobDescriptionError(job, field, f"must be an integer or an object, got {value!r}")
    if isinstance(value, int):
        return Range(_positive_int(value, job, field), value)
    _check_keys(value, _RANGE_KEYS, job, field)
    if "exact" in value:
        if len(value) > 1:
            raise JobDescriptionError(job, field, "'exact' excludes 'min', 'max' and 'scheduler'")
        n = _positive_int(value["exact"], job, f"{field}.exact")
        return Range(n, n)
    if not value:
        raise JobDescriptionError(job, field, "needs 'exact' or 'min'/'max'")
    lo = _positive_int(value["min"], job, f"{field}.min") if "min" in value else 1
    hi = _positive_int(value["max"], job, f"{field}.max") if "max" in value else None
    if hi is not None and hi < lo:
        raise JobDescriptionError(job, f"{field}.max", f"max ({hi}) is smaller than min ({lo})")
    sched = value.get("scheduler")
    if sched is None:
        return Range(lo, hi)
    if hi is not None:
        raise JobDescriptionError(job, f"{field}.max", "an iteration scheduler does not take 'max'")
    if isinstance(sched, str):
        sched = {"name": sched}
    _check_keys(sched, {"name", "params"}, job, f"{field}.scheduler")
    name = _string(sched.get("name"), job, f"{field}.scheduler.name").lower()
    if name not in ITERATION_SCHEDULERS:
        raise JobDescriptionError(job, f"{field}.scheduler.name",
                                  f"unknown iteration scheduler {name!r} (known: {', '.join(ITERATION_SCHEDULERS)})")
    params = sched.get("params") or {}
    _check_keys(params, {"parts"}, job, f"{field}.scheduler.params")
    if "parts" in params:
        _positive_int(params["parts"], job, f"{field}.scheduler.params.parts")
    return Range(lo, None, name, tuple(sorted(params.items())), "min" in value)


DEFAULT_RESOURCES = ResourceSpec(cores=Range(1, 1))


def parse_resources(obj, job) -> ResourceSpec:
    return DEFAULT_RESOURCES if obj is None else _shared(_RESOURCES, _parse_resources, obj, job)


def _parse_resources(obj, job) -> ResourceSpec:
    _check_keys(obj, _RES_KEYS, job, "resources")
    cores = parse_range(obj["numCores"], job, "resources.numCores") if obj.get("numCores") is not None else None
    nodes = parse_range(obj["numNodes"], job, "resources.numNodes") if obj.get("numNodes") is not None else None
    if cores and nodes and cores.scheduler and nodes.scheduler:
        raise JobDescriptionError(job, "resources", "an iteration scheduler may be set on numCores or numNodes, not both")
    if cores is None and nodes is None:
        cores = Range(1, 1)
    fields = {"cores": cores, "nodes": nodes}
    if obj.get("wt") is not None:
        fields["wt"] = parse_walltime(obj["wt"], job)
        fields["wt_text"] = obj["wt"]
    crs = obj.get("nodeCrs")
    if crs is not None:
        _check_keys(crs, _CRS_KEYS, job, "resources.nodeCrs")
        if "gpu" in crs:
            fields["gpus"] = _positive_int(crs["gpu"], job, "resources.nodeCrs.gpu", 0)
        if "mem" in crs:
            fields["mem_mb"] = _positive_int(crs["mem"], job, "resources.nodeCrs.mem", 0)
    if obj.get("tags") is not None:
        fields["tags"] = _string_list(obj["tags"], job, "resources.tags", allow_single=True)
    return ResourceSpec(**fields)


def parse_iteration(obj, job) -> IterationSpec | None:
    if obj is None:
        return None
    _check_keys(obj, {"start", "stop", "values"}, job, "iteration")
    if "values" in obj:
        if "start" in obj or "stop" in obj:
            raise JobDescriptionError(job, "iteration", "'values' excludes 'start'/'stop'")
        values = obj["values"]
        if not isinstance(values, list) or not values:
            raise JobDescriptionError(job, "iteration.values", "must be a non-empty list")
        return IterationSpec(0, len(values), tuple(_scalar_text(v, job, f"iteration.values[{i}]")
                                                   for i, v in enumerate(values)))
    if "stop" not in obj:
        raise JobDescriptionError(job, "iteration.stop", "missing (give 'stop', optionally 'start', or 'values')")
    start = obj.get("start", 0)
    for key, value in (("start", start), ("stop", obj["stop"])):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise JobDescriptionError(job, f"iteration.{key}", f"must be a non-negative integer, got {value!r}")
    if obj["stop"] <= start:
        raise JobDescriptionError(job, "iteration.stop",
                                  f"stop ({obj['stop']}) must be greater than start ({start})")
    return IterationSpec(start, obj["stop"])


def parse_dependencies(obj, job) -> tuple:
    if obj is None:
        return ()
    _check_keys(obj, _DEP_KEYS, job, "dependencies")
    raw = obj.get("after", [])
    if type(raw) is list:
        try:
            known = _TUPLES.get(tuple(raw))  # a list seen before (20,000 jobs after one gate): checked already
        except TypeError:  # an unhashable entry: rejected below
            known = None
        if known is not None:  # (checked lists hold strings only: a list of anything else never matches)
            return known
    after = _string_list(raw, job, "dependencies.after", allow_single=True)
    for i, dep in enumerate(after):
        if not dep or dep.count(":") > 1:
            raise JobDescriptionError(job, f"dependencies.after[{i}]", f"malformed dependency {dep!r} (use 'job', 'job:N' or 'job:${{it}}')")
        target, sep, it = dep.partition(":")
        if not target:
            raise JobDescriptionError(job, f"dependencies.after[{i}]", f"malformed dependency {dep!r} (no job name)")
        if sep and not ((it.isascii() and it.isdigit()) or it == "${it}"):
            raise JobDescriptionError(job, f"dependencies.after[{i}]", f"malformed iteration in dependency {dep!r}")
    return _TUPLES.setdefault(after, after) if len(_TUPLES) < MEMO_LIMIT else after


_TUPLES: dict = {}  # checked dependency lists: equal ones share one tuple
_EXECUTIONS: dict = {}  # JSON text of a valid execution -> its spec
_RESOURCES: dict = {}  # JSON text of valid resources -> their spec


def parse_job(obj) -> JobSpec:
    """Parse one job description (after submit-time variable substitution)."""
    if not isinstance(obj, dict):
        raise JobDescriptionError(None, None, f"a job description must be an object, got {type(obj).__name__}")
    name = obj.get("name")
    if not obj.keys() <= _JOB_KEYS:
        _check_keys(obj, _JOB_KEYS, name if isinstance(name, str) and name else None, "")
    check_job_name(name, name if isinstance(name, str) and name else None)
    if "execution" not in obj:
        raise JobDescriptionError(name, "execution", "missing (a job needs 'execution' with 'exec' or 'script')")
    attributes = obj.get("attributes")
    if attributes is not None and not isinstance(attributes, dict):
        raise JobDescriptionError(name, "attributes", "must be an object")
    # positional: measurably cheaper than keywords at 10,000 jobs per request
    spec = JobSpec(_fresh(name), parse_execution(obj["execution"], name),
                   parse_resources(obj.get("resources"), name), parse_iteration(obj.get("iteration"), name),
                   parse_dependencies(obj.get("dependencies"), name), attributes or None)
    if spec.after and spec.iteration is None:
        for dep in spec.after:
            if "${it}" in dep:
                raise JobDescriptionError(name, "dependencies.after", f"{dep!r} uses ${{it}} but the job has no iterations")
    return spec
