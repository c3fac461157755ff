"""``python -m segexp.check``: the same as ``segexp check`` (``segexp.cli.check``)."""

import sys

from segexp.cli.check import main

if __name__ == "__main__":
    sys.exit(main())
