"""Test helpers for bots built on callflow: FakeGraph and pytest fixtures."""
