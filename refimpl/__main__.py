"""``python -m refimpl ...``: the same command line as the ``refimpl`` script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
