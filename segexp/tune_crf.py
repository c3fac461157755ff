"""``python -m segexp.tune_crf``: the same as ``segexp tune-crf`` (``segexp.cli.tune_crf``)."""

import sys

from segexp.cli.tune_crf import main

if __name__ == "__main__":
    sys.exit(main())
