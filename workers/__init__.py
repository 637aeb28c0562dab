"""Celery glue: load a job's inputs, run the engine, store results, report progress."""
