"""Benchmarks: turns and concurrency (turns), the app under load (load), the reasoning budget
(budget), catalog scale (catalog) and exact ranking (exact)."""
