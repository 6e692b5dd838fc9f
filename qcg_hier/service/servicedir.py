"""The service directory `<wd>/.qcgpjm-service-<id>/`: logs, address, final status."""
import logging
import os
from pathlib import Path

import orjson

from ..auth import check_private
from .naming import SERVICE_DIR_PREFIX, service_dir_path

LOG_FORMAT = "%(asctime)-15s: %(message)s"


def make_service_dir(wd: Path, instance_id: str) -> Path:
    """Create it (0700: it holds the instance's credentials), or reuse it only if it is this user's
    alone: one another user made (or may write) could hold planted files. Raises UntrustedPathError."""
    path = Path(service_dir_path(wd, instance_id))
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        check_private(path)
    os.chmod(path, 0o700)
    return path


def setup_logging(service_dir: Path, level: str) -> logging.Logger:
    logger = logging.getLogger("qcg_hier")
    logger.handlers.clear()
    handler = logging.FileHandler(service_dir / "service.log", mode="a", delay=False)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger.addHandler(handler)
    logger.setLevel(getattr(logging, level.upper(), logging.INFO))
    logger.propagate = False
    return logger


def write_final_status(service_dir: Path, status: dict) -> None:
    tmp = service_dir / "final_status.json.tmp"
    tmp.write_bytes(orjson.dumps(status, option=orjson.OPT_INDENT_2))
    tmp.replace(service_dir / "final_status.json")


PARENT_FILE = "parent"  # in a child's service directory: its governor's address


def find_service_dirs(path: Path) -> list[Path]:
    """Service directories under a working directory (or the path itself), newest first; those of a
    governor's children (marked by a `parent` file) after the others: the governor speaks for them."""
    path = Path(path)
    if path.name.startswith(SERVICE_DIR_PREFIX) and path.is_dir():
        return [path]
    dirs = [p for p in path.glob(f"{SERVICE_DIR_PREFIX}*") if p.is_dir()]
    return sorted(dirs, key=lambda p: ((p / PARENT_FILE).exists(), -p.stat().st_mtime))
