"""Console entries. `qcg-pm-service` starts the local node agent before importing the service,
so that both start up side by side (see launch/early_agent.py)."""
import sys

from .launch import early_agent


def service_main() -> None:
    early_agent.start(sys.argv[1:])
    try:
        from .cli import service_main as run
        run()
    finally:
        early_agent.discard()  # the command failed before the service took the agent


def governor_main() -> None:
    from .cli import governor_main as run
    run()
