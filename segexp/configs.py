"""Where segexp's own Hydra configs are: ``segexp/conf``, shipped inside the package.

The one place that knows it. Every command, the tests and the benchmarks compose from
``CONF_DIR`` (a checkout's top-level ``conf/`` is a link to the same folder, so editing the
configs there edits these). A user project's ``conf/`` joins it through Hydra's search path
(``segexp.project``).
"""

from __future__ import annotations

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent / "conf"
