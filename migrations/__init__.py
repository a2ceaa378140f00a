"""Alembic environment and versions for mailmag's schema (``mailmag migrate`` runs them)."""
