"""Example bots; each has a test in tests/test_examples.py that runs it against FakeGraph."""
