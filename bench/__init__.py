"""Benchmarks: many health clients in one process against real warehouse agents."""
