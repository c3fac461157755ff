"""``python -m segexp.weights``: the same as ``segexp weights`` (``segexp.cli.weights``)."""

import sys

from segexp.cli.weights import main

if __name__ == "__main__":
    sys.exit(main())
