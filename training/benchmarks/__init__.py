"""Benchmarks: a small deterministic product catalog and everyday recommendation requests."""
