"""Tests of segexp/model/."""
