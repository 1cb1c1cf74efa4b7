"""Benchmarks: side-by-side measurements printed as ratios (nothing imports this package)."""
