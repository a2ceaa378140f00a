"""Tests of the sending engine."""
