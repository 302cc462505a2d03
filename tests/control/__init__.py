"""Tests of callflow.control."""
