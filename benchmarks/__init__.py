"""Benchmarks: every variant scored and timed on the same images, reported for CI."""
