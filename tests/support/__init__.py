"""Test harness pieces: a scriptable SMTP server and database helpers."""
