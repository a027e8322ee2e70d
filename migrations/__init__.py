"""Alembic environment of the registry: the only way its schema changes."""
