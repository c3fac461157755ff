"""Model layer: networks (smp + FCN), losses, optimizers and schedules, metrics, SegModule.

Imports only ``segexp.data`` (normalisation constants) and ``segexp.errors``.
"""
