"""Tests of the values: events, decisions, actions, the parser, settings."""
