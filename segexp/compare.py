"""``python -m segexp.compare``: compare runs from their folders alone.

    python -m segexp.compare multirun/<date>/<time>                    # one sweep
    python -m segexp.compare outputs --metric test/mIoU --top-k 5 --out report/
    python -m segexp.compare multirun/a multirun/b --html report.html  # one web page

The reading, table and plots are ``segexp.track.compare``; this is its command line.
"""

from __future__ import annotations

from segexp.track.compare import main

if __name__ == "__main__":
    raise SystemExit(main())
