"""The service core shared by the API (`app/`) and the workers (`workers/`): settings, database, ORM tables,
job store, artifact stores and the job queue. Imports neither FastAPI nor Celery."""
