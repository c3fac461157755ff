"""``python -m segexp.compare``: the same as ``segexp compare`` (``segexp.cli.compare``)."""

import sys

from segexp.cli.compare import main

if __name__ == "__main__":
    sys.exit(main())
