"""Evaluation on the standard benchmarks: dataset readers, streaming metrics, and the
resumable, shardable runner behind ``openseg-r eval`` (docs/design.md §6)."""
