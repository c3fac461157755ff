"""Inference layer: what happens after training. Inference engine (whole / slide / TTA),
post-processing (dense CRF), export, and metric reports (tables, confusion matrices).

May import run, model and data; never track.
"""
