"""``python -m segexp.browse``: the same as ``segexp browse`` (``segexp.cli.browse``)."""

import sys

from segexp.cli.browse import main

if __name__ == "__main__":
    sys.exit(main())
