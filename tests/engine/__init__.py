"""Tests of callflow.engine."""
