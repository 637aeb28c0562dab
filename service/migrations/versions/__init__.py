"""One module per schema revision (`alembic revision --autogenerate -m "..."` writes them)."""
