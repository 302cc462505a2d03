"""Small bots that the subprocess tests run with ``python -m callflow run tests.bots.NAME:bot``."""
