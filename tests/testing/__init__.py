"""Tests of callflow.testing."""
