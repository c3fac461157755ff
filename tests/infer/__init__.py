"""Tests of segexp/infer/."""
