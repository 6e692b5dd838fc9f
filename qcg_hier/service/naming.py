"""Names of a service's files, in a module light enough for the start of `qcg-pm-service` (the
local agent is started before anything else is imported: see launch/early_agent.py)."""
import os

SERVICE_DIR_PREFIX = ".qcgpjm-service-"
AGENT_LOG = "agent-%n.log"  # in the service directory; the agent puts its node name for %n


def default_instance_id() -> str:
    return f"{os.uname().nodename}.{os.getpid()}"  # the host name, as socket.gethostname() gives it


def service_dir_path(wd: str, instance_id: str) -> str:
    return os.path.join(os.path.realpath(wd), SERVICE_DIR_PREFIX + instance_id)
