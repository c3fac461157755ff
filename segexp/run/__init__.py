"""Run layer: one run's life. Ranks, run folders, W&B ids, signals, checkpoints,
reproduce/resume, config validation, distributed jobs, and the one user-error policy.

Imports ``segexp.model`` and ``segexp.data``; never ``segexp.track`` or ``segexp.infer``.
"""
