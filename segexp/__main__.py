"""``python -m segexp <command>``: the same as the ``segexp`` command."""

import sys

from segexp.cli.main import main

sys.exit(main())
