"""Alembic migration scripts (env.py, versions/); applied by storage.migrate."""
