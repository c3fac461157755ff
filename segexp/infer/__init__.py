"""Inference layer: what happens after training. Inference engine (whole / slide / TTA),
post-processing (dense CRF), export, pictures (palette, overlay) and metric reports.

May import run, model and data; never track.
"""
