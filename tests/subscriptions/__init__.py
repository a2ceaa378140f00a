"""Tests of the opt-in store and the application around it."""
