"""Tests of the synthetic-field simulator."""
