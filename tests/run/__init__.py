"""Tests of segexp/run/."""
