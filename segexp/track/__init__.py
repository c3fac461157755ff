"""Tracking layer: how runs are seen. Loggers, callbacks, sweep jobs, run comparison.

The top layer of the package: may import infer, run, model and data.
"""
