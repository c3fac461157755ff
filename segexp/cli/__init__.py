"""The command layer: every ``segexp`` command, its argv handling and its exit codes.

``segexp <command>`` (``segexp.cli.main``) dispatches to one module here per command; the
top-level train.py / evaluate.py / predict.py and ``python -m segexp.<tool>`` are shims
that call the same ``main``. Lower layers expose functions, never a ``main``.
"""
