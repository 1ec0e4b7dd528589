"""Benchmarks: `python -m benchmarks [NAME ...]` runs them and assembles BENCHMARKS.md."""
