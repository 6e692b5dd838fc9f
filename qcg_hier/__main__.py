"""`python -m qcg_hier ARGS` is `qcg-pm-service ARGS`."""
from .entry import service_main

service_main()
