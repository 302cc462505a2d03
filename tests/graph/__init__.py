"""Tests of callflow.graph."""
