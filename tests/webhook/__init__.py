"""Tests of callflow.webhook."""
