"""Benchmarks (never timed tests). See BENCHMARKS.md."""
