"""The client API, with QCG-PilotJob's surface: `from qcg_hier.api import Manager, LocalManager, Jobs, JobInfo`."""
from .executor import BasicTemplate, Executor
from .errors import (ConnectionError, FileError, InternalError, InvalidJobDescriptionError, JobNotDefinedError,
                     QCGPJMAError, ServiceError, TimeoutElapsed, WrongArgumentsError)
from .jobinfo import JobInfo
from .jobs import Jobs
from .manager import LocalManager, Manager

__all__ = ["Manager", "LocalManager", "Jobs", "JobInfo", "Executor", "BasicTemplate", "QCGPJMAError", "InternalError",
           "InvalidJobDescriptionError", "JobNotDefinedError", "ConnectionError", "WrongArgumentsError",
           "FileError", "ServiceError", "TimeoutElapsed"]
