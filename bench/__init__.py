"""Benchmarks: each scenario prints one JSON object."""
