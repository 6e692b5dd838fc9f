import logging
import os
import sys

from .agent import main

if __name__ == "__main__":
    code = main()
    # everything is closed and reported: skip the interpreter's teardown (its manager waits for it)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)
