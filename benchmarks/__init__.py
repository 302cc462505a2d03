"""Benchmarks of callflow: an in-process micro-benchmark and a three-process harness.

``python -m benchmarks.harness`` (``make bench``; ``--quick`` for a short smoke run) measures
decision latency, throughput, overload, a blocked event loop, memory and cold start of a
callflow bot, a bare aiohttp webhook (the floor) and a webhook that decides through
msgraph-sdk, each against the same Graph stub and load generator.
"""
