"""Tests of callflow.fleet."""
