"""Data layer: datasets on disk, the mask scanner, augmentation pipelines, the DataModule.

Imports nothing from the other segexp layers; everything above may import it.
"""
