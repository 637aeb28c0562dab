"""Observability of the API: request ids and access logs, HTTP metrics, and the Prometheus `/metrics` route."""
