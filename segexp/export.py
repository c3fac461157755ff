"""``python -m segexp.export``: the same as ``segexp export`` (``segexp.cli.export``)."""

import sys

from segexp.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
