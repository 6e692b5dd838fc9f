"""qcg-hier node-local launcher agent.

Installed as ``qcg_hier_agent``; run it with ``python -m qcg_hier_agent``.
This package must stay light to import: it depends only on the standard
library, pyzmq and orjson (never on ``qcg_hier``).
"""
