"""Tests of segexp/data/."""
