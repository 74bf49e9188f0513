"""Timing benchmarks: ``python -m sagan.benchmarks.<name>``; each prints the machine and its numbers."""
