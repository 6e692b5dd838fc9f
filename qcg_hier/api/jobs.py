"""`Jobs`: a list of job descriptions to submit, built in either format (upstream's surface)."""
import orjson

from ..core.errors import JobDescriptionError
from ..core.jobdesc import parse_job
from ..core.simple import simple_to_std
from .errors import FileError, InvalidJobDescriptionError, JobNotDefinedError


class Jobs:
    def __init__(self):
        self._jobs: dict[str, dict] = {}

    def _put(self, std: dict) -> "Jobs":
        try:
            parse_job(std)  # catch mistakes here, with the job and field named
        except JobDescriptionError as exc:
            raise InvalidJobDescriptionError(str(exc)) from None
        if std["name"] in self._jobs:
            raise InvalidJobDescriptionError(f"Job {std['name']} already in list")
        self._jobs[std["name"]] = std
        return self

    def add(self, name=None, **attrs) -> "Jobs":
        """The simple format: flat keys (exec/script, args, numCores, iteration, after, tags, ...)."""
        if name is not None:
            attrs["name"] = name
        try:
            return self._put(simple_to_std(attrs))
        except JobDescriptionError as exc:
            raise InvalidJobDescriptionError(str(exc)) from None

    def add_std(self, job: dict) -> "Jobs":
        """The std format (as in batch files)."""
        if not isinstance(job, dict):
            raise InvalidJobDescriptionError("a job description must be a dict")
        return self._put(job)

    def remove(self, name: str) -> "Jobs":
        if name not in self._jobs:
            raise JobNotDefinedError(f"Job {name} not found")
        del self._jobs[name]
        return self

    def clear(self) -> None:
        self._jobs.clear()

    def job_names(self) -> list[str]:
        return list(self._jobs)

    ordered_job_names = job_names

    def jobs(self) -> list[dict]:
        return list(self._jobs.values())

    ordered_jobs = jobs

    def load_from_file(self, path) -> "Jobs":
        try:
            with open(path, "rb") as f:
                data = orjson.loads(f.read())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise FileError(f"cannot read jobs from {path}: {exc}") from None
        if not isinstance(data, list):
            raise FileError(f"{path} must hold a JSON list of job descriptions")
        for job in data:
            self.add_std(job)
        return self

    def save_to_file(self, path) -> None:
        try:
            with open(path, "wb") as f:
                f.write(orjson.dumps(self.jobs(), option=orjson.OPT_INDENT_2))
        except OSError as exc:
            raise FileError(f"cannot write jobs to {path}: {exc}") from None

    def __len__(self) -> int:
        return len(self._jobs)
