"""Benchmarks run against real gunicorn servers: ``python -m bench secured|streams|all``."""
