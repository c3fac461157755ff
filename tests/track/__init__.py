"""Tests of segexp/track/."""
