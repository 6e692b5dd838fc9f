import sys

from .agent import main

if __name__ == "__main__":
    sys.exit(main())
