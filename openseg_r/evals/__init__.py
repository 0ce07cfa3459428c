"""Evaluation on standard benchmarks: datasets, metrics, runner (not built yet)."""
