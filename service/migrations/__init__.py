"""Alembic migrations of the job store (env.py, versions/); `service.schema` applies them. See the README."""
