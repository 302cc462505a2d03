"""Smoke runs of the benchmarks, and their figures' arithmetic."""
